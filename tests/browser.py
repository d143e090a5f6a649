"""A real Chromium (Debian's) driven by Playwright, and the demo shop stack it browses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Playwright, sync_playwright
from servers import free_port, serve

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.demo import DEMO_WRITE_KEY, demo_settings
from shoprelay.sandbox import create_app as create_sandbox_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@contextmanager
def chromium() -> Iterator[tuple[Playwright, Browser]]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield playwright, browser
        finally:
            browser.close()


@dataclass
class ShopStack:
    shop_url: str
    sandbox_url: str
    relay_app: Any

    def received(self, vendor: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/{vendor}/requests").json()


@contextmanager
def shop_stack(tmp_path: Path, vendors: list[str] | None = None,
               identify_secret: str = "") -> Iterator[ShopStack]:
    from demo_shop.app import create_app as create_shop_app

    with ExitStack() as stack:
        sandbox_url = stack.enter_context(serve(create_sandbox_app(), lifespan="off"))
        port = free_port()
        shop_url = f"http://127.0.0.1:{port}"
        settings = demo_settings(shop_origin=shop_url, sandbox_url=sandbox_url,
                                 spool_file=str(tmp_path / "spool.db"), vendors=vendors,
                                 secret="browser-test-secret-0123456789",
                                 # Headless Chromium says so in its user agent: allow it here.
                                 forward_bots=True, identify_secret=identify_secret)
        relay = create_app(settings, delivery=DeliveryOptions(idle_poll=0.2))
        shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url,
                               identify_secret=identify_secret, shopify_webhook_secret=(
                                   settings.sites["demo"].shopify_webhook_secret))
        stack.enter_context(serve(shop, port=port))
        yield ShopStack(shop_url, sandbox_url, relay)
