"""The tracker's capture paths in real Chromium, judged by what the vendor sandboxes received.

Each test browses a lab page of the demo shop (demo_shop/lab.py) that describes itself the way
other storefronts do (API calls, the queue stub, a GA4 dataLayer, JSON-LD, data-sr-* attributes,
a single-page app, a strict CSP) and then checks Go Shops and Retail Rocket: what the tracker
captured went through the relay and came out as each vendor's own calls.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import shop_stack
from playwright.sync_api import Browser, BrowserContext, Page
from servers import wait_for

pytestmark = pytest.mark.browser

VENDORS = ["goshops", "retailrocket"]
#: An ordinary desktop Chrome: the relay holds back events from headless tools' user agents.
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/130.0.0.0 Safari/537.36")


def call_name(vendor: str, record: dict[str, Any]) -> str:
    if vendor == "goshops":
        return str(record["body"]["data"]["event"])
    if vendor == "retailrocket":
        return str(record["path"].rsplit("/", 1)[-1])
    raise AssertionError(vendor)


def calls(stack: Any, vendor: str) -> Counter[str]:
    counted: Counter[str] = Counter()
    for record in stack.received(vendor):
        name = call_name(vendor, record)
        if name == "visitorEvents":  # Retail Rocket's batch: count the calls it carries
            counted.update(next(iter(envelope)) for envelope in record["body"])
        else:
            counted[name] += 1
    return counted


def expect_calls(stack: Any, expected: dict[str, Counter[str]], *,
                 ignore: frozenset[str] = frozenset()) -> None:
    """Wait until every vendor got at least `expected`, then check it got exactly that."""
    def counted(vendor: str) -> Counter[str]:
        got = calls(stack, vendor)
        return Counter({k: v for k, v in got.items() if k not in ignore})

    for vendor, want in expected.items():
        wait_for(lambda v=vendor, w=want: counted(v) == w or counted(v).total() > w.total(),
                 timeout=30)
    time.sleep(1.0)  # anything extra would have been delivered by now
    for vendor, want in expected.items():
        assert counted(vendor) == want, vendor
        refused = [r for r in stack.received(vendor) if not r["accepted"]]
        assert refused == [], refused


def rr_calls(stack: Any) -> list[tuple[str, dict[str, Any]]]:
    """Retail Rocket's calls as (method, body), a visitorEvents batch opened into its calls."""
    out = []
    for record in stack.received("retailrocket"):
        method = record["path"].rsplit("/", 1)[-1]
        if method == "visitorEvents":
            out.extend(item for envelope in record["body"] for item in envelope.items())
        else:
            out.append((method, record["body"]))
    return out


def goshops_items(stack: Any, event: str) -> list[str]:
    return [str(r["body"]["data"]["item"]) for r in stack.received("goshops")
            if r["body"]["data"]["event"] == event]


class Sent:
    """Every message the page's tracker posted to the relay, in order."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self._messages: list[dict[str, Any]] = []
        page.on("request", self._on_request)

    def _on_request(self, request: Any) -> None:
        if "/v1/" in request.url and request.method == "POST":
            body = json.loads(request.post_data or "{}")
            self._messages.extend(body.get("batch", [body]))

    @property
    def messages(self) -> list[dict[str, Any]]:
        # Playwright hands events over only while it runs: one round trip delivers the backlog.
        if not self.page.is_closed():
            self.page.evaluate("0")
        return self._messages

    def of(self, kind: str, event: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages
                if m.get("type") == kind and (event is None or m.get("event") == event)]


def new_page(browser: Browser, **options: Any) -> tuple[BrowserContext, Page]:
    context = browser.new_context(user_agent=USER_AGENT, **options)
    return context, context.new_page()


def loaded(page: Page) -> None:
    """The tracker has replaced the queue stub (it runs async, after the page's own scripts)."""
    page.wait_for_function("window.shoprelay && !Array.isArray(window.shoprelay)")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    with shop_stack(tmp_path, vendors=VENDORS) as s:
        yield s


def test_api_calls_reach_vendors_and_bad_calls_never_throw(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.shop_url}/lab/plain")
    bare = set(page.evaluate("Object.getOwnPropertyNames(window)"))
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    # the only global the tracker adds
    assert set(page.evaluate("Object.getOwnPropertyNames(window)")) - bare == {"shoprelay"}
    page.evaluate("""() => {
        // mistakes a shop could make: all ignored, nothing thrown
        shoprelay.push(null); shoprelay.push(['no-such-method']); shoprelay.track();
        shoprelay.page(42, null); shoprelay.consent(null);
        shoprelay.identify('u-api', {email: 'api@example.com'});
        shoprelay.track('Product Viewed', {product_id: '101', price: 89, currency: 'USD'});
        shoprelay.track('Product Added', {product_id: '101', price: 89, quantity: 1,
                                          currency: 'USD'});
        shoprelay.track('Order Completed', {order_id: 'o-api', revenue: 89, currency: 'USD',
            products: [{product_id: '101', price: 89, quantity: 1}]});
        shoprelay.flush();
    }""")
    expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1, "purchase": 1}),
                         "retailrocket": Counter({"view": 1, "addToBasket": 1, "order": 1})},
                 ignore=frozenset({"setContact"}))
    assert {r["body"]["data"]["customer"] for r in stack.received("goshops")} == {"u-api"}
    assert errors == []
    context.close()


def test_stub_queue_is_replayed_in_order(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/stub")
    loaded(page)
    expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1})})
    records = stack.received("goshops")
    assert [r["body"]["data"]["event"] for r in records] == ["view", "cart"]
    assert {r["body"]["data"]["customer"] for r in records} == {"u-stub"}
    # the queue in order, and the shop's named page instead of an automatic one
    assert [(m["type"], m.get("event") or m.get("name")) for m in sent.messages] == [
        ("identify", None), ("page", "Stub"), ("track", "Product Viewed"),
        ("track", "Product Added")]
    context.close()


def test_datalayer_ecommerce_including_pushes_before_load(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/datalayer")  # view_item, view_item_list pushed pre-load
    loaded(page)
    for action in ("select", "add", "addFromRecs", "wish", "search", "login", "buy"):
        page.evaluate(f"labActions.{action}()")
    page.evaluate("shoprelay.flush()")
    expect_calls(stack, {
        "goshops": Counter({"view": 1, "cart": 2, "like": 1, "purchase": 1}),
        "retailrocket": Counter({"view": 1, "recomBlockViewed": 1, "recomTap": 1,
                                 "addToBasket": 1, "recomAddToBasket": 1, "search": 1,
                                 "order": 1}),
    }, ignore=frozenset({"setContact"}))
    # JSON-LD describes the same product: the dataLayer already said it, so one view only
    assert len(sent.of("track", "Product Viewed")) == 1
    [viewed] = sent.of("track", "Product Viewed")
    assert (viewed["properties"]["product_id"], viewed["properties"]["category"]) == (
        "101", "Apparel > Shoes")
    [listed] = sent.of("track", "Product List Viewed")
    assert listed["properties"]["list_id"] == "home-recs"
    assert [p["product_id"] for p in listed["properties"]["products"]] == ["103", "105", "107",
                                                                          "102"]
    [order] = sent.of("track", "Order Completed")
    assert (order["properties"]["order_id"], order["properties"]["revenue"]) == ("T-DL-1", 178)
    assert order["properties"]["products"][0]["quantity"] == 2
    [searched] = sent.of("track", "Products Searched")
    assert searched["properties"]["query"] == "boot"
    [login] = sent.of("identify")
    assert login["traits"] == {"method": "email", "user_id": "u-dl"}
    [tap] = [body for method, body in rr_calls(stack) if method == "recomTap"]
    assert (tap["productId"], tap["recomBlockId"]) == (103, "home-recs")
    purchases = [r["body"]["data"] for r in stack.received("goshops")
                 if r["body"]["data"]["event"] == "purchase"]
    assert {p["customer"] for p in purchases} == {"u-dl"}  # login mapped to identify
    context.close()


def test_a_source_switched_off_on_the_tag(stack: Any, browser: Browser) -> None:
    # data-auto="jsonld": the dataLayer is left alone; the JSON-LD fallback reports the view.
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/datalayer?auto=jsonld")
    loaded(page)
    page.evaluate("labActions.add()")
    expect_calls(stack, {"goshops": Counter({"view": 1}),
                         "retailrocket": Counter({"view": 1})})
    assert [m["event"] for m in sent.of("track")] == ["Product Viewed"]
    context.close()


def test_jsonld_product_and_product_group(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/jsonld")
    loaded(page)
    page.goto(f"{stack.shop_url}/lab/jsonld-group")
    loaded(page)
    page.evaluate("shoprelay.flush()")
    expect_calls(stack, {"goshops": Counter({"view": 2}),
                         "retailrocket": Counter({"view": 1, "groupView": 1})})
    assert goshops_items(stack, "view") == ["103", "105"]
    [group] = [body for method, body in rr_calls(stack) if method == "groupView"]
    assert (group["groupId"], group["productIds"]) == (105, [1051, 1052, 1053])
    # (the first page's batch left as a beacon on navigation, which Playwright does not report)
    assert sent.of("track", "Product Viewed")[-1]["properties"]["variant_ids"] == [
        "1051", "1052", "1053"]
    page.goto(f"{stack.shop_url}/lab/jsonld")
    loaded(page)
    page.evaluate("shoprelay.flush()")
    wait_for(lambda: sent.of("track", "Product Viewed")[-1]["properties"]["product_id"] == "103")
    assert sent.of("track", "Product Viewed")[-1]["properties"] == {
        "product_id": "103", "sku": "SH-BOT-03", "name": "Leather Boot", "price": 139.99,
        "currency": "USD", "category": "Apparel > Shoes", "brand": "Demo", "in_stock": True}
    context.close()


def test_data_attributes(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/attrs")
    loaded(page)
    page.get_by_test_id("add").click()
    page.get_by_test_id("wish").click()
    page.get_by_test_id("rec-103").click()
    page.evaluate("shoprelay.flush()")
    expect_calls(stack, {
        "goshops": Counter({"view": 1, "cart": 1, "like": 1}),
        "retailrocket": Counter({"view": 1, "search": 1, "recomBlockViewed": 1, "recomTap": 1,
                                 "addToBasket": 1}),
    })
    assert goshops_items(stack, "cart") == ["102"]
    [added] = sent.of("track", "Product Added")
    assert added["properties"] == {"product_id": "102", "sku": "SH-CNV-02",
                                   "name": "Canvas Sneaker", "price": 49.5, "currency": "USD",
                                   "category": "Apparel > Shoes", "quantity": 1}
    [clicked] = sent.of("track", "Product Clicked")
    assert (clicked["properties"]["product_id"], clicked["properties"]["list_id"],
            clicked["properties"]["recommendation_vendor"]) == ("103", "home-recs",
                                                                 "retailrocket")
    context.close()


def test_spa_route_changes_are_page_views(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/spa")
    loaded(page)
    page.evaluate("labGo('/lab/spa/product/104', '104')")
    page.evaluate("labGo('/lab/spa/product/105', '105')")
    page.evaluate("history.replaceState({}, '', location.href)")  # same URL: no page view
    page.go_back()                                                # popstate
    page.wait_for_function("location.pathname === '/lab/spa/product/104'")
    wait_for(lambda: len(sent.of("page")) == 4 or page.evaluate("shoprelay.flush()"))
    expect_calls(stack, {"goshops": Counter({"view": 2})})
    assert goshops_items(stack, "view") == ["104", "105"]
    assert [m["context"]["page"]["path"] for m in sent.of("page")] == [
        "/lab/spa", "/lab/spa/product/104", "/lab/spa/product/105", "/lab/spa/product/104"]
    context.close()


def test_strict_csp(stack: Any, browser: Browser) -> None:
    context, page = new_page(browser)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    response = page.goto(f"{stack.shop_url}/lab/csp")
    assert response is not None
    assert response.headers["content-security-policy"] == "script-src 'self'"
    loaded(page)
    page.evaluate("shoprelay.flush()")  # calling into the tracker from the page's context
    expect_calls(stack, {"goshops": Counter({"view": 1})})
    assert goshops_items(stack, "view") == ["106"]
    assert problems == []
    context.close()


def test_reset_logs_out_at_the_relay_without_changing_the_visitor(stack: Any,
                                                                   browser: Browser) -> None:
    context, page = new_page(browser)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    page.evaluate("""() => {
        shoprelay.identify('u-reset', {email: 'reset@example.com'});
        shoprelay.track('Product Viewed', {product_id: '101', price: 89, currency: 'USD'});
        shoprelay.reset();
        shoprelay.track('Product Viewed', {product_id: '102', price: 49.5, currency: 'USD'});
        shoprelay.flush();
    }""")
    expect_calls(stack, {"goshops": Counter({"view": 2})})
    customers = {r["body"]["data"]["item"]: r["body"]["data"]["customer"]
                 for r in stack.received("goshops")}
    visitor = {body["sessionExternalId"] for _, body in rr_calls(stack)}
    assert len(visitor) == 1                   # one visitor before and after logout
    assert customers == {"101": "u-reset", "102": visitor.pop()}
    context.close()
