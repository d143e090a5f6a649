"""The real `@segment/analytics-next` from npm, pointed at the relay, reaches the vendors.

tests/js/package.json pins it (and esbuild); the install is cached in tests/js/node_modules and
the bundle in tests/js/.build (both gitignored). The settings Segment's CDN would serve are given
inline (`cdnSettings`), and every request off 127.0.0.1 is refused, so nothing comes from a CDN.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import chromium, shop_stack
from servers import wait_for
from test_capture import USER_AGENT, expect_calls

from shoprelay.demo import DEMO_WRITE_KEY

pytestmark = pytest.mark.browser

JS = Path(__file__).resolve().parent / "js"
BUNDLE = JS / ".build" / "analytics-next.js"


def analytics_next_bundle() -> Path:
    """npm ci (once per lockfile) and esbuild the entry into one IIFE."""
    if shutil.which("npm") is None:
        pytest.fail("npm not found on PATH: install Node.js (npm) for the analytics-next test")
    lock = JS / "package-lock.json"
    stamp = JS / "node_modules" / ".shoprelay-lock"
    if not stamp.exists() or stamp.read_bytes() != lock.read_bytes():
        proc = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS, capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
        stamp.write_bytes(lock.read_bytes())
    BUNDLE.parent.mkdir(exist_ok=True)
    proc = subprocess.run(
        [str(JS / "node_modules" / ".bin" / "esbuild"), "entry.js", "--bundle", "--format=iife",
         "--target=es2020", "--log-level=warning", f"--outfile={BUNDLE}"],
        cwd=JS, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"esbuild failed:\n{proc.stdout}\n{proc.stderr}"
    return BUNDLE


def test_analytics_next_delivers_through_the_relay(tmp_path: Path) -> None:
    bundle = analytics_next_bundle()
    with shop_stack(tmp_path, vendors=["goshops", "alana"]) as stack, \
            chromium() as (_, browser):
        context = browser.new_context(user_agent=USER_AGENT)
        shop_host = urlsplit(stack.shop_url).netloc
        refused: list[str] = []

        def only_local(route: Any) -> None:
            if urlsplit(route.request.url).netloc == shop_host:
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        posted: list[str] = []
        page = context.new_page()
        page.on("request", lambda r: posted.append(urlsplit(r.url).path)
                if r.method == "POST" else None)
        page.goto(f"{stack.shop_url}/lab/plain")           # no shoprelay tag on this page
        page.add_script_tag(path=str(bundle))
        page.evaluate("""async ([writeKey, apiHost]) => {
            const [analytics] = await AnalyticsBrowser.load(
                {writeKey, cdnSettings: {integrations: {'Segment.io': {apiKey: writeKey,
                    apiHost, protocol: 'http'}}, plan: {}, remotePlugins: []}},
                {integrations: {'Segment.io': {apiHost, protocol: 'http'}}});
            await analytics.identify('u-ajs', {email: 'ajs@example.com'});
            await analytics.page('Home');
            await analytics.track('Product Viewed', {product_id: '101', price: 89,
                                                     currency: 'USD'});
            await analytics.track('Product Added', {product_id: '101', price: 89, quantity: 1,
                                                    currency: 'USD'});
        }""", [DEMO_WRITE_KEY, f"{shop_host}/v1"])
        expect_calls_alana_goshops(stack)
        assert {r["body"]["data"]["customer"] for r in stack.received("goshops")} == {"u-ajs"}
        # analytics-next's own endpoints, no CDN
        assert {"/v1/i", "/v1/p", "/v1/t"} <= set(posted)
        assert refused == []
        context.close()


def expect_calls_alana_goshops(stack: Any) -> None:
    expect_calls(stack, {"goshops": Counter({"view": 1, "cart": 1})})
    want = Counter({"home-page-view": 1, "detail-page-view": 1, "add-to-cart": 1})

    def alana() -> Counter[str]:
        return Counter(e["eventType"] for r in stack.received("alana")
                       for e in r["body"]["events"])

    wait_for(lambda: alana().total() >= want.total(), timeout=30)
    assert alana() == want
