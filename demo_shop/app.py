"""A small server-rendered shop that sends every canonical event through the real tracker.

It exists so a person can click through a shop and watch what each vendor receives
(`/demo/vendors`), and so browser tests have a realistic page to drive. The relay is mounted
under the same origin as the last route: `/s.js` and `/v1/*` are first-party, exactly the
deployment the contract recommends (first-party cookie, no CORS).

Page-level events are pushed onto the `shoprelay` queue (`shoprelay.push([...])`) rather than
called directly: the tracker loads `async`, so it is usually not there yet when the page's own
scripts run, and it replays the queue in order once it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message

from demo_shop.catalog import CATEGORIES, CURRENCY, PRODUCTS, RECOMMENDED, Product, products_in
from demo_shop.catalog import search as search_catalog
from demo_shop.lab import ROUTES as LAB_ROUTES

#: The shop's own session cookie; deliberately not the relay's `sc`, which the shop never reads.
SESSION_COOKIE = "shop_session"
#: The recommendation block's list id; the relay maps events carrying it to recommendation calls.
HOME_RECS = "home-recs"
#: Who serves that block (CONTRACT §2 `recommendation_vendor`): its id goes to that vendor
#: only; to the others the block's events are plain views, clicks and cart additions.
HOME_RECS_VENDOR = "retailrocket"
#: How many requests per vendor the vendors page shows (newest first).
VENDOR_ROWS = 50
#: How long a rendered `userHash` stays valid: the tracker sends the identify as the page
#: loads (or, offline, soon after); a copy lifted from the page is worthless after this.
USER_HASH_SECONDS = 3600


def user_hash(secret: str, user_id: str, now: float) -> str:
    """`context.userHash` as docs/identity.md tells a shop's backend to render it: the expiry
    (unix seconds) and the HMAC-SHA256 of `<user id>.<expiry>` under `identify_secret`."""
    expires = int(now) + USER_HASH_SECONDS
    digest = hmac.new(secret.encode(), f"{user_id}.{expires}".encode(),
                      hashlib.sha256).hexdigest()
    return f"{expires}.{digest}"


def shopify_signature(secret: str, raw: bytes) -> str:
    """`X-Shopify-Hmac-Sha256` as Shopify computes it: base64 of HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


def shopify_order(order_id: int, lines: list[tuple[Product, int]], *, cart_token: str,
                  email: str | None, customer_id: str | None) -> dict[str, Any]:
    """A Shopify `orders/paid` body (the REST Admin API order, the fields the relay reads)
    for the demo cart, as Shopify would post it after the shopper paid."""
    subtotal = round(sum(p.price * q for p, q in lines), 2)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    order: dict[str, Any] = {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": f"#{order_id % 100000}", "order_number": order_id % 100000,
        "email": email, "currency": CURRENCY, "financial_status": "paid", "test": False,
        "created_at": now, "processed_at": now, "cart_token": cart_token,
        "checkout_token": secrets.token_hex(16), "subtotal_price": f"{subtotal:.2f}",
        "total_price": f"{subtotal:.2f}", "total_tax": "0.00", "total_discounts": "0.00",
        "line_items": [{"id": order_id * 10 + i, "product_id": p.id,
                        "variant_id": p.variant_ids[0] if p.variant_ids else p.id,
                        "sku": p.sku, "title": p.name, "price": f"{p.price:.2f}",
                        "quantity": q} for i, (p, q) in enumerate(lines)],
    }
    if customer_id:
        order["customer"] = {"id": customer_id, "email": email}
    return order


def new_cart_id() -> str:
    return "cart_" + secrets.token_hex(6)


@dataclass(slots=True)
class Session:
    id: str
    cart_id: str = field(default_factory=lambda: new_cart_id())
    #: product id -> quantity, in the order lines were first added
    lines: dict[int, int] = field(default_factory=dict)
    email: str | None = None
    name: str | None = None
    user_id: str | None = None
    #: set by a login; the next rendered page sends `identify` once and clears it
    identify_pending: bool = False

    @property
    def count(self) -> int:
        return sum(self.lines.values())

    def cart(self) -> list[tuple[Product, int]]:
        return [(PRODUCTS[pid], qty) for pid, qty in self.lines.items()]


@dataclass(slots=True)
class Order:
    id: str
    session_id: str
    lines: list[tuple[Product, int]]
    #: Order Completed is sent once per order, so a reload of the thank-you page is not a sale
    reported: bool = False

    @property
    def total(self) -> float:
        return round(sum(p.price * q for p, q in self.lines), 2)


@dataclass(slots=True)
class ShopState:
    write_key: str
    sandbox_url: str
    sandbox_transport: httpx.AsyncBaseTransport | None
    sessions: dict[str, Session] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    #: The site's `identify_secret` ("" = none): the login page's identify is then signed.
    identify_secret: str = ""
    #: The site's `shopify_webhook_secret` ("" = none) and name: the platform page signs a
    #: Shopify order webhook with it and posts it to the relay's /webhooks/shopify/<site>.
    shopify_webhook_secret: str = ""
    site: str = "demo"


@contextlib.asynccontextmanager
async def run_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Drive `app`'s ASGI lifespan (startup, then shutdown) around the `with` body.

    Starlette never sends lifespan events to a mounted app, and the relay opens its spool and
    starts delivery on startup, so the shop has to pass them on itself.
    """
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))

    async def step(kind: str) -> None:
        await inbox.put({"type": f"lifespan.{kind}"})
        answer = asyncio.ensure_future(outbox.get())
        await asyncio.wait({answer, task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            task.result()  # the app crashed (raises) or returned without a word: nothing to run
            return
        message = answer.result()
        if message["type"] == f"lifespan.{kind}.failed":
            # Starlette re-raises after reporting; collect that so it is not logged as lost.
            cause = None
            with contextlib.suppress(Exception):
                await task
            if task.done() and not task.cancelled():
                cause = task.exception()
            raise RuntimeError(f"relay {kind} failed: {message.get('message', '')}") from cause

    await step("startup")
    try:
        yield
    finally:
        if not task.done():
            await step("shutdown")
        await task


def user_id_for(email: str) -> str:
    """A stable user id from an email, as a shop's customer id would be."""
    return "u" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


def js(value: Any) -> str:
    """JSON safe to inline in a <script>: `</script>` or U+2028 in data must not end or break it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def money(value: float) -> str:
    return f"${value:,.2f}"


STYLE = """
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;color:#222;
background:#fafafa}
header{background:#1d3557;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center;
flex-wrap:wrap}header a{color:#fff;text-decoration:none}
header .brand{font-weight:700;font-size:1.1rem}
header form{margin-left:auto}main{max-width:60rem;margin:1rem auto;padding:0 1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr));gap:.8rem;padding:0;
list-style:none}.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7rem}
.card a{font-weight:600;color:#1d3557}.price{color:#2a7a2a;font-weight:600}
button{background:#e76f51;color:#fff;border:0;border-radius:4px;padding:.35rem .7rem;cursor:pointer}
button.secondary{background:#457b9d}table{border-collapse:collapse;width:100%;background:#fff}
td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
tr.refused td{background:#fde2e2;color:#9b1c1c}pre{margin:0;white-space:pre-wrap;font-size:12px;
max-height:14rem;overflow:auto}#flash{position:fixed;bottom:1rem;right:1rem;background:#264653;
color:#fff;padding:.5rem .8rem;border-radius:4px;display:none}.muted{color:#777}
"""

# Shared page behaviour: every button is wired by data attributes through one delegated listener,
# so pages stay plain HTML and the events are defined in one place.
CLIENT_JS = """
function shopFlash(t){var f=document.getElementById('flash');f.textContent=t;
f.style.display='block';
clearTimeout(shopFlash.t);shopFlash.t=setTimeout(function(){f.style.display='none'},1500)}
function shopPost(url,data){return fetch(url,{method:'POST',
headers:{'Content-Type':'application/json'},
body:JSON.stringify(data)}).then(function(r){if(!r.ok)throw new Error(r.status);return r.json()})}
function shopCount(n){document.getElementById('cart-count').textContent=n}
document.addEventListener('click',function(e){
  var el=e.target.closest('[data-add],[data-wish],[data-rate],[data-remove],a[data-click]');
  if(!el)return;
  var d=el.dataset;
  if(d.click){shopTrack('Product Clicked',{product_id:+d.click,list_id:d.list,
    recommendation_vendor:d.vendor});return}
  e.preventDefault();
  if(d.add){
    var qi=document.getElementById('qty'),
      q=d.qty==='input'&&qi?Math.max(1,parseInt(qi.value,10)||1):1;
    shopPost('/cart/add',{product_id:+d.add,quantity:q}).then(function(c){
      var p={product_id:c.line.product_id,price:c.line.price,quantity:q,currency:c.line.currency,
        cart_id:c.cart_id};
      if(d.list){p.list_id=d.list;p.recommendation_vendor=d.vendor}
      shopTrack('Product Added',p);shopCount(c.count);shopFlash('Added '+c.line.name+' to cart')});
  }else if(d.wish){
    shopTrack('Product Added to Wishlist',{product_id:+d.wish,price:parseFloat(d.price)});
    shopFlash('Saved to wishlist');
  }else if(d.rate){
    shopTrack('Product Reviewed',{product_id:+d.product,rating:+d.rate});
    shopFlash('Thanks for rating '+d.rate+'/5');
  }else if(d.remove){
    shopPost('/cart/remove',{product_id:+d.remove}).then(function(c){
      if(c.removed)shopTrack('Product Removed',{product_id:c.removed.product_id,
        price:c.removed.price,quantity:c.removed.quantity,currency:c.removed.currency,
        cart_id:c.cart_id});
      var row=document.getElementById('line-'+d.remove);if(row)row.remove();
      var t=document.getElementById('cart-total');if(t)t.textContent=c.total_text;
      shopCount(c.count);if(!c.count)location.reload();
    });
  }
});
"""


def layout(
    state: ShopState,
    session: Session,
    *,
    title: str,
    page_name: str,
    body: str,
    events: Iterable[tuple[str, dict[str, Any]]] = (),
) -> str:
    """One page of the shop: header, the tracker snippet, `body`, and `events` to track."""
    head_calls: list[Any] = []
    if session.identify_pending and session.user_id:
        # identify before page, so the page message already carries the user id
        traits = {"email": session.email, "name": session.name}
        call: list[Any] = ["identify", session.user_id, traits]
        if state.identify_secret:
            # The backend vouches for the login: the relay binds only a signed identify.
            call.append({"userHash": user_hash(state.identify_secret, session.user_id,
                                               time.time())})
        head_calls.append(call)
        session.identify_pending = False
    # Queued before the async tracker tag so it always finds it and names the page with it.
    head_calls.append(["page", page_name])
    pushes = "".join(f"shoprelay.push({js(c)});" for c in head_calls)
    tracks = "".join(f"shopTrack({js(name)},{js(props)});" for name, props in events)
    cats = "".join(
        f'<a href="/category/{c.id}" data-testid="nav-category-{c.id}">{escape(c.name)}</a>'
        for c in CATEGORIES.values()
    )
    who = (
        f'<span data-testid="logged-in">{escape(session.email)}</span>'
        if session.email
        else '<a href="/login" data-testid="nav-login">Log in</a>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)} · Demo Shop</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
<script>window.shoprelay=window.shoprelay||[];{pushes}
function shopTrack(e,p){{shoprelay.push(["track",e,p])}}</script>
<script async src="/s.js" data-key="{escape(state.write_key, quote=True)}"></script>
</head><body>
<header><a class="brand" href="/" data-testid="nav-home">Demo Shop</a>{cats}
<a href="/cart" data-testid="nav-cart">Cart (<span id="cart-count">{session.count}</span>)</a>
{who}<a href="/demo/vendors" data-testid="nav-vendors">What vendors received</a>
<form action="/search" method="get"><input name="q" placeholder="Search" aria-label="Search"
 data-testid="header-search"></form></header>
<main id="main">{body}</main>
<div id="flash" role="status"></div>
<script>{CLIENT_JS}</script>
<script>{tracks}</script>
</body></html>"""


def product_card(p: Product, *, list_id: str | None = None) -> str:
    list_attr = (f' data-list="{escape(list_id)}" data-vendor="{HOME_RECS_VENDOR}"'
                 if list_id else "")
    click = f' data-click="{p.id}"{list_attr}' if list_id else ""
    add_id = f"rec-add-{p.id}" if list_id else f"add-{p.id}"
    return (
        f'<li class="card" data-testid="product-card-{p.id}" data-product-id="{p.id}">'
        f'<a href="/product/{p.id}"{click} data-testid="product-link-{p.id}">{escape(p.name)}</a>'
        f'<div class="muted">{escape(p.category.path)}</div>'
        f'<div class="price">{money(p.price)}</div>'
        f'<button data-add="{p.id}"{list_attr} data-testid="{add_id}">Add</button></li>'
    )


def cards(products: Iterable[Product], *, list_id: str | None = None, testid: str) -> str:
    inner = "".join(product_card(p, list_id=list_id) for p in products)
    return f'<ul class="cards" data-testid="{testid}">{inner}</ul>'


def create_app(
    relay_app: ASGIApp,
    *,
    write_key: str,
    sandbox_url: str,
    sandbox_transport: httpx.AsyncBaseTransport | None = None,
    identify_secret: str = "",
    shopify_webhook_secret: str = "",
    site: str = "demo",
) -> Starlette:
    """The demo shop, with `relay_app` answering every path the shop does not (`/s.js`, `/v1/*`).

    `sandbox_transport` lets tests answer the vendors page's sandbox fetch in-process.
    """
    state = ShopState(write_key, sandbox_url.rstrip("/"), sandbox_transport,
                      identify_secret=identify_secret,
                      shopify_webhook_secret=shopify_webhook_secret, site=site)

    def session_of(request: Request) -> Session:
        sid = request.cookies.get(SESSION_COOKIE, "")
        session = state.sessions.get(sid)
        if session is None:
            session = Session(secrets.token_urlsafe(16))
            state.sessions[session.id] = session
        return session

    def with_cookie(response: Response, session: Session) -> Response:
        response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="lax", path="/")
        return response

    def page(session: Session, status: int = 200, **kwargs: Any) -> Response:
        return with_cookie(
            HTMLResponse(layout(state, session, **kwargs), status_code=status), session
        )

    def not_found(session: Session, what: str) -> Response:
        body = f"<h1>Not found</h1><p>{escape(what)}</p>"
        return page(session, 404, title="Not found", page_name="Not Found", body=body)

    async def home(request: Request) -> Response:
        session = session_of(request)
        recs = [PRODUCTS[i] for i in RECOMMENDED]
        cat_links = "".join(
            f'<li class="card"><a href="/category/{c.id}" data-testid="category-link-{c.id}">'
            f'{escape(c.name)}</a><div class="muted">{escape(c.path)}</div></li>'
            for c in CATEGORIES.values()
        )
        body = f"""<h1>Welcome</h1>
<form action="/search" method="get" data-testid="search-form">
<input name="q" data-testid="search-input"
 placeholder="Search products"> <button data-testid="search-submit">Search</button></form>
<h2>Categories</h2><ul class="cards" data-testid="categories">{cat_links}</ul>
<section id="recs" data-list-id="{HOME_RECS}"><h2>Recommended for you</h2>
{cards(recs, list_id=HOME_RECS, testid="home-recs")}</section>"""
        products = [p.summary(position=i) for i, p in enumerate(recs, 1)]
        events = [("Product List Viewed", {"list_id": HOME_RECS,
                                           "recommendation_vendor": HOME_RECS_VENDOR,
                                           "products": products})]
        return page(session, title="Home", page_name="Home", body=body, events=events)

    async def category(request: Request) -> Response:
        session = session_of(request)
        cat = CATEGORIES.get(request.path_params["category_id"])
        if cat is None:
            return not_found(session, "No such category.")
        items = products_in(cat.id)
        body = (
            f'<h1 data-testid="category-title" data-category-id="{cat.id}">{escape(cat.name)}</h1>'
            f'<p class="muted">{escape(cat.path)}</p>{cards(items, testid="category-products")}'
        )
        props = {
            "category_id": cat.id,
            "category": cat.path,
            "products": [p.summary(position=i) for i, p in enumerate(items, 1)],
        }
        return page(
            session,
            title=cat.name,
            page_name="Category",
            body=body,
            events=[("Product List Viewed", props)],
        )

    async def product(request: Request) -> Response:
        session = session_of(request)
        p = PRODUCTS.get(request.path_params["product_id"])
        if p is None:
            return not_found(session, "No such product.")
        rates = "".join(
            f'<button class="secondary" data-rate="{n}" data-product="{p.id}" '
            f'data-testid="rate-{n}">{n}★</button> '
            for n in range(1, 6)
        )
        variants = (
            f'<p class="muted" data-testid="variants">Sizes: variant ids '
            f"{', '.join(str(v) for v in p.variant_ids)}</p>"
            if p.group_id is not None
            else ""
        )
        body = f"""<article data-testid="product" data-product-id="{p.id}">
<h1 data-testid="product-name">{escape(p.name)}</h1>
<p class="muted"><a href="/category/{p.category.id}">{escape(p.category.path)}</a>
 · SKU {escape(p.sku)}</p>
<p class="price" data-testid="product-price">{money(p.price)}</p>
<p>{escape(p.description)}</p>{variants}
<p><label>Quantity <input id="qty" type="number" min="1" value="1" style="width:4rem"
 data-testid="quantity"></label>
<button data-add="{p.id}" data-qty="input" data-testid="add-to-cart">Add to cart</button>
<button class="secondary" data-wish="{p.id}" data-price="{p.price}"
 data-testid="add-to-wishlist">Add to wishlist</button></p>
<p>Rate it: {rates}</p></article>"""
        props: dict[str, Any] = {
            "product_id": p.id,
            "sku": p.sku,
            "name": p.name,
            "price": p.price,
            "currency": CURRENCY,
            "category": p.category.path,
            "in_stock": True,
        }
        if p.group_id is not None:
            props["group_id"] = p.group_id
            props["variant_ids"] = list(p.variant_ids)
        return page(
            session,
            title=p.name,
            page_name="Product",
            body=body,
            events=[("Product Viewed", props)],
        )

    async def search(request: Request) -> Response:
        session = session_of(request)
        query = request.query_params.get("q", "").strip()
        found = search_catalog(query)
        if not query:
            result = '<p class="muted">Type something to search.</p>'
        elif not found:
            result = f'<p data-testid="no-results">Nothing found for “{escape(query)}”.</p>'
        else:
            result = cards(found, testid="search-results")
        body = f"""<h1>Search</h1>
<form action="/search" method="get"><input name="q" value="{escape(query, quote=True)}"
 data-testid="search-input"> <button data-testid="search-submit">Search</button></form>
<p data-testid="result-count">{len(found)} result(s)</p>{result}"""
        events = [("Products Searched", {"query": query, "results": len(found)})] if query else []
        return page(session, title="Search", page_name="Search", body=body, events=events)

    def cart_products(session: Session) -> list[dict[str, Any]]:
        return [p.summary() | {"quantity": q} for p, q in session.cart()]

    async def cart(request: Request) -> Response:
        session = session_of(request)
        lines = session.cart()
        if lines:
            rows = "".join(
                f'<tr id="line-{p.id}" data-testid="cart-line-{p.id}"><td>'
                f'<a href="/product/{p.id}">{escape(p.name)}</a></td><td>{q}</td>'
                f"<td>{money(p.price)}</td><td>{money(p.price * q)}</td>"
                f'<td><button data-remove="{p.id}" data-testid="remove-{p.id}">Remove</button>'
                f"</td></tr>"
                for p, q in lines
            )
            total = round(sum(p.price * q for p, q in lines), 2)
            body = f"""<h1>Your cart</h1>
<table data-testid="cart" data-cart-id="{escape(session.cart_id)}"><tr><th>Product</th><th>Qty</th>
<th>Price</th><th>Subtotal</th><th></th></tr>{rows}</table>
<p>Total: <strong id="cart-total" data-testid="cart-total">{money(total)}</strong></p>
<p><a href="/checkout" data-testid="go-checkout">Checkout →</a></p>"""
        else:
            body = '<h1>Your cart</h1><p data-testid="cart-empty">Your cart is empty.</p>'
        props = {"cart_id": session.cart_id, "products": cart_products(session)}
        return page(
            session, title="Cart", page_name="Cart", body=body, events=[("Cart Viewed", props)]
        )

    async def read_json(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def cart_answer(session: Session, **extra: Any) -> Response:
        total = round(sum(p.price * q for p, q in session.cart()), 2)
        data = {
            "cart_id": session.cart_id,
            "count": session.count,
            "total": total,
            "total_text": money(total),
        }
        return with_cookie(JSONResponse(data | extra), session)

    async def cart_add(request: Request) -> Response:
        session = session_of(request)
        data = await read_json(request)
        pid, qty = data.get("product_id"), data.get("quantity", 1)
        if not isinstance(pid, int) or pid not in PRODUCTS:
            return JSONResponse({"error": "unknown product"}, status_code=404)
        if not isinstance(qty, int) or not 1 <= qty <= 99:
            return JSONResponse({"error": "quantity must be 1..99"}, status_code=400)
        session.lines[pid] = session.lines.get(pid, 0) + qty
        return cart_answer(session, line=PRODUCTS[pid].summary() | {"quantity": qty})

    async def cart_remove(request: Request) -> Response:
        session = session_of(request)
        data = await read_json(request)
        pid = data.get("product_id")
        if not isinstance(pid, int):
            return cart_answer(session, removed=None)
        qty = session.lines.pop(pid, 0)
        removed = PRODUCTS[pid].summary() | {"quantity": qty} if qty else None
        return cart_answer(session, removed=removed)

    async def checkout(request: Request) -> Response:
        session = session_of(request)
        if request.method == "POST":
            if not session.lines:
                return with_cookie(RedirectResponse("/cart", status_code=303), session)
            order = Order("o" + secrets.token_hex(5), session.id, session.cart())
            state.orders[order.id] = order
            # A placed order starts a new cart, so vendors never see the old cart id refilled.
            session.lines = {}
            session.cart_id = new_cart_id()
            return with_cookie(RedirectResponse(f"/thanks/{order.id}", status_code=303), session)
        lines = session.cart()
        if not lines:
            body = '<h1>Checkout</h1><p data-testid="cart-empty">Your cart is empty.</p>'
        else:
            items = "".join(
                f"<li>{q} × {escape(p.name)} — {money(p.price * q)}</li>" for p, q in lines
            )
            total = round(sum(p.price * q for p, q in lines), 2)
            body = f"""<h1>Checkout</h1><ul>{items}</ul>
<p>Total: <strong>{money(total)}</strong></p>
<form method="post" action="/checkout" data-testid="checkout-form">
<p><label>Email <input name="email" type="email" value="{escape(session.email or "", quote=True)}">
</label></p><button data-testid="place-order">Place order</button></form>"""
        return page(session, title="Checkout", page_name="Checkout", body=body)

    async def thanks(request: Request) -> Response:
        session = session_of(request)
        order = state.orders.get(request.path_params["order_id"])
        if order is None or order.session_id != session.id:
            return not_found(session, "No such order.")
        events: list[tuple[str, dict[str, Any]]] = []
        if not order.reported:
            order.reported = True
            events.append(
                (
                    "Order Completed",
                    {
                        "order_id": order.id,
                        "total": order.total,
                        "revenue": order.total,
                        "currency": CURRENCY,
                        "products": [p.summary() | {"quantity": q} for p, q in order.lines],
                    },
                )
            )
        body = (
            f'<h1>Thank you!</h1><p>Order <strong data-testid="order-id">{escape(order.id)}'
            f"</strong>, total {money(order.total)}.</p>"
        )
        return page(
            session, title="Thank you", page_name="Order Confirmation", body=body, events=events
        )

    async def login(request: Request) -> Response:
        session = session_of(request)
        error = ""
        if request.method == "POST":
            # Parsed by hand: Starlette's form parser needs python-multipart, a dependency the
            # relay itself has no use for.
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            email = form.get("email", [""])[0].strip()
            if "@" in email and len(email) <= 254:
                session.email = email
                session.name = form.get("name", [""])[0].strip() or email.split("@")[0].title()
                session.user_id = user_id_for(email)
                session.identify_pending = True
                target = form.get("next", ["/"])[0]
                # only local paths, so the form cannot be used as an open redirect
                if not target.startswith("/") or target.startswith("//"):
                    target = "/"
                return with_cookie(RedirectResponse(target, status_code=303), session)
            error = '<p class="refused" data-testid="login-error">Enter an email address.</p>'
        body = f"""<h1>Log in</h1>{error}
<form method="post" action="/login" data-testid="login-form">
<p><label>Email <input name="email" type="email" required data-testid="login-email"></label></p>
<p><label>Name <input name="name" data-testid="login-name"></label></p>
<button data-testid="login-submit">Log in</button></form>"""
        return page(session, title="Log in", page_name="Login", body=body)

    async def platform(request: Request) -> Response:
        """The demo shop as a Shopify store: the order is reported by Shopify's `orders/paid`
        webhook, signed with the site's secret, not by the page (docs/platforms.md)."""
        session = session_of(request)
        if not state.shopify_webhook_secret:
            return not_found(session, "the demo site has no shopify_webhook_secret")
        lines = session.cart() or [(PRODUCTS[i], 1) for i in RECOMMENDED[:2]]
        result = ""
        if request.method == "POST":
            order = shopify_order(int(time.time() * 1000), lines, cart_token=session.cart_id,
                                  email=session.email, customer_id=session.user_id)
            raw = json.dumps(order).encode()
            url = f"{str(request.base_url).rstrip('/')}/webhooks/shopify/{quote(state.site)}"
            try:
                async with httpx.AsyncClient(timeout=10.0) as client:
                    answer = await client.post(url, content=raw, headers={
                        "Content-Type": "application/json", "X-Shopify-Topic": "orders/paid",
                        "X-Shopify-Hmac-Sha256": shopify_signature(
                            state.shopify_webhook_secret, raw),
                        "X-Shopify-Webhook-Id": secrets.token_hex(8),
                        "X-Shopify-Shop-Domain": "demo-shop.myshopify.com"})
                told = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as exc:
                told = f"{type(exc).__name__}: {exc}"
            if session.lines:
                # Paid: the shopper's next cart is a new one, as after the shop's checkout.
                session.lines = {}
                session.cart_id = new_cart_id()
            result = (f'<h2>Sent</h2><p>Order <strong data-testid="platform-order-id">'
                      f'{order["id"]}</strong>, the relay answered:</p>'
                      f'<pre data-testid="platform-answer">{escape(told)}</pre>'
                      '<p><a href="/demo/vendors" data-testid="platform-vendors">See it reach '
                      "the vendors →</a></p>")
        items = "".join(f"<li>{q} × {escape(p.name)} — {money(p.price * q)}</li>"
                        for p, q in lines)
        body = f"""<h1>The shop as a Shopify store</h1>
<p class="muted">A Shopify store reports its orders with no code of its own: Shopify posts
<code>orders/paid</code> to the relay's <code>/webhooks/shopify/{escape(state.site)}</code>,
signed with the site's <code>shopify_webhook_secret</code>. The button sends what Shopify
would for this cart; the order finds your visitor by the cart token your cart events
carried.</p><ul data-testid="platform-lines">{items}</ul>
<form method="post" action="/demo/platform"><button data-testid="platform-send">Send a paid
Shopify order webhook</button></form>{result}"""
        return page(session, title="Platform", page_name="Platform", body=body)

    async def fetch_vendor_requests() -> tuple[dict[str, list[dict[str, Any]]] | None, str]:
        try:
            async with httpx.AsyncClient(transport=state.sandbox_transport, timeout=3.0) as client:
                resp = await client.get(f"{state.sandbox_url}/_sandbox/requests")
                resp.raise_for_status()
                data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not isinstance(data, dict):
            return None, "unexpected answer from the sandbox"
        return {str(k): v for k, v in data.items() if isinstance(v, list)}, ""

    def vendor_tables(data: dict[str, list[dict[str, Any]]] | None, error: str) -> str:
        if data is None:
            return (
                f'<p class="refused" data-testid="sandbox-error">Sandbox unreachable at '
                f"{escape(state.sandbox_url)}: {escape(error)}</p>"
            )
        if not data:
            return '<p class="muted">No vendor sandboxes.</p>'
        sections = []
        for vendor, records in sorted(data.items()):
            rows = []
            for rec in list(reversed(records))[:VENDOR_ROWS]:
                if not isinstance(rec, dict):
                    continue
                refused = not rec.get("accepted", 200 <= int(rec.get("status") or 0) < 300)
                at = rec.get("at")
                when = (
                    time.strftime("%H:%M:%S", time.localtime(at))
                    if isinstance(at, int | float)
                    else ""
                )
                query = rec.get("query") or {}
                path = str(rec.get("path", ""))
                if isinstance(query, dict) and query:
                    path += "?" + urlencode(query)
                raw = rec.get("body")
                body = (
                    ""
                    if raw is None
                    else json.dumps(raw, indent=2, ensure_ascii=False, default=str)
                )
                status = str(rec.get("status", ""))
                if rec.get("error"):
                    status += f"<br>{escape(str(rec['error']))}"
                # The relay names the messages behind each request (the demo turns on
                # `vendor_message_id_header`): each links to its trace.
                headers = rec.get("headers") or {}
                ids = [i for i in str(headers.get("x-shoprelay-message-ids", "")).split(",") if i]
                links = "<br>".join(
                    f'<a href="/demo/trace/{escape(quote(i, safe=""))}" '
                    f'data-testid="message-link">{escape(i[:13])}</a>' for i in ids)
                rows.append(
                    f'<tr class="{"refused" if refused else "accepted"}"><td>{when}</td>'
                    f"<td>{escape(str(rec.get('method', '')))}</td><td>{escape(path)}</td>"
                    f"<td><pre>{escape(body)}</pre></td><td>{status}</td><td>{links}</td></tr>"
                )
            table = (
                "<table><tr><th>Time</th><th>Method</th><th>Path</th><th>Body</th>"
                f"<th>Status</th><th>Message</th></tr>{''.join(rows)}</table>"
                if rows
                else '<p class="muted">Nothing received yet.</p>'
            )
            sections.append(
                f'<section data-testid="vendor-{escape(vendor)}"><h2>{escape(vendor)} '
                f'<span class="muted">({len(records)})</span></h2>{table}</section>'
            )
        return "".join(sections)

    async def vendors(request: Request) -> Response:
        session = session_of(request)
        data, error = await fetch_vendor_requests()
        # Refreshes the tables only, not the page: a full reload every 2 s would itself
        # send a page message each time and flood what the page is there to show.
        body = f"""<h1>What vendors received</h1>
<p class="muted">Newest first, refreshed every 2 s. Refused requests are red. An order as a
Shopify store reports it: <a href="/demo/platform" data-testid="vendors-platform">the platform
page</a>.</p>
<div id="vendors" data-testid="vendors">{vendor_tables(data, error)}</div>
<script>setInterval(function(){{fetch('/demo/vendors/fragment').then(function(r){{return r.text()}})
.then(function(h){{document.getElementById('vendors').innerHTML=h}}).catch(function(){{}})}},2000)</script>"""
        return page(session, title="What vendors received", page_name="Vendors", body=body)

    async def trace_page(request: Request) -> Response:
        """What became of one message at every vendor (the relay's trace), for the links on
        the vendors page. The demo runs on 127.0.0.1 only, so it needs no admin token."""
        from shoprelay.operate.trace import find_traces
        from shoprelay.routing import route_reasons

        session = session_of(request)
        message_id = request.path_params["message_id"]
        relay_state = getattr(relay_app, "state", None)
        spool = getattr(relay_state, "spool", None)
        settings = getattr(relay_state, "settings", None)
        if spool is None or settings is None:
            return not_found(session, "this relay keeps no traces")
        found = await find_traces(settings, spool, route_reasons(settings),
                                  message_id=message_id)
        if not found:
            return not_found(session, f"message {message_id} is not in the spool")
        trace = found[0]
        rows = "".join(
            f'<tr data-testid="trace-{escape(vendor)}"><td>{escape(vendor)}</td>'
            f'<td>{escape(o["outcome"])}</td><td>{escape(str(o.get("status") or ""))}</td>'
            f'<td>{escape(o.get("reason") or "")}</td>'
            f'<td><pre>{escape(o.get("request") or "")}</pre></td></tr>'
            for vendor, o in trace["vendors"].items())
        message = json.dumps(trace.get("message"), indent=2, ensure_ascii=False)
        body = f"""<h1>Trace of {escape(message_id)}</h1>
<p class="muted">{escape(str(trace.get("event")))} at {escape(str(trace["received_at"]))},
visitor {escape(str(trace["visitor_id"]))}</p>
<table><tr><th>Vendor</th><th>Outcome</th><th>Status</th><th>Reason</th><th>Request</th></tr>
{rows}</table><h2>Message</h2><pre>{escape(message)}</pre>
<p><a href="/demo/vendors">Back to what vendors received</a></p>"""
        return page(session, title=f"Trace of {message_id}", page_name="Trace", body=body)

    async def vendors_fragment(request: Request) -> Response:
        data, error = await fetch_vendor_requests()
        return HTMLResponse(vendor_tables(data, error), headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", home),
        Route("/category/{category_id:int}", category),
        Route("/product/{product_id:int}", product),
        Route("/search", search),
        Route("/cart", cart),
        Route("/cart/add", cart_add, methods=["POST"]),
        Route("/cart/remove", cart_remove, methods=["POST"]),
        Route("/checkout", checkout, methods=["GET", "POST"]),
        Route("/thanks/{order_id}", thanks),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/demo/vendors", vendors),
        Route("/demo/platform", platform, methods=["GET", "POST"]),
        Route("/demo/vendors/fragment", vendors_fragment),
        Route("/demo/trace/{message_id}", trace_page),
        # Pages in the shapes other storefronts describe themselves in (auto-capture).
        *LAB_ROUTES,
        # Last, so the shop's own routes win and everything else (/s.js, /v1/*) is the relay.
        Mount("/", app=relay_app),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with run_lifespan(relay_app):
            yield

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.shop = state
    return app
