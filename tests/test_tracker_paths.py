"""Paths a site chooses: the tracker and the ingest routes under `relay.path_prefix` with the
tracker named `relay.tracker_file`, out of content blockers' well-known paths; the tracker posts
to the directory it was served from, and the default paths stay."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from servers import free_port, serve
from test_capture import USER_AGENT, expect_calls

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.demo import DEMO_WRITE_KEY, demo_table
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.settings import SettingsError, parse


class Stack:
    def __init__(self, shop_url: str, sandbox_url: str) -> None:
        self.shop_url = shop_url
        self.sandbox_url = sandbox_url

    def received(self, vendor: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/{vendor}/requests").json()


def table_with(tmp_path: Path, shop_url: str, sandbox_url: str, **relay: Any) -> dict[str, Any]:
    table = demo_table(shop_origin=shop_url, sandbox_url=sandbox_url,
                       spool_file=str(tmp_path / "spool.db"), vendors=["goshops"],
                       secret="paths-test-secret-0123456789", forward_bots=True)
    table["relay"].update(relay)
    return table


@contextmanager
def chosen_paths_stack(tmp_path: Path) -> Iterator[Stack]:
    from demo_shop.app import create_app as create_shop_app

    with ExitStack() as stack:
        sandbox_url = stack.enter_context(serve(create_sandbox_app(), lifespan="off"))
        port = free_port()
        shop_url = f"http://127.0.0.1:{port}"
        settings = parse(table_with(tmp_path, shop_url, sandbox_url, path_prefix="/px/k3",
                                    tracker_file="app.js"), env={})
        relay = create_app(settings, delivery=DeliveryOptions(idle_poll=0.2))
        shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url)
        stack.enter_context(serve(shop, port=port))
        yield Stack(shop_url, sandbox_url)


@pytest.mark.browser
def test_tracker_served_from_a_chosen_path_posts_beside_it(tmp_path: Path, browser: Any
                                                           ) -> None:
    with chosen_paths_stack(tmp_path) as stack:
        context = browser.new_context(user_agent=USER_AGENT)
        page = context.new_page()
        requests: list[tuple[str, str]] = []
        page.on("request", lambda r: requests.append((r.method, urlsplit(r.url).path)))
        page.goto(f"{stack.shop_url}/lab/plain")  # no tracker tag on this page
        page.evaluate("""(writeKey) => {
            window.shoprelay = window.shoprelay || [];
            shoprelay.push(['track', 'Product Viewed', {product_id: '101', price: 89,
                                                        currency: 'USD'}]);
            const tag = document.createElement('script');
            tag.async = true;
            tag.src = '/px/k3/app.js';
            tag.dataset.key = writeKey;
            document.head.appendChild(tag);
        }""", DEMO_WRITE_KEY)
        expect_calls(stack, {"goshops": Counter({"view": 1})})
        page.evaluate("1")  # hands the page's buffered request events over
        assert ("GET", "/px/k3/app.js") in requests
        posted = {path for method, path in requests if method == "POST"}
        assert posted == {"/px/k3/v1/batch"}
        context.close()


def test_chosen_and_default_paths_are_both_served(tmp_path: Path) -> None:
    with chosen_paths_stack(tmp_path) as stack:
        chosen = httpx.get(f"{stack.shop_url}/px/k3/app.js")
        default = httpx.get(f"{stack.shop_url}/s.js")
        assert chosen.status_code == default.status_code == 200
        assert chosen.content == default.content
        assert chosen.headers["content-type"].startswith("application/javascript")
        for path in ("/px/k3/v1/track", "/v1/track", "/px/k3/v1/t"):
            answer = httpx.post(f"{stack.shop_url}{path}?writeKey={DEMO_WRITE_KEY}",
                                json={"event": "Product Viewed",
                                      "properties": {"product_id": "101", "price": 89}})
            assert answer.status_code == 200, path


def test_path_settings_are_checked(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1"
    with pytest.raises(SettingsError) as refused:
        parse(table_with(tmp_path, url, url, path_prefix="px/", tracker_file="a/b.js"), env={})
    text = str(refused.value)
    assert "relay.path_prefix: must be a path like /px" in text
    assert "relay.tracker_file: must be a file name like app.js" in text
    for bad in ("/px/", "/../x", "/a b"):
        with pytest.raises(SettingsError):
            parse(table_with(tmp_path, url, url, path_prefix=bad), env={})
    defaults = parse(table_with(tmp_path, url, url), env={}).relay
    assert (defaults.path_prefix, defaults.tracker_file) == ("", "s.js")
