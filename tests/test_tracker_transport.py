"""The tracker's transport and consent in real Chromium: offline then online, page close,
consent gating and Global Privacy Control, each judged by what the vendor sandboxes received."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import shop_stack
from playwright.sync_api import Browser
from servers import wait_for
from test_capture import VENDORS, Sent, expect_calls, goshops_items, loaded, new_page

pytestmark = pytest.mark.browser

STORED = "JSON.parse(localStorage.getItem('shoprelay:q') || '[]').length"
VIEW = "shoprelay.track('Product Viewed', {product_id: '%s', price: 10, currency: 'USD'})"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    with shop_stack(tmp_path, vendors=VENDORS) as s:
        yield s


def test_offline_sends_are_kept_and_delivered_when_back_online(stack: Any,
                                                               browser: Browser) -> None:
    context, page = new_page(browser)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    page.evaluate("shoprelay.flush()")  # the automatic page view, while still online
    context.set_offline(True)
    page.evaluate(VIEW % "101")
    page.evaluate("shoprelay.track('Product Added', {product_id: '101', price: 10, quantity: 1})")
    page.evaluate("shoprelay.flush()")
    page.wait_for_function(f"{STORED} === 2")          # kept in localStorage, not lost
    assert stack.received("goshops") == []
    context.set_offline(False)                          # 'online': retried at once
    expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1})})
    assert goshops_items(stack, "view") == ["101"]
    page.wait_for_function(f"{STORED} === 0")
    context.close()


def stored_offline(stack: Any, browser: Browser, product: str) -> tuple[Any, Any]:
    """A page that viewed `product` while offline: the view waits in the retry queue."""
    context, page = new_page(browser)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    page.evaluate("shoprelay.flush()")
    context.set_offline(True)
    page.evaluate(VIEW % product)
    page.evaluate("shoprelay.flush()")
    page.wait_for_function(f"{STORED} === 1")
    return context, page


def test_stored_messages_survive_to_the_next_page(stack: Any, browser: Browser) -> None:
    context, page = stored_offline(stack, browser, "102")
    page.close()
    context.set_offline(False)
    page = context.new_page()                           # a later visit sends the queue
    page.goto(f"{stack.shop_url}/lab/api")
    expect_calls(stack, {"goshops": Counter({"view": 1})})
    assert goshops_items(stack, "view") == ["102"]
    context.close()


def test_a_stored_batch_stays_stored_until_the_relay_accepts_it(stack: Any,
                                                                browser: Browser) -> None:
    """Back online, a page sends its stored batch; if the page goes before the answer (closed,
    navigated away), the batch must still be there for the next page. (It used to leave the
    queue when sent: a tab closed just after coming back online lost it.)"""
    context, page = stored_offline(stack, browser, "106")
    held: list[Any] = []
    page.route("**/v1/batch", lambda route: held.append(route))  # sent, never answered
    with page.expect_request("**/v1/batch"):
        context.set_offline(False)                      # 'online': the stored batch is sent
    assert page.evaluate(STORED) == 1                   # still stored while on the way
    # The page goes before the answer. (Chromium may still let the held keepalive request go
    # once the page and its route are gone; then the next page's copy is a duplicate, which
    # the relay drops on its messageId: the vendor gets the view once either way.)
    page.close()
    page = context.new_page()
    page.goto(f"{stack.shop_url}/lab/api")              # the next page sends it
    expect_calls(stack, {"goshops": Counter({"view": 1})})
    assert goshops_items(stack, "view") == ["106"]
    page.wait_for_function(f"{STORED} === 0")           # and drops it once accepted
    context.close()


def test_events_in_the_batch_window_are_delivered_on_page_close(stack: Any,
                                                                browser: Browser) -> None:
    context, page = new_page(browser)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    # queued, not yet sent (the batch waits up to 1 s), and the tab is closed right away
    page.evaluate(VIEW % "103" + ";" +
                  "shoprelay.track('Product Added', {product_id: '103', price: 10, quantity: 1})")
    page.close(run_before_unload=True)
    expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1})})
    context.close()


def test_consent_required_sends_and_stores_nothing_until_granted(stack: Any,
                                                                 browser: Browser) -> None:
    context, page = new_page(browser)
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/api?consent=required")
    loaded(page)
    page.evaluate(VIEW % "104")
    page.evaluate("shoprelay.flush()")
    context.set_offline(True)
    page.evaluate(VIEW % "105")
    page.evaluate("shoprelay.flush()")                  # offline and no consent: not stored
    context.set_offline(False)
    assert sent.messages == []
    assert page.evaluate("localStorage.length") == 0
    assert [c for c in context.cookies() if c["name"] == "sc"] == []

    page.evaluate("shoprelay.consent({analytics: true, marketing: true})")
    expect_calls(stack, {"goshops": Counter({"view": 2})})
    assert goshops_items(stack, "view") == ["104", "105"]
    assert {m["type"] for m in sent.messages} == {"page", "track"}
    for message in sent.messages:
        assert message["context"]["consent"] == {"analytics": True, "marketing": True}
    assert [c for c in context.cookies() if c["name"] == "sc"] != []

    page.evaluate("shoprelay.consent({analytics: false, marketing: false})")  # withdrawn
    page.evaluate(VIEW % "106")                          # dropped, not held
    page.evaluate("shoprelay.flush()")
    page.evaluate("shoprelay.consent({marketing: true})")
    page.evaluate(VIEW % "107")                          # the control: consent again
    page.evaluate("shoprelay.flush()")
    expect_calls(stack, {"goshops": Counter({"view": 3})})
    assert goshops_items(stack, "view") == ["104", "105", "107"]
    assert sent.messages[-1]["context"]["consent"] == {"analytics": False, "marketing": True}
    context.close()


def test_global_privacy_control_turns_marketing_off(stack: Any, browser: Browser) -> None:
    # Chromium has no GPC switch; the page sees what a GPC browser shows it.
    context, page = new_page(browser, extra_http_headers={"Sec-GPC": "1"})
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
    sent = Sent(page)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    page.evaluate(VIEW % "108")
    page.evaluate("shoprelay.consent({marketing: true})")  # GPC wins over a marketing grant
    page.evaluate("shoprelay.flush()")
    wait_for(lambda: len(sent.messages) == 2)
    for message in sent.messages:
        assert message["context"]["consent"] == {"analytics": True, "marketing": False,
                                                 "gpc": True}
    context.close()

    # A visitor without GPC afterwards: vendors get theirs and never the GPC visitor's
    # (the demo's vendors need the marketing category).
    context, page = new_page(browser)
    page.goto(f"{stack.shop_url}/lab/api")
    loaded(page)
    page.evaluate(VIEW % "101")
    page.evaluate("shoprelay.flush()")
    expect_calls(stack, {"goshops": Counter({"view": 1})})
    assert goshops_items(stack, "view") == ["101"]
    context.close()
