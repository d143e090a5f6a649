"""The live debugger and the vendor health page in real Chromium, beside a shopper session on
the demo shop: each incoming message gets one cell per vendor with its outcome; the filters,
the trace on click, the demo's request → message links, and the health table work.

Set SHOPRELAY_SCREENSHOTS=DIR to keep the two pages as PNGs (docs/images is made that way).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import Page, sync_playwright
from servers import free_port, serve, wait_for

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.demo import DEMO_WRITE_KEY, demo_table
from shoprelay.operate import admin
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.settings import parse

pytestmark = pytest.mark.browser

TOKEN = "debugger-admin-token-0123456789"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/126.0 Safari/537.36")
VENDORS = ["retailrocket", "goshops", "advisable", "alana", "yespo"]


@dataclass
class Stack:
    shop_url: str
    sandbox_url: str


@contextmanager
def demo_stack(tmp_path: Path) -> Iterator[Stack]:
    from demo_shop.app import create_app as create_shop_app

    with ExitStack() as stack:
        sandbox_url = stack.enter_context(serve(create_sandbox_app(), lifespan="off"))
        port = free_port()
        shop_url = f"http://127.0.0.1:{port}"
        table = demo_table(shop_origin=shop_url, sandbox_url=sandbox_url,
                           spool_file=str(tmp_path / "spool.db"), vendors=VENDORS,
                           secret="debugger-test-secret-0123456789")
        table["relay"]["admin_token"] = TOKEN
        relay = create_app(parse(table, env={}), delivery=DeliveryOptions(idle_poll=0.2))
        shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url)
        stack.enter_context(serve(shop, port=port))
        yield Stack(shop_url, sandbox_url)


def shop(page: Page, url: str) -> None:
    """A short visit: home (with its recommendation block), a product, the cart, a search."""
    page.goto(f"{url}/")
    page.get_by_test_id("product-link-103").click()
    page.wait_for_url("**/product/103")
    page.get_by_test_id("add-to-cart").click()
    page.wait_for_function("document.getElementById('cart-count').textContent === '1'")
    page.goto(f"{url}/search?q=shirt")
    page.wait_for_timeout(1500)  # the tracker's batch window


def cells(debugger: Page) -> list[dict[str, Any]]:
    return list(debugger.eval_on_selector_all("#rows tr.msg", """rows => rows.map(r => ({
        id: r.dataset.messageId, event: r.dataset.event, visible: r.style.display !== 'none',
        cells: Object.fromEntries([...r.querySelectorAll('td[data-vendor]')]
            .filter(td => td.textContent !== '')
            .map(td => [td.dataset.vendor, td.dataset.outcome || 'pending']))}))"""))


def screenshot(page: Page, name: str) -> None:
    where = os.environ.get("SHOPRELAY_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / name), full_page=False)


def test_debugger_and_health_page_beside_a_shopper_session(tmp_path: Path) -> None:
    with demo_stack(tmp_path) as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=[*CHROMIUM_ARGS, f"--user-agent={UA}"],
                                             headless=True)
        try:
            context = browser.new_context(user_agent=UA, viewport={"width": 1500,
                                                                   "height": 900})
            debugger = context.new_page()
            # As a developer does: open the link `shoprelay debug-link` prints (traded for the
            # debugger's cookie, which the health page under /debug takes too).
            debugger.goto(admin.make_link(TOKEN, stack.shop_url))
            debugger.wait_for_function(
                "document.getElementById('status').textContent === 'live'")
            shopper = context.new_page()
            shop(shopper, stack.shop_url)

            # Every message of the session shows up with a final outcome at every vendor.
            def settled() -> list[dict[str, Any]] | None:
                found = cells(debugger)
                names = {row["event"] for row in found}
                if not {"page", "Product Clicked", "Product Viewed", "Product Added",
                        "Products Searched"} <= names:
                    return None
                if any(o in ("pending", "queued") for row in found
                       for o in row["cells"].values()):
                    return None
                return found

            found = wait_for(settled, timeout=40, interval=0.3)
            assert all(set(row["cells"]) == set(VENDORS) for row in found)
            added = next(row for row in found if row["event"] == "Product Added")
            assert added["cells"] == {v: "sent" for v in VENDORS}
            # The home page view (the oldest page row: newest are on top) goes to the vendors
            # that map one, and says why not to the others.
            page_view = [row for row in found if row["event"] == "page"][-1]
            assert page_view["cells"]["alana"] == "sent"
            assert page_view["cells"]["goshops"] == "not sent"
            reason = debugger.locator(
                f"tr[data-message-id='{page_view['id']}'] td[data-vendor='goshops'] small")
            assert reason.text_content() == "no mapping: goshops has no mapping for 'page'"

            # Filters: by event, by vendor (its column only), by visitor.
            debugger.get_by_test_id("filter-event").fill("Product Added")
            visible = [row for row in cells(debugger) if row["visible"]]
            assert {row["event"] for row in visible} == {"Product Added"}
            debugger.get_by_test_id("filter-event").fill("")
            debugger.get_by_test_id("filter-vendor").select_option("goshops")
            shown = debugger.eval_on_selector_all(
                "#head th[data-vendor]", "ths => ths.filter(t => t.style.display !== 'none')"
                ".map(t => t.dataset.vendor)")
            assert shown == ["goshops"]
            assert all(row["cells"]["goshops"] != "not sent"
                       for row in cells(debugger) if row["visible"])
            debugger.get_by_test_id("filter-vendor").select_option("")
            debugger.get_by_test_id("filter-visitor").fill("nobody-has-this-id")
            assert not any(row["visible"] for row in cells(debugger))
            debugger.get_by_test_id("filter-visitor").fill("")

            # Clicking a message shows its trace: request and answer per vendor.
            debugger.locator(f"tr[data-message-id='{added['id']}']").click()
            trace = debugger.get_by_test_id("trace")
            trace.locator("div[data-vendor='goshops'] pre").first.wait_for()
            assert "goshops: sent 200" in trace.text_content()
            assert "request: POST http://127.0.0.1" in trace.text_content()
            screenshot(debugger, "debugger.png")

            # The demo's vendors page links a request to the message behind it.
            shopper.goto(f"{stack.shop_url}/demo/vendors")
            link = shopper.locator("[data-testid='vendor-goshops'] [data-testid='message-link']")
            link.first.wait_for()
            link.first.click()
            shopper.wait_for_url("**/demo/trace/**")
            assert shopper.get_by_test_id("trace-goshops").locator("td").nth(1) \
                .text_content() == "sent"

            # The health page: every vendor delivering, with its last hour.
            health = context.new_page()
            health.set_viewport_size({"width": 1000, "height": 260})
            health.goto(f"{stack.shop_url}/debug/health")
            rows = health.eval_on_selector_all("#health tbody tr", """rows => rows.map(r => ({
                vendor: r.dataset.vendor, state: r.querySelector('.state').textContent,
                delivered: Number(r.children[6].textContent)}))""")
            assert {r["vendor"] for r in rows} == set(VENDORS)
            assert all(r["state"] == "delivering" and r["delivered"] > 0 for r in rows), rows
            screenshot(health, "health.png")
        finally:
            browser.close()


def test_health_page_shows_a_vendor_backing_off(tmp_path: Path) -> None:
    with demo_stack(tmp_path) as stack, sync_playwright() as playwright:
        httpx.post(f"{stack.sandbox_url}/_sandbox/goshops/faults",
                   json={"kind": "status", "status": 503, "count": 50}).raise_for_status()
        answer = httpx.post(f"{stack.shop_url}/v1/batch", headers={"User-Agent": UA},
                            json={"writeKey": DEMO_WRITE_KEY, "batch": [
                                {"type": "track", "event": "Product Viewed", "messageId": "m1",
                                 "anonymousId": "a", "properties": {"product_id": "1"}}]})
        assert answer.status_code == 200
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=[*CHROMIUM_ARGS, f"--user-agent={UA}"],
                                             headless=True)
        try:
            page = browser.new_context(user_agent=UA).new_page()
            page.goto(admin.make_link(TOKEN, stack.shop_url))

            def goshops_row() -> Any:
                page.goto(f"{stack.shop_url}/debug/health")
                row = page.locator("#health tr[data-vendor='goshops']")
                state = row.locator(".state").text_content() or ""
                # Between a retry coming due and its answer the row says "the last answer was
                # a failure"; the page is right either way, so wait for the waiting moment.
                return "backing off" in state and "waiting for a retry" in state and row

            row = wait_for(goshops_row, timeout=30, interval=0.5)
            assert "HTTP 503" in row.locator(".err").text_content()
            assert row.locator("td").nth(3).text_content() == "1"  # queued
        finally:
            browser.close()
