"""The Shopify custom pixel (static/shopify-pixel.js) in real Chromium, run as Shopify runs it:
inside an `<iframe sandbox="allow-scripts">` (origin "null") that offers the documented
`analytics.subscribe`, `browser` and `init`, where `browser.cookie` / `browser.localStorage`
are asynchronous and execute in the top frame (the host page answers them by postMessage, as
Shopify's do: "Provides access to specific browser methods that asynchronously execute in the
top frame"). The events replayed are built from the shapes of Shopify's standard events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from browser import chromium
from playwright.sync_api import Browser, Page
from relay_fixtures import WRITE_KEY, Stack, relay_stack, routed_db
from servers import serve, wait_for
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

pytestmark = pytest.mark.browser

DESKTOP_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
SERVER_KEY = "sk_pixel_test_server_key"

# The host page: Shopify's top frame. It answers the sandbox's browser.cookie / localStorage
# calls on its own document (so the cookie is first-party on the shop's host) and makes one
# sandboxed frame per "page load".
HOST_PAGE = """<!doctype html><html><head><title>shop</title></head><body><script>
addEventListener("message", (e) => {
  const d = e.data;
  if (!d || !d.shim) return;
  let result = null;
  if (d.op === "cookie.get") {
    const hit = document.cookie.split("; ").find((c) => c.startsWith(d.args[0] + "="));
    result = hit ? decodeURIComponent(hit.slice(d.args[0].length + 1)) : "";
  } else if (d.op === "cookie.set") {
    document.cookie = d.args[1] === undefined ? d.args[0] : d.args[0] + "=" + d.args[1];
    result = document.cookie;
  } else if (d.op === "localStorage.getItem") {
    result = localStorage.getItem(d.args[0]);
  } else if (d.op === "localStorage.setItem") {
    localStorage.setItem(d.args[0], d.args[1]);
  } else if (d.op === "localStorage.removeItem") {
    localStorage.removeItem(d.args[0]);
  }
  e.source.postMessage({shimReply: true, id: d.id, result: result}, "*");
});
window.loadPixel = (pixel, init, events) => {
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-scripts");
  frame.srcdoc = "<script>" + SHIM.replace("__INIT__", JSON.stringify(init)) + "<\\/script>"
    + "<script>" + pixel + "<\\/script>"
    + "<script>replay(" + JSON.stringify(events) + ");<\\/script>";
  document.body.appendChild(frame);
};
const SHIM = `
let seq = 0;
const waiting = new Map();
function call(op, args) {
  return new Promise((resolve) => {
    const id = ++seq;
    waiting.set(id, resolve);
    parent.postMessage({shim: true, id: id, op: op, args: args}, "*");
  });
}
addEventListener("message", (e) => {
  const d = e.data;
  if (d && d.shimReply && waiting.has(d.id)) { waiting.get(d.id)(d.result); waiting.delete(d.id); }
});
const storage = (area) => ({
  getItem: (key) => call(area + ".getItem", [key]),
  setItem: (key, value) => call(area + ".setItem", [key, value]),
  removeItem: (key) => call(area + ".removeItem", [key]),
});
const browser = {
  cookie: { get: (name) => call("cookie.get", [name]),
            set: (a, b) => call("cookie.set", [a, b]) },
  localStorage: storage("localStorage"),
  sessionStorage: storage("sessionStorage"),
};
const subscribers = {};
const subscribe = (name, callback) => {
  (subscribers[name] = subscribers[name] || []).push(callback);
};
const analytics = { subscribe: subscribe };
const customerPrivacy = { subscribe: subscribe };  // its one event: visitorConsentCollected
const init = __INIT__;
function replay(events) {
  for (const event of events) for (const cb of subscribers[event.name] || []) cb(event);
}
`;
</script></body></html>"""


# ---- Shopify's objects, in the shapes of its standard events -----------------------------

def variant(number: int, product: int, title: str, price: float, sku: str) -> dict[str, Any]:
    return {"id": f"gid://shopify/ProductVariant/{number}", "sku": sku, "title": "Blue / M",
            "untranslatedTitle": "Blue / M", "image": {"src": "//cdn.example/x.jpg"},
            "price": {"amount": price, "currencyCode": "EUR"},
            "product": {"id": f"gid://shopify/Product/{product}", "title": title,
                        "untranslatedTitle": title, "vendor": "Acme", "type": "Shirts",
                        "url": f"/products/p{product}"}}


SHIRT = variant(4001, 101, "Linen shirt", 25.0, "LS-BLUE-M")
SCARF = variant(4002, 102, "Wool scarf", 18.5, "WS-RED")
CART_ID = "gid://shopify/Cart/c1-7a2b9f?key=3b1d"
CHECKOUT_TOKEN = "5f8e1c0d2a4b6c8e"
ORDER_GID = "gid://shopify/OrderIdentity/5551234567"


def context(path: str, title: str) -> dict[str, Any]:
    href = f"https://shop.example{path}"
    return {"document": {"location": {"href": href, "pathname": path, "search": "",
                                      "host": "shop.example", "origin": "https://shop.example"},
                         "referrer": "https://www.google.com/", "title": title,
                         "characterSet": "UTF-8"},
            "navigator": {"userAgent": DESKTOP_UA, "language": "de-DE", "cookieEnabled": True},
            "window": {"innerWidth": 1280, "innerHeight": 800}}


def event(number: int, name: str, path: str, data: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    return {"id": f"sh-pixeltest-{number:04d}", "name": name, "type": "standard",
            "clientId": "ffac04fa-8ad8-48fd-8a3a-59ad06a7518a", "seq": number,
            "timestamp": f"2026-12-03T10:{number:02d}:00.000Z",
            "context": context(path, name), "data": data or {}}


def cart_line(item: dict[str, Any], quantity: int) -> dict[str, Any]:
    return {"merchandise": item, "quantity": quantity,
            "cost": {"totalAmount": {"amount": item["price"]["amount"] * quantity,
                                     "currencyCode": "EUR"}}}


def privacy(marketing: bool) -> dict[str, bool]:
    return {"analyticsProcessingAllowed": True, "marketingAllowed": marketing,
            "preferencesProcessingAllowed": True, "saleOfDataAllowed": marketing}


def init_data(customer: dict[str, Any] | None = None, marketing: bool = True
              ) -> dict[str, Any]:
    return {"context": context("/", "Home"), "customerPrivacy": privacy(marketing),
            "data": {"customer": customer,
                     "cart": {"id": CART_ID, "totalQuantity": 0, "lines": [],
                              "cost": {"totalAmount": {"amount": 0, "currencyCode": "EUR"}}},
                     "shop": {"name": "Shop", "myShopifyDomain": "shop.myshopify.com",
                              "storefrontUrl": "https://shop.example",
                              "paymentSettings": {"currencyCode": "EUR"}}}}


BROWSING = [
    event(1, "page_viewed", "/"),
    event(2, "collection_viewed", "/collections/shirts",
          {"collection": {"id": "gid://shopify/Collection/455", "title": "Shirts",
                          "productVariants": [SHIRT, SCARF]}}),
    event(3, "product_viewed", "/products/p101", {"productVariant": SHIRT}),
    event(4, "search_submitted", "/search",
          {"searchResult": {"query": "shirt", "productVariants": [SHIRT]}}),
    event(5, "product_added_to_cart", "/products/p101", {"cartLine": cart_line(SHIRT, 2)}),
    event(6, "product_added_to_cart", "/products/p102", {"cartLine": cart_line(SCARF, 1)}),
    event(7, "product_removed_from_cart", "/cart", {"cartLine": cart_line(SCARF, 1)}),
    event(8, "cart_viewed", "/cart",
          {"cart": {"id": CART_ID, "totalQuantity": 2, "lines": [cart_line(SHIRT, 2)],
                    "cost": {"totalAmount": {"amount": 50.0, "currencyCode": "EUR"}}}}),
]


def checkout(order: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "token": CHECKOUT_TOKEN, "currencyCode": "EUR", "email": "ann@example.com",
        "totalPrice": {"amount": 57.9, "currencyCode": "EUR"},
        "subtotalPrice": {"amount": 50.0, "currencyCode": "EUR"},
        "totalTax": {"amount": 3.0, "currencyCode": "EUR"},
        "shippingLine": {"price": {"amount": 4.9, "currencyCode": "EUR"}},
        "discountApplications": [],
        "lineItems": [{"id": "gid://shopify/CheckoutLineItem/1", "quantity": 2,
                       "title": "Linen shirt", "variant": SHIRT,
                       "finalLinePrice": {"amount": 50.0, "currencyCode": "EUR"}}]}
    if order:
        out["order"] = {"id": ORDER_GID}
    return out


CHECKOUT = [
    event(9, "checkout_started", "/checkouts/cn/abc", {"checkout": checkout(False)}),
    event(10, "checkout_completed", "/checkouts/cn/abc/thank-you",
          {"checkout": checkout(True)}),
]
CUSTOMER = {"id": "gid://shopify/Customer/777", "email": "ann@example.com",
            "firstName": "Ann", "lastName": "Lee", "phone": None, "ordersCount": 0}


# ---- fixtures --------------------------------------------------------------------------------

def allow_sandboxed_frames(table: dict[str, Any]) -> None:
    site = table["sites"]["demo"]
    site["allowed_origins"].append("null")
    site["server_key"] = SERVER_KEY


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with relay_stack(tmp_path, adjust=allow_sandboxed_frames) as running:
        yield running


@pytest.fixture
def host_url() -> Iterator[str]:
    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse(HOST_PAGE)

    with serve(Starlette(routes=[Route("/", page)]), lifespan="off") as url:
        yield url


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium() as (_, browser):
        yield new_page(browser)


def new_page(browser: Browser) -> Page:
    return browser.new_context(user_agent=DESKTOP_UA).new_page()


def pixel_code(stack: Stack) -> str:
    response = httpx.get(f"{stack.relay_url}/shopify-pixel.js", params={"key": WRITE_KEY})
    assert response.status_code == 200, response.text
    return response.text


def load(page: Page, code: str, init: dict[str, Any], events: list[dict[str, Any]]) -> None:
    page.evaluate("([code, init, events]) => loadPixel(code, init, events)",
                  [code, init, events])


def stored(tmp_path: Path, count: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """messageId -> (visitor id, message) once `count` messages are stored and routed."""
    def rows() -> dict[str, tuple[str, dict[str, Any]]] | None:
        with routed_db(tmp_path / "spool.db") as conn:
            found = {mid: (visitor, orjson.loads(data)["message"]) for mid, visitor, data in
                     conn.execute("SELECT message_id, visitor_id, data FROM messages")}
        return found if len(found) >= count else None

    result: dict[str, tuple[str, dict[str, Any]]] = wait_for(rows, timeout=20)
    return result


# ---- tests -----------------------------------------------------------------------------------

def test_the_relay_serves_the_pixel_with_its_address_and_the_sites_key(stack: Stack) -> None:
    code = pixel_code(stack)
    assert f"const RELAY = {json.dumps(stack.relay_url)};" in code
    assert f"const WRITE_KEY = {json.dumps(WRITE_KEY)};" in code
    assert "__SHOPRELAY" not in code and "NOTE for the relay's operator" not in code
    response = httpx.get(f"{stack.relay_url}/shopify-pixel.js", params={"key": WRITE_KEY},
                         headers={"X-Forwarded-Host": "evil.example",
                                  "X-Forwarded-Proto": "https"})
    assert response.headers["content-type"].startswith("text/javascript")
    # No trusted proxy: forwarded headers do not choose where shoppers' events go.
    assert f"const RELAY = {json.dumps(stack.relay_url)};" in response.text
    unknown = httpx.get(f"{stack.relay_url}/shopify-pixel.js", params={"key": "pk_nope"})
    assert unknown.status_code == 404 and "write key" in unknown.text
    missing = httpx.get(f"{stack.relay_url}/shopify-pixel.js")
    assert missing.status_code == 400 and "?key=WRITE_KEY" in missing.text


def test_behind_a_trusted_proxy_the_pixel_names_the_public_address(tmp_path: Path) -> None:
    def behind_proxy(table: dict[str, Any]) -> None:
        allow_sandboxed_frames(table)
        table["relay"] |= {"trusted_proxies": ["127.0.0.1"], "path_prefix": "/sr"}

    with relay_stack(tmp_path, vendors=["goshops"], adjust=behind_proxy) as proxied:
        response = httpx.get(f"{proxied.relay_url}/sr/shopify-pixel.js",
                             params={"key": WRITE_KEY},
                             headers={"X-Forwarded-Host": "shop.example",
                                      "X-Forwarded-Proto": "https"})
        assert response.status_code == 200, response.text
        assert 'const RELAY = "https://shop.example/sr";' in response.text


def test_a_site_that_does_not_accept_sandboxed_frames_is_told_in_the_pixel(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["goshops"]) as plain:
        code = pixel_code(plain)
        assert code.startswith("// NOTE for the relay's operator")
        assert '"null"' in code.splitlines()[0]
        # And the relay does refuse the sandbox's origin for that site.
        answer = httpx.post(f"{plain.relay_url}/v1/batch", headers={"Origin": "null"},
                            content=orjson.dumps({"writeKey": WRITE_KEY,
                                                  "batch": [{"type": "page"}]}))
        assert answer.status_code == 403


def test_shopify_standard_events_become_the_canonical_events(
        stack: Stack, host_url: str, page: Page, tmp_path: Path) -> None:
    page.goto(host_url)
    code = pixel_code(stack)
    load(page, code, init_data(), BROWSING)
    first = stored(tmp_path, len(BROWSING))
    # A second page load: a new sandboxed frame, a logged-in customer, the checkout.
    load(page, code, init_data(CUSTOMER), CHECKOUT)
    everything = stored(tmp_path, len(BROWSING) + len(CHECKOUT) + 1)  # + the identify

    def msg(number: int) -> dict[str, Any]:
        return everything[f"sh-pixeltest-{number:04d}"][1]

    home = msg(1)
    assert (home["type"], home["name"]) == ("page", "Home")
    assert home["context"]["page"]["url"] == "https://shop.example/"
    assert home["timestamp"] == "2026-12-03T10:01:00.000Z"
    listed = msg(2)
    assert (listed["event"], listed["properties"]["category_id"],
            listed["properties"]["category"]) == ("Product List Viewed", "455", "Shirts")
    assert [p["product_id"] for p in listed["properties"]["products"]] == ["101", "102"]
    viewed = msg(3)
    assert viewed["event"] == "Product Viewed"
    assert {k: viewed["properties"][k] for k in
            ("product_id", "variant", "sku", "name", "price", "currency")} == {
        "product_id": "101", "variant": "4001", "sku": "LS-BLUE-M", "name": "Linen shirt",
        "price": 25.0, "currency": "EUR"}
    searched = msg(4)
    assert (searched["event"], searched["properties"]["query"],
            searched["properties"]["results"]) == ("Products Searched", "shirt", 1)
    added = msg(5)
    assert added["event"] == "Product Added"
    assert {k: added["properties"][k] for k in
            ("product_id", "price", "quantity", "currency", "cart_id")} == {
        "product_id": "101", "price": 25.0, "quantity": 2, "currency": "EUR",
        "cart_id": "c1-7a2b9f"}
    removed = msg(7)
    assert (removed["event"], removed["properties"]["product_id"]) == ("Product Removed", "102")
    cart = msg(8)
    assert (cart["event"], cart["properties"]["cart_id"]) == ("Cart Viewed", "c1-7a2b9f")
    assert [(p["product_id"], p["quantity"]) for p in cart["properties"]["products"]] == [
        ("101", 2)]
    started = msg(9)
    assert (started["event"], started["properties"]["checkout_id"]) == (
        "Checkout Started", CHECKOUT_TOKEN)
    order = msg(10)
    assert order["event"] == "Order Completed"
    props = order["properties"]
    assert (props["order_id"], props["checkout_id"], props["cart_id"]) == (
        "5551234567", CHECKOUT_TOKEN, "c1-7a2b9f")
    assert (props["total"], props["revenue"], props["currency"]) == (57.9, 50.0, "EUR")
    assert [(p["product_id"], p["price"], p["quantity"]) for p in props["products"]] == [
        ("101", 25.0, 2)]
    assert order["userId"] == "777" and "userId" not in home

    # One visitor across both frames: the same anonymousId (the top frame's first-party
    # cookie), hence the same relay visitor.
    cookie = {c["name"]: c["value"] for c in page.context.cookies(host_url)}["_shoprelay_aid"]
    assert {m.get("anonymousId") for _, m in everything.values()} == {cookie}
    assert len({visitor for visitor, _ in everything.values()}) == 1
    assert {visitor for visitor, _ in first.values()} == {
        visitor for visitor, _ in everything.values()}

    # The vendors got the mapped calls (CONTRACT §3).
    alana = wait_for(lambda: (names := alana_calls(stack)) and "purchase-complete" in names
                     and names, timeout=30)
    for name in ("home-page-view", "category-view", "detail-page-view", "search", "add-to-cart",
                 "shopping-cart-page-view", "purchase-complete"):
        assert name in alana, (name, alana)
    rr = wait_for(lambda: (paths := retailrocket_calls(stack)) and "order" in paths and paths,
                  timeout=30)
    for name in ("categoryView", "view", "search", "addToBasket", "order"):
        assert name in rr, (name, rr)
    purchase = [r for r in stack.received("retailrocket")
                if "order" in retailrocket_names(r)]
    assert "5551234567" in json.dumps(purchase)
    goshops = [r["body"]["data"]["event"] for r in stack.wait_received("goshops", 4)]
    assert sorted(goshops) == ["cart", "cart", "purchase", "view"]
    for vendor in ("goshops", "advisable", "alana", "retailrocket", "yespo"):
        assert stack.refused(vendor) == [], vendor


def test_the_order_webhooks_copy_of_a_pixel_order_is_dropped(
        stack: Stack, host_url: str, page: Page, tmp_path: Path) -> None:
    page.goto(host_url)
    load(page, pixel_code(stack), init_data(), CHECKOUT)
    stored(tmp_path, len(CHECKOUT))
    # The backend's copy (as the order webhook sends it: the same numeric order id).
    answer = httpx.post(f"{stack.relay_url}/v1/track", auth=(SERVER_KEY, ""), json={
        "type": "track", "event": "Order Completed", "messageId": "webhook-order-5551234567",
        "userId": "777",
        "properties": {"order_id": "5551234567", "total": 57.9, "currency": "EUR",
                       "products": [{"product_id": "101", "price": 25.0, "quantity": 2}]}})
    assert answer.status_code == 200, answer.text
    assert [d["reason"] for d in answer.json().get("dropped", [])][0].startswith("duplicate")


def test_a_failed_send_is_kept_and_sent_from_the_next_page(
        stack: Stack, host_url: str, page: Page, tmp_path: Path) -> None:
    page.goto(host_url)
    code = pixel_code(stack)
    page.context.set_offline(True)  # the shopper's connection drops: every send fails
    load(page, code, init_data(), BROWSING[:3])
    wait_for(lambda: page.evaluate("localStorage.getItem('_shoprelay_queue')"))
    kept = json.loads(page.evaluate("localStorage.getItem('_shoprelay_queue')"))
    assert [m["messageId"] for m in kept] == [e["id"] for e in BROWSING[:3]]
    with routed_db(tmp_path / "spool.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    page.context.set_offline(False)
    load(page, code, init_data(), BROWSING[3:4])
    everything = stored(tmp_path, 4)
    assert set(everything) == {e["id"] for e in BROWSING[:4]}
    wait_for(lambda: page.evaluate("localStorage.getItem('_shoprelay_queue')") == "[]")


def test_declined_marketing_is_stored_but_not_sent_until_the_shopper_agrees(
        stack: Stack, host_url: str, page: Page, tmp_path: Path) -> None:
    page.goto(host_url)
    consent_given = {"name": "visitorConsentCollected", "customerPrivacy": privacy(True)}
    # Declined on load; the product page view before the banner's answer, the cart after it.
    load(page, pixel_code(stack), init_data(marketing=False),
         [BROWSING[2], consent_given, BROWSING[4]])
    everything = stored(tmp_path, 2)
    viewed, added = everything[BROWSING[2]["id"]][1], everything[BROWSING[4]["id"]][1]
    assert viewed["context"]["consent"]["marketing"] is False
    assert added["context"]["consent"]["marketing"] is True
    # A visitor's events are delivered in order: once the addition arrived, the view was
    # decided, and it was not sent.
    calls = [r["path"] for r in stack.wait_received("advisable", 1)]
    assert calls == ["/advisable/v1/cart_additions"]


# ---- what the vendor sandboxes received --------------------------------------------------------

def alana_calls(stack: Stack) -> list[str]:
    return [e["eventType"] for r in stack.received("alana") for e in r["body"]["events"]]


def retailrocket_names(record: dict[str, Any]) -> list[str]:
    method = record["path"].rsplit("/", 1)[-1]
    body = record["body"]
    return [next(iter(e)) for e in body] if method == "visitorEvents" else [method]


def retailrocket_calls(stack: Stack) -> list[str]:
    return [n for r in stack.received("retailrocket") for n in retailrocket_names(r)]
