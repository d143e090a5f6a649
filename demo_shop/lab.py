"""Lab pages: the shapes a real storefront describes itself in, for the tracker's auto-capture.

The demo shop's own pages call the tracker explicitly. These pages instead carry what other shops
already have and let the tracker find it with no code: a GA4 `dataLayer` (`/lab/datalayer`),
schema.org JSON-LD (`/lab/jsonld`, `/lab/jsonld-group`), `data-sr-*` attributes (`/lab/attrs`),
a single-page app (`/lab/spa`), the README's queue stub (`/lab/stub`), a strict Content Security
Policy (`/lab/csp`), and a bare page for API calls (`/lab/api`).

Query parameters become attributes of the tracker tag, so a test can say
`/lab/api?consent=required` or `/lab/datalayer?auto=jsonld`. Product data comes from the demo
catalog, so vendors see the same ids as on the shop's own pages.
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from demo_shop.catalog import CURRENCY, PRODUCTS, RECOMMENDED, Product

#: Tag attributes a lab page takes from its query string.
TAG_PARAMS = ("consent", "auto", "api")

# The README's stub: calls made before s.js has loaded are queued and replayed in order.
STUB = (
    "!function(w){var s=w.shoprelay=w.shoprelay||[];"
    '["page","track","identify","reset","consent","flush"].forEach(function(m){'
    "s[m]=s[m]||function(){s.push([m].concat([].slice.call(arguments)))}})}(window);"
)


def ga_item(p: Product, **extra: Any) -> dict[str, Any]:
    """A product as a GA4 `items[]` entry."""
    top, _, leaf = p.category.path.partition(" > ")
    return {"item_id": str(p.id), "item_name": p.name, "price": p.price,
            "item_category": top, "item_category2": leaf, **extra}


def json_for_script(value: Any) -> str:
    from demo_shop.app import js

    return js(value)


def lab_page(request: Request, *, title: str, head: str = "", body: str = "",
             tracker: bool = True) -> str:
    attrs = "".join(f' data-{name}="{escape(request.query_params[name], quote=True)}"'
                    for name in TAG_PARAMS if name in request.query_params)
    write_key = request.app.state.shop.write_key
    tag = (f'<script async src="/s.js" data-key="{escape(write_key, quote=True)}"{attrs}>'
           "</script>") if tracker else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · Lab</title>
<link rel="icon" href="data:,">
{head}
{tag}
</head><body><h1>{escape(title)}</h1>
{body}
</body></html>"""


def datalayer_head() -> str:
    p101, p103, p105 = PRODUCTS[101], PRODUCTS[103], PRODUCTS[105]
    view_item = {"event": "view_item", "ecommerce": {
        "currency": CURRENCY, "value": p101.price, "items": [ga_item(p101, quantity=1)]}}
    # recommendation_vendor is the shop's own field beside GA4's: who served the block.
    recs = {"item_list_id": "home-recs", "item_list_name": "Recommended for you",
            "recommendation_vendor": "retailrocket",
            "items": [ga_item(PRODUCTS[i], index=n) for n, i in enumerate(RECOMMENDED, 1)]}
    # The same product in JSON-LD: the dataLayer already reported it, so no second view.
    ld = {"@context": "https://schema.org", "@type": "Product", "productID": str(p101.id),
          "name": p101.name, "offers": {"@type": "Offer", "price": str(p101.price),
                                        "priceCurrency": CURRENCY}}
    return f"""<script>
window.dataLayer = window.dataLayer || [];
function gtag() {{ dataLayer.push(arguments); }}
dataLayer.push({{ecommerce: null}});
dataLayer.push({json_for_script(view_item)});
gtag("event", "view_item_list", {json_for_script(recs)});
</script>
<script type="application/ld+json">{json_for_script(ld)}</script>
<script>
window.labActions = {{
  select: function () {{ gtag("event", "select_item", {json_for_script(
        {"item_list_id": "home-recs", "recommendation_vendor": "retailrocket",
         "items": [ga_item(p103)]})}); }},
  add: function () {{ dataLayer.push({{ecommerce: null}}); dataLayer.push({json_for_script(
        {"event": "add_to_cart", "ecommerce": {"currency": CURRENCY, "value": p101.price * 2,
                                                 "items": [ga_item(p101, quantity=2)]}})}); }},
  addFromRecs: function () {{ dataLayer.push({json_for_script(
        {"event": "add_to_cart", "ecommerce": {"currency": CURRENCY, "value": p105.price,
         "items": [ga_item(p105, quantity=1, item_list_id="home-recs",
                           item_recommendation_vendor="retailrocket")]}})}); }},
  wish: function () {{ dataLayer.push({json_for_script(
        {"event": "add_to_wishlist", "ecommerce": {"currency": CURRENCY,
                                                     "items": [ga_item(p101)]}})}); }},
  search: function () {{ dataLayer.push({{event: "search", search_term: "boot"}}); }},
  login: function () {{ dataLayer.push({{event: "login", method: "email", user_id: "u-dl"}}); }},
  buy: function () {{ dataLayer.push({json_for_script(
        {"event": "purchase", "ecommerce": {
            "transaction_id": "T-DL-1", "currency": CURRENCY, "value": p101.price * 2,
            "items": [ga_item(p101, quantity=2)]}})}); }}
}};
</script>"""


def jsonld_head(grouped: bool) -> str:
    if grouped:
        p = PRODUCTS[105]
        product: dict[str, Any] = {
            "@type": "ProductGroup", "productGroupID": str(p.group_id), "name": p.name,
            "category": p.category.path,
            "hasVariant": [{"@type": "Product", "productID": str(v), "name": f"{p.name} {s}",
                            "offers": {"@type": "Offer", "price": p.price,
                                       "priceCurrency": CURRENCY}}
                           for v, s in zip(p.variant_ids, "SML", strict=True)],
            "offers": {"@type": "AggregateOffer", "lowPrice": p.price, "highPrice": p.price,
                       "priceCurrency": CURRENCY},
        }
    else:
        p = PRODUCTS[103]
        product = {
            "@type": "Product", "productID": str(p.id), "sku": p.sku, "name": p.name,
            "category": p.category.path, "brand": {"@type": "Brand", "name": "Demo"},
            "offers": {"@type": "Offer", "price": f"{p.price:.2f}", "priceCurrency": CURRENCY,
                       "availability": "https://schema.org/InStock"},
        }
    graph = {"@context": "https://schema.org", "@graph": [
        {"@type": "BreadcrumbList", "itemListElement": []}, product]}
    return f'<script type="application/ld+json">{json_for_script(graph)}</script>'


def attrs_body() -> str:
    p = PRODUCTS[102]
    cards = "".join(
        f'<li data-sr-product="{q.id}" data-sr-name="{escape(q.name)}" data-sr-price="{q.price}"'
        f' data-sr-currency="{CURRENCY}"><a href="#" data-sr-click="Product Clicked"'
        f' data-testid="rec-{q.id}">{escape(q.name)}</a></li>'
        for q in (PRODUCTS[i] for i in RECOMMENDED)
    )
    return f"""<article data-sr-product="{p.id}" data-sr-sku="{p.sku}"
 data-sr-name="{escape(p.name)}" data-sr-price="{p.price}" data-sr-currency="{CURRENCY}"
 data-sr-category="{escape(p.category.path)}">
<button data-sr-click="Product Added" data-sr-quantity="1" data-testid="add">Add to cart</button>
<button data-sr-click="Product Added to Wishlist" data-testid="wish">Wishlist</button>
</article>
<div data-sr-event="Products Searched" data-sr-query="sneaker" data-sr-results="1"></div>
<ul data-sr-event="Product List Viewed" data-sr-list="home-recs"
 data-sr-recommendation-vendor="retailrocket">{cards}</ul>"""


SPA_HEAD = """<script>
window.dataLayer = window.dataLayer || [];
function labGo(path, productId) {
  history.pushState({}, "", path);
  document.title = "SPA " + path;
  if (productId) dataLayer.push({event: "view_item", ecommerce: {items: [{item_id: productId}]}});
}
</script>"""


async def lab(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "api":
        html = lab_page(request, title="API")
    elif name == "stub":
        calls = (
            f"<script>{STUB}\n"
            'shoprelay.identify("u-stub", {email: "stub@example.com"});\n'
            'shoprelay.page("Stub");\n'
            f'shoprelay.track("Product Viewed", {json_for_script(PRODUCTS[104].summary())});\n'
            'shoprelay.push(["track", "Product Added", '
            f'{json_for_script(PRODUCTS[104].summary() | {"quantity": 1})}]);\n'
            "</script>"
        )
        html = lab_page(request, title="Stub", head=calls)
    elif name == "datalayer":
        html = lab_page(request, title="dataLayer", head=datalayer_head())
    elif name in ("jsonld", "jsonld-group"):
        html = lab_page(request, title="JSON-LD", head=jsonld_head(name == "jsonld-group"))
    elif name == "attrs":
        html = lab_page(request, title="Data attributes", body=attrs_body())
    elif name == "spa":
        html = lab_page(request, title="SPA", head=SPA_HEAD)
    elif name == "plain":
        html = lab_page(request, title="Plain", tracker=False)
    elif name == "csp":
        html = lab_page(request, title="CSP", head='<script src="/lab/csp.js"></script>')
        # No inline script, no eval: only scripts from this origin run.
        return HTMLResponse(html, headers={"Content-Security-Policy": "script-src 'self'"})
    else:
        return HTMLResponse("no such lab page", status_code=404)
    return HTMLResponse(html)


async def csp_js(request: Request) -> Response:
    body = (STUB + "\nshoprelay.track('Product Viewed', "
            + json_for_script(PRODUCTS[106].summary()) + ");\n")
    return Response(body, media_type="application/javascript")


async def spa_route(request: Request) -> Response:
    # A deep link into the single-page app serves the same shell.
    return HTMLResponse(lab_page(request, title="SPA", head=SPA_HEAD))


ROUTES = [
    Route("/lab/csp.js", csp_js),
    Route("/lab/spa/{rest:path}", spa_route),
    Route("/lab/{name}", lab),
]
