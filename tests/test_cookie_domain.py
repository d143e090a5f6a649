"""A relay on the shop's subdomain (issue 21, item 4): `sites.X.cookie_domain`.

The relay answers at t.shop.test, the shop's pages are at www.shop.test: the visitor cookie is
set for the whole shop.test (so the shop's backend gets it too), it keeps one visitor across
page views, and CORS answers the shop's own origin only. Real Chromium resolves both names to
127.0.0.1 (`--host-resolver-rules`); plain http, as cookies ignore ports and the two hosts are
same-site (SameSite=Lax lets the cookie go with the tracker's credentialed requests).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import Browser, BrowserContext, sync_playwright
from relay_fixtures import SECRET, WRITE_KEY, Stack, relay_stack, routed_db
from servers import free_port, serve, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from shoprelay.identity.cookie import VisitorCookie
from shoprelay.settings import SettingsError, parse, site_warnings

USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/130.0.0.0 Safari/537.36")
SHOP = "https://www.shop.example"


def site_table(**site: Any) -> dict[str, Any]:
    return {"relay": {"secret": SECRET},
            "sites": {"shop": {"write_key": "pk_shop", "allowed_origins": [SHOP], **site}}}


def refusal(**site: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        parse(site_table(**site), env={})
    (problem,) = caught.value.problems
    assert problem.key == "sites.shop.cookie_domain"
    return problem.reason


# ---- the setting ------------------------------------------------------------------------------

def test_cookie_domain_is_read_as_browsers_read_it() -> None:
    """A leading dot is ignored (RFC 6265 5.2.3) and case does not matter; absent, none."""
    assert parse(site_table(cookie_domain=".Shop.Example"), env={}).sites["shop"] \
        .cookie_domain == "shop.example"
    assert parse(site_table(), env={}).sites["shop"].cookie_domain == ""
    # The apex itself is covered (a shop at https://shop.example).
    table = site_table(cookie_domain="shop.example")
    table["sites"]["shop"]["allowed_origins"] = ["https://shop.example"]
    assert parse(table, env={}).sites["shop"].cookie_domain == "shop.example"


@pytest.mark.parametrize(("value", "reason"), [
    ("https://shop.example", "without scheme, port or path"),
    ("shop.example:443", "without scheme, port or path"),
    ("shop.example/t", "without scheme, port or path"),
    ("[::1]", "without scheme, port or path"),
    ("127.0.0.1", "an IP address"),
    ("::1", "without scheme, port or path"),
    ("example", "at least two labels"),
    (".example", "at least two labels"),
    ("shop..example", "not a host name"),
    ("-shop.example", "not a host name"),
    ("shop_1.example", "not a host name"),
    ("shop.123", "never all digits"),
    ("shöp.example", "xn-- form"),
    ("other.example", "covers none of allowed_origins"),
    ("www.shop.example.evil", "covers none of allowed_origins"),
    ("hop.example", "covers none of allowed_origins"),  # a suffix of a label is no domain
])
def test_a_cookie_domain_no_browser_would_keep_is_refused(value: str, reason: str) -> None:
    text = refusal(cookie_domain=value)
    assert reason in text
    assert repr(value) in text


def test_an_origin_outside_the_cookie_domain_is_a_warning_not_a_refusal(
        tmp_path: Path) -> None:
    """A second storefront or a developer's localhost may send too; its requests are another
    site's to the browser, so check-config says they get no cookie, and still passes."""
    table = site_table(cookie_domain="shop.example")
    table["sites"]["shop"]["allowed_origins"] = [SHOP, "http://localhost:3000"]
    site = parse(table, env={}).sites["shop"]
    (warning,) = site_warnings(site)
    assert warning.key == "sites.shop.allowed_origins[1]"
    assert "http://localhost:3000 is not under cookie_domain 'shop.example'" in warning.reason
    assert site_warnings(parse(site_table(cookie_domain="shop.example"), env={})
                         .sites["shop"]) == []

    path = tmp_path / "shoprelay.toml"
    path.write_text(f'[relay]\nsecret = "{SECRET}"\n\n[sites.shop]\nwrite_key = "pk_shop"\n'
                    f'allowed_origins = ["{SHOP}", "http://localhost:3000"]\n'
                    'cookie_domain = "shop.example"\n')
    checked = subprocess.run([sys.executable, "-m", "shoprelay", "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert (f"{path}: warning: sites.shop.allowed_origins[1]: http://localhost:3000 is not "
            "under cookie_domain") in checked.stderr


# ---- the answers, over HTTP -------------------------------------------------------------------

def subdomain_site(cookie_domain: str = "shop.example", **relay: Any) -> Any:
    def adjust(table: dict[str, Any]) -> None:
        table["sites"]["demo"]["allowed_origins"] = [SHOP]
        if cookie_domain:
            table["sites"]["demo"]["cookie_domain"] = cookie_domain
        table["relay"].update(relay)
    return adjust


def send(stack: Stack, *, host: str | None = None, origin: str | None = SHOP,
         **headers: str) -> httpx.Response:
    if host:
        headers["Host"] = host
    if origin:
        headers["Origin"] = origin
    body = {"batch": [{"type": "page", "name": "Home"}], "writeKey": WRITE_KEY}
    return httpx.post(f"{stack.relay_url}/v1/batch", content=orjson.dumps(body),
                      headers={"Content-Type": "text/plain", **headers})


def test_the_cookie_names_its_domain_on_answers_to_a_host_it_covers(tmp_path: Path) -> None:
    """A Domain that does not cover the answering host makes browsers drop the cookie, so
    the relay reached by its address or another name answers host-only instead."""
    with relay_stack(tmp_path, vendors=["goshops"], adjust=subdomain_site()) as stack:
        for host in ("t.shop.example", "T.Shop.Example", "shop.example"):
            cookie = send(stack, host=host).headers["set-cookie"]
            assert "; Domain=shop.example" in cookie, host
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
            assert "Secure" not in cookie  # plain http, no trusted proxy
        for host in (None, "t.othershop.example", "shop.example.evil"):
            cookie = send(stack, host=host).headers["set-cookie"]
            assert "Domain=" not in cookie, host


def test_without_cookie_domain_the_cookie_is_host_only(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["goshops"], adjust=subdomain_site("")) as stack:
        cookie = send(stack, host="t.shop.example").headers["set-cookie"]
        assert cookie.startswith("sc=")
        assert "Domain=" not in cookie


def test_behind_a_tls_proxy_the_domain_cookie_is_secure(tmp_path: Path) -> None:
    adjust = subdomain_site(trusted_proxies=["127.0.0.1"])
    with relay_stack(tmp_path, vendors=["goshops"], adjust=adjust) as stack:
        cookie = send(stack, host="t.shop.example",
                      **{"X-Forwarded-Proto": "https"}).headers["set-cookie"]
        assert "; Domain=shop.example" in cookie
        assert cookie.endswith("; Secure")


def test_cors_answers_the_configured_origin_exactly(tmp_path: Path) -> None:
    """Only the configured origin is echoed, with credentials; a sibling subdomain under the
    same cookie domain is not the shop: 403 on preflight and post, and no CORS headers."""
    with relay_stack(tmp_path, vendors=["goshops"], adjust=subdomain_site()) as stack:
        good = send(stack, host="t.shop.example")
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == SHOP
        assert good.headers["access-control-allow-credentials"] == "true"
        assert good.headers["vary"] == "Origin"

        preflight = httpx.options(f"{stack.relay_url}/v1/batch", headers={
            "Origin": SHOP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == SHOP
        assert preflight.headers["access-control-allow-credentials"] == "true"

        for evil in ("https://evil.shop.example", "http://www.shop.example",
                     "https://www.shop.example:8443"):
            refused = send(stack, host="t.shop.example", origin=evil)
            assert refused.status_code == 403, evil
            assert "access-control-allow-origin" not in refused.headers
            assert "set-cookie" not in refused.headers
            refused = httpx.options(f"{stack.relay_url}/v1/batch", headers={
                "Origin": evil, "Access-Control-Request-Method": "POST"})
            assert refused.status_code == 403, evil
            assert "access-control-allow-origin" not in refused.headers
            assert "access-control-allow-credentials" not in refused.headers


# ---- in Chromium: relay at t.shop.test, the shop at www.shop.test -----------------------------

@dataclass
class Deployment:
    shop_origin: str
    shop_port: int
    spool: Path
    #: The `sc` cookie each request for a shop page brought to the shop's own server.
    shop_saw: list[str | None] = field(default_factory=list)

    def stored(self) -> list[tuple[str, dict[str, Any]]]:
        with routed_db(self.spool) as conn:
            return [(visitor, orjson.loads(data)["message"]) for visitor, data in
                    conn.execute("SELECT visitor_id, data FROM messages ORDER BY id")]

    def wait_stored(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        return list(wait_for(lambda: (rows := self.stored()) and len(rows) >= count and rows,
                             timeout=20))


@contextmanager
def subdomain_deployment(tmp_path: Path, cookie_domain: str) -> Iterator[Deployment]:
    shop_port = free_port()
    shop_origin = f"http://www.shop.test:{shop_port}"

    def adjust(table: dict[str, Any]) -> None:
        table["sites"]["demo"]["allowed_origins"] = [shop_origin]
        if cookie_domain:
            table["sites"]["demo"]["cookie_domain"] = cookie_domain

    with relay_stack(tmp_path, vendors=["goshops"], adjust=adjust) as stack:
        deployment = Deployment(shop_origin, shop_port, tmp_path / "spool.db")
        script = f"http://t.shop.test:{urlsplit(stack.relay_url).port}/s.js"

        async def page(request: Request) -> HTMLResponse:
            if request.path_params["name"] == "favicon.ico":
                return HTMLResponse("", 404)
            deployment.shop_saw.append(request.cookies.get("sc"))
            return HTMLResponse(f"<!doctype html><title>{request.path_params['name']}</title>"
                                f'<script async src="{script}" data-key="{WRITE_KEY}"></script>')

        with serve(Starlette(routes=[Route("/{name}", page)]), port=shop_port):
            yield deployment


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """conftest's Chromium, resolving every *.shop.test name to 127.0.0.1."""
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP *.shop.test 127.0.0.1",
            f"--user-agent={USER_AGENT}"]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args,
                                              headless=True)
        try:
            yield launched
        finally:
            launched.close()


def view(context: BrowserContext, url: str) -> tuple[int, str]:
    """Open `url` and wait for the relay's answer to its page view: the answer's status and
    what the page's scripts see of its cookies."""
    page = context.new_page()
    with page.expect_response(lambda r: "/v1/batch" in r.url, timeout=15_000) as answer:
        page.goto(url)
    status = answer.value.status
    scripts_see = str(page.evaluate("document.cookie"))
    page.close()
    return status, scripts_see


def relay_cookie(context: BrowserContext) -> dict[str, Any]:
    (cookie,) = [c for c in context.cookies() if c["name"] == "sc"]
    return dict(cookie)


@pytest.mark.browser
def test_the_shop_and_its_relay_share_one_visitor_cookie(tmp_path: Path,
                                                         browser: Browser) -> None:
    with subdomain_deployment(tmp_path, "shop.test") as shop:
        context = browser.new_context()
        assert view(context, f"{shop.shop_origin}/home") == (200, "")
        cookie = relay_cookie(context)
        assert cookie["domain"] == ".shop.test"
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"

        # The cookie went with the page's request; no script on the page can read it.
        assert view(context, f"{shop.shop_origin}/product") == (200, "")
        stored = shop.wait_stored(2)
        visitors = {visitor for visitor, _ in stored}
        assert len(visitors) == 1, stored
        (visitor,) = visitors
        assert VisitorCookie(SECRET).read(relay_cookie(context)["value"], "demo") == visitor
        # The shop's own server got it with the second page: the backend can pass it on to
        # the server API (`context.visitorCookie`).
        assert shop.shop_saw == [None, cookie["value"]]

        # A sibling host is not the shop, even with the cookie: refused (a 403 without CORS
        # headers, which the page sees as a failed request), nothing stored.
        page = context.new_page()
        with page.expect_event("requestfailed", lambda r: "/v1/batch" in r.url,
                               timeout=15_000):
            page.goto(f"http://evil.shop.test:{shop.shop_port}/home")
        page.close()
        assert len(shop.stored()) == 2
        context.close()


@pytest.mark.browser
def test_without_cookie_domain_the_cookie_stays_on_the_relay_host(tmp_path: Path,
                                                                  browser: Browser) -> None:
    with subdomain_deployment(tmp_path, "") as shop:
        context = browser.new_context()
        assert view(context, f"{shop.shop_origin}/home") == (200, "")
        assert relay_cookie(context)["domain"] == "t.shop.test"
        assert view(context, f"{shop.shop_origin}/product") == (200, "")
        assert len({visitor for visitor, _ in shop.wait_stored(2)}) == 1
        assert shop.shop_saw == [None, None]  # never the shop's own server's
        context.close()


@pytest.mark.browser
def test_turning_cookie_domain_on_keeps_every_visitor(tmp_path: Path, browser: Browser) -> None:
    """A shop that starts host-only and adds cookie_domain later: the browser's host-only
    cookie is read, re-issued for the domain with the same value, and the visitor stays one."""
    context = browser.new_context()
    with subdomain_deployment(tmp_path, "") as shop:
        assert view(context, f"{shop.shop_origin}/home") == (200, "")
    (before,) = [c for c in context.cookies() if c["name"] == "sc"]
    with subdomain_deployment(tmp_path, "shop.test") as shop:  # the same spool and secret
        assert view(context, f"{shop.shop_origin}/product") == (200, "")
        assert view(context, f"{shop.shop_origin}/cart") == (200, "")
        cookies = sorted((c["domain"], c["value"]) for c in context.cookies()
                         if c["name"] == "sc")
        assert cookies == [(".shop.test", before["value"]), ("t.shop.test", before["value"])]
        assert shop.shop_saw == [None, before["value"]]
        assert len({visitor for visitor, _ in shop.wait_stored(3)}) == 1
    context.close()
