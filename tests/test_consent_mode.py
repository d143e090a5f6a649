"""Google Consent Mode v2 drives the tracker's consent, in real Chromium against a real relay.

The page's banner only speaks Consent Mode (gtag('consent', 'default' | 'update', {...}) onto
window.dataLayer); the tag has data-consent="required". What reaches the relay, and whether the
relay's cookie is set, is what a shop would check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import shop_stack
from playwright.sync_api import Browser, Page, Route
from servers import wait_for

from shoprelay.demo import DEMO_WRITE_KEY

pytestmark = pytest.mark.browser

USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/130.0.0.0 Safari/537.36")
DENIED = ("{analytics_storage: 'denied', ad_storage: 'denied', ad_user_data: 'denied',"
          " ad_personalization: 'denied'}")
GRANTED = DENIED.replace("denied", "granted")


def banner_page(default: str, before_tag: str = "") -> str:
    """A shop page whose consent banner only speaks Consent Mode."""
    return f"""<!doctype html><html><head><title>Consent Mode</title>
<script>
window.dataLayer = window.dataLayer || [];
function gtag() {{ dataLayer.push(arguments); }}
gtag('consent', 'default', {default});
{before_tag}
</script>
<script async src="/s.js" data-key="{DEMO_WRITE_KEY}" data-consent="required"></script>
</head><body>
<button id="accept" onclick="gtag('consent', 'update', {GRANTED})">Accept all</button>
<button id="analytics-only" onclick="gtag('consent', 'update', {{ad_user_data: 'denied'}})">
Analytics only</button>
<button id="buy" onclick="shoprelay.track('Clicked Buy')">Buy</button>
</body></html>"""


class Relay:
    """The page's posts to the relay's /v1/batch, message by message."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages: list[dict[str, Any]] = []
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        if request.url.endswith("/v1/batch") and request.method == "POST":
            self.messages.extend(json.loads(request.post_data or "{}").get("batch", []))

    def got(self) -> list[dict[str, Any]]:
        self.page.evaluate("0")  # one round trip delivers Playwright's backlog of events
        return self.messages

    def event(self, name: str) -> dict[str, Any]:
        wait_for(lambda: any(m.get("event") == name for m in self.got()), timeout=15)
        return next(m for m in self.got() if m.get("event") == name)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    with shop_stack(tmp_path) as s:
        yield s


def open_page(browser: Browser, stack: Any, html: str) -> tuple[Any, Page, Relay]:
    context = browser.new_context(user_agent=USER_AGENT)
    page = context.new_page()
    relay = Relay(page)

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=html)

    page.route(f"{stack.shop_url}/consent-mode", fulfil)
    page.goto(f"{stack.shop_url}/consent-mode")
    page.wait_for_function("window.shoprelay && !Array.isArray(window.shoprelay)")
    return context, page, relay


def relay_cookie(context: Any) -> list[str]:
    return [c["name"] for c in context.cookies() if c["name"] == "sc"]


def test_nothing_reaches_the_relay_until_the_banner_grants(stack: Any, browser: Browser) -> None:
    context, page, relay = open_page(browser, stack, banner_page(DENIED))
    page.click("#buy")
    time.sleep(2.5)  # past the 1 s batch timer: anything allowed would have gone
    assert relay.got() == []
    assert relay_cookie(context) == []
    assert page.evaluate("localStorage.length") == 0

    page.click("#accept")
    held = relay.event("Clicked Buy")
    assert held["context"]["consent"] == {"analytics": True, "marketing": True}
    assert any(m["type"] == "page" for m in relay.got())
    wait_for(lambda: relay_cookie(context) == ["sc"], timeout=10)
    context.close()


def test_a_later_ad_denial_stops_marketing_but_not_analytics(stack: Any,
                                                             browser: Browser) -> None:
    context, page, relay = open_page(browser, stack, banner_page(DENIED))
    page.click("#accept")
    wait_for(lambda: any(m["type"] == "page" for m in relay.got()), timeout=15)
    page.click("#analytics-only")
    page.click("#buy")
    after = relay.event("Clicked Buy")
    # one ad_* key denied is enough: marketing off; analytics_storage still granted
    assert after["context"]["consent"] == {"analytics": True, "marketing": False}
    context.close()


def test_a_default_already_granted_sends_from_the_start(stack: Any, browser: Browser) -> None:
    context, page, relay = open_page(browser, stack, banner_page(GRANTED))
    wait_for(lambda: any(m["type"] == "page" for m in relay.got()), timeout=15)
    page_view = next(m for m in relay.got() if m["type"] == "page")
    assert page_view["context"]["consent"] == {"analytics": True, "marketing": True}
    context.close()


def test_a_region_scoped_default_cannot_grant(stack: Any, browser: Browser) -> None:
    # the tracker cannot know the visitor's region: a grant for 'US' only is not a grant
    region = GRANTED.replace("}", ", region: ['US']}")
    context, page, relay = open_page(browser, stack, banner_page(region))
    page.click("#buy")
    time.sleep(2.5)
    assert relay.got() == []
    context.close()


def test_an_update_pushed_before_the_tracker_loaded_counts(stack: Any, browser: Browser) -> None:
    # analytics granted before the tag; the ad keys stay denied from the default
    early = "gtag('consent', 'update', {analytics_storage: 'granted'});"
    context, page, relay = open_page(browser, stack, banner_page(DENIED, before_tag=early))
    page.click("#buy")
    sent = relay.event("Clicked Buy")
    assert sent["context"]["consent"] == {"analytics": True, "marketing": False}
    # GTM and gtag still see every push: ours calls theirs and returns its result
    assert page.evaluate("dataLayer.push({event: 'x'})") == page.evaluate("dataLayer.length")
    context.close()
