"""The real RudderStack JS SDK v3 (`@rudderstack/analytics-js` from npm) reaches the vendors.

Its bundled build (every plugin inside, nothing fetched from RudderStack's CDN) is loaded from
tests/js/node_modules on a page with no shoprelay tag; the source config is given inline
(`getSourceConfig`), so no control plane is asked, and every request off this machine is
refused. Each of its transports is driven: the default XHR queue (one request per event to
/v1/<type>, Basic auth, `AnonymousId` and `SentAt` headers, `Rsa-Retry-*` on a retry), its batch
mode (/v1/batch) and its beacon mode (sendBeacon to /beacon/v1/batch?writeKey=…, text/plain),
from another origin (no cookie: one visitor through its anonymous id) and from the relay's own.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from relay_fixtures import relay_stack
from servers import free_port, serve, wait_for
from starlette.responses import Response
from test_capture import USER_AGENT, expect_calls
from test_compat_analytics_next import analytics_next_bundle

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.demo import DEMO_WRITE_KEY, demo_table
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.settings import parse

pytestmark = pytest.mark.browser

SDK = (Path(__file__).resolve().parent / "js" / "node_modules" / "@rudderstack" / "analytics-js"
       / "dist" / "npm" / "modern" / "bundled" / "umd" / "index.js")
SOURCE_CONFIG = {"source": {"id": "shoprelay-test", "name": "shop", "workspaceId": "ws",
                            "enabled": True, "config": {}, "destinations": []}}
#: What the XHR queue sends beside the CORS-safelisted ones.
RUDDER_HEADERS = {"authorization", "anonymousid", "content-type", "sentat"}
RETRY_HEADERS = {"rsa-retry-attempt", "rsa-retry-reason", "rsa-since-first-attempt",
                 "rsa-since-last-attempt"}


@dataclass
class Stack:
    shop_url: str        # the relay's own origin (the shop and the relay in one app)
    other_url: str       # the same server by another name: a page of another origin
    sandbox_url: str
    failed: list[str]

    def received(self, vendor: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/{vendor}/requests").json()


@contextmanager
def rudder_stack(tmp_path: Path, fail_first_track: bool = False) -> Iterator[Stack]:
    from demo_shop.app import create_app as create_shop_app

    with ExitStack() as stack:
        sandbox_url = stack.enter_context(serve(create_sandbox_app(), lifespan="off"))
        port = free_port()
        shop_url, other_url = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
        table = demo_table(shop_origin=shop_url, sandbox_url=sandbox_url,
                           spool_file=str(tmp_path / "spool.db"), vendors=["goshops", "alana"],
                           secret="rudder-test-secret-0123456789", forward_bots=True)
        table["sites"]["demo"]["allowed_origins"].append(other_url)
        relay = create_app(parse(table, env={}), delivery=DeliveryOptions(idle_poll=0.2))
        shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url)
        failed: list[str] = []
        if fail_first_track:
            shop = FailFirstTrack(shop, failed)
        stack.enter_context(serve(shop, port=port))
        yield Stack(shop_url, other_url, sandbox_url, failed)


class FailFirstTrack:
    """The relay's server answering its first POST /v1/track with a bare 503 (a restart)."""

    def __init__(self, app: Any, failed: list[str]) -> None:
        self.app = app
        self.failed = failed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] == "/v1/track" and not self.failed):
            self.failed.append(scope["path"])
            await Response("restarting", 503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def alana_calls(stack: Stack) -> list[dict[str, Any]]:
    return [e for r in stack.received("alana") for e in r["body"]["events"]]


@pytest.mark.parametrize(("mode", "cross_origin"), [
    ("xhr", True), ("xhr", False), ("batch", True), ("batch", False), ("beacon", True),
    ("beacon", False)])
def test_rudderstack_sdk_delivers_through_the_relay(tmp_path: Path, browser: Any, mode: str,
                                                    cross_origin: bool) -> None:
    analytics_next_bundle()  # npm ci of tests/js (once per lockfile)
    # Cross-origin, the XHR queue's first track meets a relay that is briefly down (503): the
    # SDK retries it with its Rsa-Retry-* headers, which need their own preflight.
    with rudder_stack(tmp_path, fail_first_track=mode == "xhr" and cross_origin) as stack:
        page_url = stack.other_url if cross_origin else stack.shop_url
        relay = urlsplit(stack.shop_url).netloc
        context = browser.new_context(user_agent=USER_AGENT)
        sent: list[tuple[str, str, dict[str, str]]] = []
        page = context.new_page()
        # Every request the page makes (no routing: a route handler would need this thread,
        # which sleeps while waiting for the sandboxes).
        page.on("request", lambda r: sent.append((r.method, r.url, r.headers)))
        page.goto(f"{page_url}/lab/plain")  # no shoprelay tag on this page
        page.add_script_tag(path=str(SDK))
        options: dict[str, Any] = {"getSourceConfig": None, "logLevel": "WARN"}
        if mode == "batch":
            options["queueOptions"] = {"batch": {"enabled": True, "maxItems": 4,
                                                 "flushInterval": 300}}
        if mode == "beacon":
            options |= {"useBeacon": True, "beaconQueueOptions": {"flushQueueInterval": 300}}
        anonymous_id = page.evaluate("""([writeKey, dataPlane, options, config]) =>
            new Promise(resolve => {
                const analytics = new window.rudderanalytics.RudderAnalytics();
                analytics.load(writeKey, dataPlane, {...options, getSourceConfig: () => config,
                    onLoaded: () => {
                        analytics.page('Home');
                        analytics.track('Product Viewed', {product_id: '101', price: 89,
                                                           currency: 'USD'});
                        analytics.identify('u-rs', {email: 'rs@example.com'});
                        // The XHR queue sends one request per event, several at once: a
                        // track sent in the same tick may reach the relay before the
                        // identify. A moment later, as after a real login, it cannot.
                        setTimeout(() => {
                            analytics.track('Product Added', {product_id: '101', price: 89,
                                                              quantity: 1, currency: 'USD'});
                            resolve(analytics.getAnonymousId());
                        }, 500);
                    }});
            })""", [DEMO_WRITE_KEY, stack.shop_url, options, SOURCE_CONFIG])

        expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1})})
        want = Counter({"home-page-view": 1, "detail-page-view": 1, "add-to-cart": 1})
        wait_for(lambda: len(alana_calls(stack)) >= want.total(), timeout=30)
        events = alana_calls(stack)
        assert Counter(e["eventType"] for e in events) == want
        # One visitor throughout, though cross-origin the SDK's requests carry no cookie.
        assert len({e["visitorId"] for e in events}) == 1
        assert [e.get("userId") for e in events if e["eventType"] == "add-to-cart"] == ["u-rs"]
        page.evaluate("1")  # hands the page's buffered request events over
        local = {relay, urlsplit(stack.other_url).netloc}
        assert [url for _, url, _ in sent if urlsplit(url).netloc not in local] == []
        posts = [(urlsplit(url).path, urlsplit(url).query, headers)
                 for method, url, headers in sent
                 if method == "POST" and urlsplit(url).netloc == relay]
        paths = Counter(path for path, _, _ in posts)
        if mode == "xhr":
            assert {"/v1/page", "/v1/track", "/v1/identify"} <= set(paths)
            assert all(set(h) >= RUDDER_HEADERS for _, _, h in posts)
            assert {h["authorization"] for _, _, h in posts} == {
                "Basic " + base64.b64encode(f"{DEMO_WRITE_KEY}:".encode()).decode()}
            assert {h["anonymousid"] for _, _, h in posts} == {
                base64.b64encode(anonymous_id.encode()).decode()}
        elif mode == "batch":
            assert set(paths) == {"/v1/batch"}
        else:
            assert set(paths) == {"/beacon/v1/batch"}
            assert {q for _, q, _ in posts} == {f"writeKey={DEMO_WRITE_KEY}"}
            assert all(h["content-type"].startswith("text/plain") for _, _, h in posts)
        if mode == "xhr" and cross_origin:
            assert stack.failed == ["/v1/track"]
            retried = [h for path, _, h in posts if set(h) >= RETRY_HEADERS]
            assert retried and retried[0]["rsa-retry-attempt"] == "1"
        context.close()


def test_preflight_allows_exactly_what_the_clients_send(tmp_path: Path) -> None:
    with rudder_stack(tmp_path) as stack:
        asked = ", ".join(sorted(RUDDER_HEADERS | RETRY_HEADERS | {"rsa-recovered"}))
        answer = httpx.options(f"{stack.shop_url}/v1/track", headers={
            "Origin": stack.other_url, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked})
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == stack.other_url
        allowed = {h.strip().lower()
                   for h in answer.headers["access-control-allow-headers"].split(",")}
        assert allowed == set(asked.split(", "))
        # No reflection for an origin that is not configured.
        stranger = httpx.options(f"{stack.shop_url}/v1/track", headers={
            "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked})
        assert stranger.status_code == 403
        assert "access-control-allow-origin" not in stranger.headers
        assert "access-control-allow-headers" not in stranger.headers


def test_anonymous_id_header_names_the_visitor_when_the_body_has_none(tmp_path: Path) -> None:
    """RudderStack's HTTP API puts the anonymous id in an `AnonymousId` header (base64, as its
    SDK sends it); with no cookie and no `anonymousId` in the body, it keeps one visitor."""
    with relay_stack(tmp_path, vendors=["alana"]) as stack:
        def send(anonymous_id: str, product: str) -> None:
            answer = httpx.post(
                f"{stack.relay_url}/v1/track",
                json={"event": "Product Viewed", "properties": {"product_id": product}},
                headers={"Authorization": "Basic " + base64.b64encode(
                    f"{DEMO_WRITE_KEY}:".encode()).decode(), "AnonymousId": anonymous_id})
            assert answer.status_code == 200, answer.text

        send(base64.b64encode(b"rs-anon-1").decode(), "101")
        send(base64.b64encode(b"rs-anon-1").decode(), "102")
        send("plain-anon-2", "103")  # not base64 of text: taken as it is
        events = wait_for(lambda: len(e := [x for r in stack.received("alana")
                                             for x in r["body"]["events"]]) >= 3 and e)
        visitors = {e["productId"]: e["visitorId"] for e in events}
        assert visitors["101"] == visitors["102"] != visitors["103"]
