"""The demo shop renders every page with the tracker snippet and the events the contract names."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from demo_shop.app import create_app, user_id_for
from demo_shop.catalog import CATEGORIES, PRODUCTS
from shoprelay.demo import DEMO_WRITE_KEY

WRITE_KEY = "pk_demo"
SNIPPET = f'<script async src="/s.js" data-key="{WRITE_KEY}"></script>'


async def fake_tracker(request: Request) -> Response:
    return PlainTextResponse("/* tracker */", media_type="application/javascript")


async def fake_batch(request: Request) -> Response:
    return JSONResponse({"success": True, "accepted": 0, "rejected": []})


RELAY = Starlette(
    routes=[Route("/s.js", fake_tracker), Route("/v1/batch", fake_batch, methods=["POST"])]
)

SANDBOX_ANSWER = {
    "retailrocket": [
        {
            "method": "GET", "path": "/1.0/event/view/p1", "query": {"productId": "101"},
            "body": None, "status": 200, "error": "", "accepted": True, "at": 1700000000.0,
        },
        {
            "method": "POST", "path": "/1.0/event/order", "query": {},
            "body": {"price": "oops"}, "status": 400, "error": "price must be a number",
            "accepted": False, "at": 1700000001.0,
        },
    ],
    "yespo": [],
}  # fmt: skip


def sandbox_transport() -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/_sandbox/requests"
        return httpx.Response(200, json=SANDBOX_ANSWER)

    return httpx.MockTransport(answer)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(
        RELAY,
        write_key=WRITE_KEY,
        sandbox_url="http://sandbox.test",
        sandbox_transport=sandbox_transport(),
    )
    with TestClient(app) as c:
        yield c


def calls(html: str, prefix: str) -> list[Any]:
    """Every JSON argument list that follows `prefix(` in the page's scripts."""
    decoder = json.JSONDecoder()
    found = []
    for m in re.finditer(re.escape(prefix) + r"\(", html):
        try:
            value, _ = decoder.raw_decode(html, m.end())
        except ValueError:
            continue  # the function's own definition or a handler, not a call with data
        found.append(value)
    return found


def tracked(html: str) -> list[tuple[str, dict[str, Any]]]:
    """The `shopTrack(name, props)` calls a page makes while rendering."""
    decoder = json.JSONDecoder()
    out = []
    for m in re.finditer(r'shopTrack\((?=")', html):
        name, end = decoder.raw_decode(html, m.end())
        assert html[end] == ","
        props, _ = decoder.raw_decode(html, end + 1)
        out.append((name, props))
    return out


def queued(html: str) -> list[list[Any]]:
    return calls(html, "shoprelay.push")


@pytest.mark.parametrize(
    "path",
    ["/", "/category/10", "/product/101", "/search?q=shirt", "/cart", "/checkout", "/login",
     "/demo/vendors"],
)  # fmt: skip
def test_every_page_has_the_snippet_once(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.text.count(SNIPPET) == 1
    assert resp.text.count("/s.js") == 1
    assert 'href="/demo/vendors"' in resp.text


def test_write_key_is_escaped() -> None:
    app = create_app(RELAY, write_key='k"><x', sandbox_url="http://sandbox.test")
    html = TestClient(app).get("/").text
    assert 'data-key="k&quot;&gt;&lt;x"' in html


def test_relay_answers_what_the_shop_does_not(client: TestClient) -> None:
    assert client.get("/s.js").text == "/* tracker */"
    assert client.post("/v1/batch", content=b"{}").json()["success"] is True


def test_home_names_the_page_and_shows_recommendations(client: TestClient) -> None:
    html = client.get("/").text
    assert ["page", "Home"] in queued(html)
    [(name, props)] = tracked(html)
    assert name == "Product List Viewed"
    assert props["list_id"] == "home-recs"
    # Who served the block (CONTRACT §2): its id reaches that vendor only.
    assert props["recommendation_vendor"] == "retailrocket"
    ids = [p["product_id"] for p in props["products"]]
    assert ids and all(isinstance(i, int) for i in ids)
    for pid in ids:
        assert f'data-testid="rec-add-{pid}"' in html
        assert f'data-click="{pid}" data-list="home-recs" data-vendor="retailrocket"' in html


def test_category_page_sends_integer_category(client: TestClient) -> None:
    html = client.get("/category/10").text
    [(name, props)] = tracked(html)
    assert name == "Product List Viewed"
    assert props["category_id"] == 10
    assert props["category"] == CATEGORIES[10].path == "Apparel > Shoes"
    assert "list_id" not in props
    assert [p["product_id"] for p in props["products"]] == [101, 102, 103]
    assert client.get("/category/99").status_code == 404


def test_product_page(client: TestClient) -> None:
    html = client.get("/product/101").text
    [(name, props)] = tracked(html)
    assert name == "Product Viewed"
    assert props == {
        "product_id": 101, "sku": "SH-RUN-01", "name": "Trail Runner", "price": 89.0,
        "currency": "USD", "category": "Apparel > Shoes", "in_stock": True,
    }  # fmt: skip
    for testid in ("add-to-cart", "add-to-wishlist", "rate-1", "rate-5"):
        assert f'data-testid="{testid}"' in html
    assert client.get("/product/999").status_code == 404


def test_grouped_product_carries_its_variants(client: TestClient) -> None:
    grouped = next(p for p in PRODUCTS.values() if p.group_id is not None)
    [(_, props)] = tracked(client.get(f"/product/{grouped.id}").text)
    assert props["group_id"] == grouped.group_id
    assert props["variant_ids"] == list(grouped.variant_ids)
    assert all(isinstance(v, int) for v in props["variant_ids"])


def test_search_counts_results(client: TestClient) -> None:
    [(name, props)] = tracked(client.get("/search", params={"q": "shirt"}).text)
    assert (name, props) == ("Products Searched", {"query": "shirt", "results": 3})
    [(_, props)] = tracked(client.get("/search", params={"q": "zzz"}).text)
    assert props == {"query": "zzz", "results": 0}
    assert tracked(client.get("/search").text) == []


def test_cart_checkout_and_order_completed_once(client: TestClient) -> None:
    added = client.post("/cart/add", json={"product_id": 105, "quantity": 2}).json()
    client.post("/cart/add", json={"product_id": 107})
    assert added["line"]["price"] == 64.0
    assert added["count"] == 2
    cart_id = added["cart_id"]

    html = client.get("/cart").text
    assert 'data-testid="remove-105"' in html and 'data-testid="remove-107"' in html
    [(name, props)] = tracked(html)
    assert name == "Cart Viewed" and props["cart_id"] == cart_id
    assert [(p["product_id"], p["quantity"]) for p in props["products"]] == [(105, 2), (107, 1)]

    removed = client.post("/cart/remove", json={"product_id": 107}).json()
    assert removed["removed"]["product_id"] == 107 and removed["count"] == 2
    assert client.post("/cart/add", json={"product_id": 12345}).status_code == 404

    assert 'data-testid="place-order"' in client.get("/checkout").text
    resp = client.post("/checkout")
    assert resp.url.path.startswith("/thanks/")
    order_id = resp.url.path.rsplit("/", 1)[1]
    [(name, props)] = tracked(resp.text)
    assert name == "Order Completed"
    assert props["order_id"] == order_id
    assert props["revenue"] == props["total"] == 128.0
    assert props["currency"] == "USD"
    assert [(p["product_id"], p["price"], p["quantity"]) for p in props["products"]] == [
        (105, 64.0, 2)
    ]
    # a reload of the thank-you page is not a second sale
    assert tracked(client.get(resp.url.path).text) == []
    [(_, props)] = tracked(client.get("/cart").text)
    assert props["products"] == [] and props["cart_id"] != cart_id


def test_thanks_page_is_private_to_the_buyer(client: TestClient) -> None:
    client.post("/cart/add", json={"product_id": 101})
    path = client.post("/checkout").url.path
    client.cookies.clear()
    assert client.get(path).status_code == 404


def test_login_identifies_on_the_next_page_only(client: TestClient) -> None:
    resp = client.post("/login", data={"email": "Ada@Example.com"})
    assert resp.url.path == "/"
    pushes = queued(resp.text)
    uid = user_id_for("ada@example.com")
    assert pushes[0] == ["identify", uid, {"email": "Ada@Example.com", "name": "Ada"}]
    assert pushes[1] == ["page", "Home"]
    assert re.fullmatch(r"u[0-9a-f]{16}", uid)
    assert not any(c[0] == "identify" for c in queued(client.get("/").text))
    assert 'data-testid="login-error"' in client.post("/login", data={"email": "nope"}).text


def test_vendors_page_shows_refusals(client: TestClient) -> None:
    html = client.get("/demo/vendors").text
    assert 'data-testid="vendor-retailrocket"' in html and 'data-testid="vendor-yespo"' in html
    assert html.count('<tr class="refused">') == 1
    assert "price must be a number" in html
    assert "/1.0/event/view/p1?productId=101" in html
    assert "&quot;price&quot;: &quot;oops&quot;" in html
    assert "setInterval" in html
    fragment = client.get("/demo/vendors/fragment").text
    assert '<tr class="refused">' in fragment and "<html" not in fragment


def test_vendors_page_survives_a_missing_sandbox() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    app = create_app(
        RELAY, write_key=WRITE_KEY, sandbox_url="http://sandbox.test",
        sandbox_transport=httpx.MockTransport(down),
    )  # fmt: skip
    resp = TestClient(app).get("/demo/vendors")
    assert resp.status_code == 200
    assert 'data-testid="sandbox-error"' in resp.text


def test_relay_lifespan_runs_under_the_shop() -> None:
    # Starlette does not pass lifespan events to mounted apps; the relay's spool depends on them.
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    relay = Starlette(routes=[Route("/s.js", fake_tracker)], lifespan=lifespan)
    app = create_app(relay, write_key=WRITE_KEY, sandbox_url="http://sandbox.test")
    with TestClient(app) as c:
        assert events == ["startup"]
        assert c.get("/s.js").status_code == 200
    assert events == ["startup", "shutdown"]


def test_a_failing_relay_startup_stops_the_shop() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise OSError("spool is read-only")
        yield

    relay = Starlette(lifespan=lifespan)
    app = create_app(relay, write_key=WRITE_KEY, sandbox_url="http://sandbox.test")
    with pytest.raises(RuntimeError, match="spool is read-only"), TestClient(app):
        pass


def test_the_platform_page_sends_a_signed_shopify_order_that_reaches_the_vendors(
        tmp_path: Path) -> None:
    """Issue 21 item 5: the demo shop as a Shopify store. The order is the webhook's, found
    on the shopper's visitor by the cart token the cart events carried."""
    import sqlite3

    from browser import shop_stack
    from servers import wait_for

    with shop_stack(tmp_path, vendors=["goshops", "retailrocket"]) as stack:
        shopper = httpx.Client(base_url=stack.shop_url)
        assert shopper.get("/").status_code == 200
        cart = shopper.post("/cart/add", json={"product_id": 103, "quantity": 2}).json()
        # What the page's tracker sends for that click (the shop's cart id as `cart_id`).
        tracked = shopper.post("/v1/batch", json={"writeKey": DEMO_WRITE_KEY, "batch": [
            {"type": "track", "event": "Product Added", "messageId": "add-1", "properties": {
                "product_id": 103, "price": PRODUCTS[103].price, "quantity": 2,
                "cart_id": cart["cart_id"]}}]})
        assert tracked.status_code == 200, tracked.text
        page = shopper.get("/demo/platform")
        assert page.status_code == 200 and PRODUCTS[103].name in page.text
        sent = shopper.post("/demo/platform")
        assert sent.status_code == 200
        order_id = re.search(r'data-testid="platform-order-id">(\d+)<', sent.text)
        assert order_id is not None, sent.text
        assert "200 " in sent.text and "&quot;stored&quot;:1" in sent.text
        assert 'href="/demo/vendors"' in sent.text
        wait_for(lambda: any(order_id.group(1) in json.dumps(r)
                             for r in stack.received("goshops")), timeout=20)
        wait_for(lambda: any(order_id.group(1) in json.dumps(r)
                             for r in stack.received("retailrocket")), timeout=20)
        conn = sqlite3.connect(tmp_path / "spool.db")
        try:
            visitors = dict(conn.execute(
                "SELECT message_id, visitor_id FROM messages WHERE message_id IN (?, ?)",
                ("add-1", f"shopify:order:{order_id.group(1)}")).fetchall())
        finally:
            conn.close()
        assert len(visitors) == 2 and len(set(visitors.values())) == 1
        # Paid: the next cart is a new one.
        assert shopper.post("/cart/add", json={"product_id": 105}).json()["cart_id"] != (
            cart["cart_id"])
