"""Yespo tracker REST API v2 (vendor-docs/yespo-tracker-rest.md).

Every event is one `POST {base}` (default `https://tracker.yespo.io/api/v2`) with a JSON object:
`GeneralInfo` (who and when: `siteId`, `datetime` in milliseconds, `cookies.sc` = the relay's
visitor id, and the bound user's `externalCustomerId` / `user_*` traits once known) plus one
object named after the event. No authorization: the site id is the only thing naming the shop,
so nothing here is secret.

Yespo keeps no cart of its own: `StatusCart` always carries the *whole* cart, which the ingest
layer keeps per visitor and hands over as `enrichment.cart` / `enrichment.cart_id`. A purchase
therefore also sends the emptied cart, or Yespo would mail an abandoned-cart reminder for goods
already bought.

Where the document contradicts itself, the adapter follows the parameter tables' types (prices
are strings everywhere, `quantity` an integer) and the examples' spelling (`isInStock`, the body
key `ProductImpression`); docs/vendors/yespo.md lists every such choice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from shoprelay import events as ev
from shoprelay.events import CartLine, StoredEvent, epoch_ms
from shoprelay.vendors.base import (
    MappingError,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    contact_value,
    owns_block,
    product_ref,
)

#: Keys a body carries from `bodies_for` to `requests_for` only.
_NOTES = "__notes__"
_SKIPPED = "__skipped__"
_REFUSED = "__refused__"


def _stated(props: dict[str, Any]) -> str | None:
    owner = props.get("recommendation_vendor")
    return str(owner).strip() or None if owner else None


SEARCH_POLICIES = ("not_found", "all")
#: The cookie Yespo's own script (eS.JS) writes: "the cookie we need is named 'sc'".
ES_JS_COOKIE = "sc"


def es_js_cookie(message: dict[str, Any], source: str) -> str | None:
    """eS.JS's `sc` value when the shop's backend passed it on as `context.sc` (a shop
    running eS.JS beside the relay: Yespo then wants eS.JS's id, so its own events and ours
    are one visitor); None otherwise, and the relay's visitor id is used. Only the server
    API's: from a browser's body the value is whatever the sender chose, and naming another
    visitor's eS.JS id would file these events under that visitor at Yespo."""
    if source != "server":
        return None
    context = message.get("context")
    value = context.get("sc") if isinstance(context, dict) else None
    if isinstance(value, str) and 0 < len(value.strip()) <= 128:
        return value.strip()
    return None
UNKNOWN_RESULTS = ("found", "not_found")


@dataclass(kw_only=True)
class YespoConfig(VendorConfig):
    #: The shop's site id, given by Yespo support (e.g. "8A412DC").
    site_id: str
    #: Ours, not Yespo's: the document names no limit, so stay polite per site id.
    rate_limit_per_second: int = 50
    #: Which searches become SearchRequest: "not_found" (the document: "Send it only if the
    #: search returned no results") or "all" (for shops that want search statistics).
    search_requests: str = "not_found"
    #: How a search without a (readable) `results` count is taken: "found" or "not_found".
    #: It decides whether it is sent under "not_found" and the `isFound` it carries.
    search_unknown_results: str = "found"


def _key(value: Any, field: str) -> str:
    """Product and category keys must match the feed's ids, which Yespo types as strings."""
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} is required for Yespo, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if isinstance(value, int | float | str) else ""
    if not text:
        raise MappingError(f"{field} must be a non-empty string or number for Yespo, "
                           f"got {value!r}")
    return text


def _decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} must be a number for Yespo, got {value!r}")
    try:
        number = Decimal(str(value).strip()) if isinstance(value, int | float | str) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise MappingError(f"{field} must be a number for Yespo, got {value!r}")
    return number


def price_text(value: Any, field: str) -> str:
    """The document's prices are strings ("754", "201.95", "341.80"): whole amounts bare,
    others with cents, so the same price always renders the same text."""
    number = _decimal(value, field)
    if number == number.to_integral_value():
        return str(int(number))
    if number == number.quantize(Decimal("0.01")):
        return f"{number:.2f}"
    return format(number.normalize(), "f")


def _quantity(value: Any, field: str) -> int:
    """Yespo types quantity as an integer; a fractional quantity cannot be expressed."""
    if value is None:
        return 1
    number = _decimal(value, field)
    if number != number.to_integral_value() or number < 0:
        raise MappingError(f"{field} must be a whole number for Yespo, got {value!r}")
    return int(number)


def _in_stock(value: Any) -> str:
    """The examples send "1"/"0" (the table says int, the examples and eS.JS send strings)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value in (0, 1, "0", "1"):
        return str(int(value))
    raise MappingError(f"in_stock must be true or false for Yespo, got {value!r}")


def cart_guid(cart_id: str, lines: list[dict[str, Any]], version: int = 0) -> str:
    """A GUID in the document's shape ("6F9619FF-8B86-D011-B42D-00CF4FC964FF") that names
    this cart with exactly this composition: a hash of the cart id, the count of changes the
    relay kept (so going back to an earlier composition is still a new GUID) and the lines."""
    digest = hashlib.sha256(orjson.dumps([cart_id, version, lines],
                                         option=orjson.OPT_SORT_KEYS))
    hexed = digest.hexdigest()[:32].upper()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


class Yespo(Vendor[YespoConfig]):
    name = "yespo"
    title = "Yespo"
    config_class = YespoConfig
    default_base_url = "https://tracker.yespo.io/api/v2"
    handles = frozenset(
        {
            ev.PRODUCT_LIST_VIEWED, ev.PRODUCT_VIEWED, ev.PRODUCTS_SEARCHED, ev.PRODUCT_ADDED,
            ev.PRODUCT_REMOVED, ev.CART_VIEWED, ev.PRODUCT_ADDED_TO_WISHLIST,
            ev.ORDER_COMPLETED, ev.IDENTIFY,
        }
    )
    #: The catalogue call too (server API only): see `_product_update`.
    handles = handles | {ev.PRODUCT_UPDATED}
    #: The tracker takes one event per request.
    max_batch = 1

    def rate_limits(self, config: YespoConfig) -> list[RateLimit]:
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="site_id")]

    def warnings(self, config: YespoConfig, *, cookie_name: str) -> list[str]:
        if cookie_name != ES_JS_COOKIE:
            return []
        return [f'relay.cookie_name is "{ES_JS_COOKIE}", the cookie Yespo\'s eS.JS writes on '
                "the same domain: if the site also runs eS.JS, the relay's HttpOnly cookie and "
                "eS.JS's overwrite each other and both lose the visitor. Set cookie_name to "
                'another name (e.g. "sr_vid"); see docs/vendors/yespo.md']

    def config_problems(self, config: YespoConfig) -> dict[str, str]:
        problems: dict[str, str] = {}
        if config.hash_pii:
            problems["hash_pii"] = (
                "Yespo mails the address it is given (\"Email should be sent at least in the "
                "personal account\", to send triggers for abandoned carts): a hash cannot be "
                "delivered to")
        if config.search_requests not in SEARCH_POLICIES:
            problems["search_requests"] = f"must be one of {', '.join(SEARCH_POLICIES)}"
        if config.search_unknown_results not in UNKNOWN_RESULTS:
            problems["search_unknown_results"] = f"must be one of {', '.join(UNKNOWN_RESULTS)}"
        return problems

    def requests_for(self, event: StoredEvent, config: YespoConfig) -> list[VendorRequest]:
        url = self.base_url(config)
        requests = []
        for body in self.bodies_for(event, config):
            if _SKIPPED in body:
                requests.append(VendorRequest.skipped(body[_SKIPPED]))
                continue
            if _REFUSED in body:
                requests.append(VendorRequest.refused(body[_REFUSED]))
                continue
            notes = body.pop(_NOTES, [])
            requests.append(VendorRequest(method="POST", url=url,
                                          headers={"Content-Type": "application/json"},
                                          json=body).noted(notes))
        return requests

    def bodies_for(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """The request bodies for one event, in the order they must reach Yespo."""
        props = event.properties
        name = event.name
        if name == ev.PRODUCT_UPDATED:
            return self._product_update(event, config)

        if name == ev.PRODUCT_LIST_VIEWED:
            if props.get("list_id"):
                # "You can get the container_type in response to a request for
                # recommendations": only Yespo's own blocks (CONTRACT §3).
                if not owns_block(self.name, _stated(props), config):
                    return []
                return self._impressions(event, config)
            category = props.get("category_id")
            if category is None or category == "":
                # categoryKey is the category's id in the feed, never its display text.
                if props.get("category") not in (None, ""):
                    return [{_SKIPPED: "CategoryPage not sent: no category_id (categoryKey is "
                                        "the feed's category id; the category name is not)"}]
                return []
            return [self._body("CategoryPage", event, config, {
                "Category": {"categoryKey": _key(category, "category_id")}})]
        if name == ev.PRODUCT_VIEWED:
            notes: list[str] = []
            return [self._body("ProductPage", event, config,
                               {"Product": self._product(props, with_currency=True,
                                                         notes=notes)}, notes=notes)]
        if name == ev.PRODUCTS_SEARCHED:
            return self._search(event, config)
        if name in (ev.PRODUCT_ADDED, ev.PRODUCT_REMOVED, ev.CART_VIEWED):
            return [self._status_cart(event, config)]
        if name == ev.PRODUCT_ADDED_TO_WISHLIST:
            notes = []
            return [self._body("AddToWishlist", event, config,
                               {"Product": self._product(props, with_currency=True,
                                                         notes=notes)}, notes=notes)]
        if name == ev.ORDER_COMPLETED:
            return self._purchase(event, config)
        if name == ev.IDENTIFY:
            return self._customer_data(event, config)
        return []

    def _general_info(self, event_name: str, event: StoredEvent,
                      config: YespoConfig) -> dict[str, Any]:
        enrichment = event.enrichment
        info: dict[str, Any] = {
            "eventName": event_name,
            "siteId": config.site_id,
            "datetime": epoch_ms(event.timestamp),
        }
        traits = event.traits if event.type == "identify" else {}
        # On the identify itself the ingest layer may not have folded the traits in yet.
        user_id = enrichment.user_id or (event.message.get("userId")
                                         if event.type == "identify" else None)
        known = {
            "externalCustomerId": user_id,
            "user_phone": enrichment.phone or traits.get("phone"),
            "user_email": enrichment.email or traits.get("email"),
            "user_name": enrichment.name or traits.get("name"),
        }
        if enrichment.claimed_identity:
            # An unsigned claim on a user the shop bound elsewhere: Yespo mails whatever
            # address it holds for the customer, so none from the claimant goes with the id.
            known["user_email"] = known["user_phone"] = None
        info.update({k: str(v) for k, v in known.items() if v not in (None, "")})
        for key, kind in (("user_email", "email"), ("user_phone", "phone")):
            if key in info:
                info[key] = contact_value(info[key], config, kind)
        info["cookies"] = {"sc": es_js_cookie(event.message, enrichment.source)
                           or enrichment.visitor_id}
        return info

    def _body(self, event_name: str, event: StoredEvent, config: YespoConfig,
              payload: dict[str, Any] | None, key: str | None = None,
              notes: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"GeneralInfo": self._general_info(event_name, event, config)}
        if payload is not None:
            body[key or event_name] = payload
        if notes:
            body[_NOTES] = notes
        return body

    def _search(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """ "Send it only if the search returned no results" (search_requests = "not_found",
        the default) or every search ("all"). `isFound`: "If the list is empty, it returns 0
        otherwise 1"; an unknown count is taken as `search_unknown_results` says."""
        props = event.properties
        query = str(props.get("query") or "").strip()
        if not query:
            return []
        notes: list[str] = []
        found: bool | None = None
        if props.get("results") is not None:
            try:
                found = _decimal(props["results"], "results") > 0
            except MappingError as exc:
                notes.append(f"results left out: {exc}")
        if found is None:
            found = config.search_unknown_results == "found"
        if found and config.search_requests == "not_found":
            return []
        return [self._body("SearchRequest", event, config,
                           {"search": query, "isFound": 1 if found else 0}, notes=notes)]

    @staticmethod
    def _product(props: dict[str, Any], *, with_currency: bool,
                 notes: list[str] | None = None) -> dict[str, Any]:
        product_id = product_ref(props)
        if props.get("price") is None:
            raise MappingError("price is required by Yespo (Product.price)")
        price = price_text(props["price"], "price")
        currency = props.get("currency")
        if with_currency and isinstance(currency, str) and currency.strip():
            # "The price per item can be sent with the currency value": "754 USD".
            price = f"{price} {currency.strip().upper()}"
        product: dict[str, Any] = {"productKey": _key(product_id, "product_id"), "price": price}
        if props.get("in_stock") is not None:
            try:
                product["isInStock"] = _in_stock(props["in_stock"])
            except MappingError as exc:  # optional: leave it out rather than lose the view
                if notes is None:
                    raise
                notes.append(f"isInStock left out: {exc}")
        return product

    def _impressions(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        products = event.properties.get("products")
        if products is None:
            return []
        if not isinstance(products, list):
            raise MappingError("products must be a list")
        block = str(event.properties["list_id"])
        shown = []
        for i, line in enumerate(products):
            if not isinstance(line, dict):
                raise MappingError(f"products[{i}] must be an object")
            product_id = product_ref(line)
            shown.append({"product_id": _key(product_id, f"products[{i}].product_id"),
                          "container_type": block})
        if not shown:
            return []
        # The event is named ProductImpressions but the document's body key is singular.
        return [self._body("ProductImpressions", event, config, {"Products": shown},
                           key="ProductImpression")]

    def _status_cart(self, event: StoredEvent, config: YespoConfig) -> dict[str, Any]:
        """ "An event is sent after the cart status (with a new GUID) is changed"; the GUID
        "displays the current composition of the shopping cart". So the GUID is derived from
        the visitor's cart id and what the cart holds: every change of composition gives a new
        one, the same cart gives the same one (a retry is byte-identical), and an empty cart
        still sends the empty event. A line that cannot be rendered is left out with its
        reason instead of freezing the visitor's cart at Yespo."""
        enrichment = event.enrichment
        later = enrichment.extra.get("cart_later")
        if enrichment.cart is None and later:
            # The relay kept this request's carts within bounds: a later event of the same
            # request sends the cart as it ended, so this state is superseded anyway.
            return {_SKIPPED: f"StatusCart not sent: message {later} of the same request sends "
                              "this visitor's cart as it ended (the request changed the cart "
                              "more often than the relay stores the whole cart for)"}
        if enrichment.cart is None and "cart_unchanged" in enrichment.extra:
            # Yespo: StatusCart "is sent after the cart status is changed".
            return {_SKIPPED: "StatusCart not sent: the event left the cart as it was "
                              f"(version {enrichment.extra['cart_unchanged']}), which Yespo "
                              "got with the event that changed it"}
        if enrichment.cart is None:
            raise MappingError(f"{event.name} carries no cart state (enrichment.cart): "
                               "Yespo's StatusCart needs the whole cart")
        cart_id = enrichment.cart_id or event.properties.get("cart_id")
        if not cart_id:
            raise MappingError("StatusCart needs a cart id (enrichment.cart_id) for its GUID")
        lines, notes = [], []
        for i, line in enumerate(enrichment.cart):
            try:
                lines.append(self._cart_line(line, i))
            except MappingError as exc:
                notes.append(f"cart line {line.product_id!r} left out: {exc}")
        return self._body("StatusCart", event, config, {
            "GUID": cart_guid(str(cart_id), lines, enrichment.cart_version),
            "Products": lines}, notes=notes)

    @staticmethod
    def _cart_line(line: CartLine, i: int) -> dict[str, Any]:
        where = f"cart[{i}]"
        if line.price is None:
            raise MappingError(f"{where}.price is required by Yespo's StatusCart "
                               f"(product {line.product_id!r} came without a price)")
        body: dict[str, Any] = {
            "productKey": _key(line.product_id, f"{where}.product_id"),
            "price": price_text(line.price, f"{where}.price"),
            "quantity": _quantity(line.quantity, f"{where}.quantity"),
        }
        if line.currency:
            body["price_currency_code"] = line.currency.upper()
        return body

    def _purchase(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """PurchasedItems, then the emptied cart. A line Yespo cannot take (no price: its
        `unit_price` is "Required"; no product id; a fractional quantity) is left out with its
        reason, like a bad cart line: the rest of the order still reaches Yespo, and so does
        the emptied cart. An order with no line left is refused alone (dead letter, with the
        reasons) and the cart is still emptied: otherwise the buyer gets an abandoned-cart
        mail for a cart they paid for."""
        props = event.properties
        order_id = props.get("order_id")
        if order_id is None or order_id == "":
            raise MappingError("Order Completed needs order_id for Yespo's OrderNumber")
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Yespo's PurchasedItems")
        items, notes = [], []
        for i, line in enumerate(lines):
            try:
                items.append(self._purchase_line(line, i))
            except MappingError as exc:
                notes.append(f"order line {i} left out: {exc}")
        if items:
            bodies = [self._body("PurchasedItems", event, config,
                                 {"Products": items, "OrderNumber": _key(order_id, "order_id")},
                                 notes=notes)]
        else:
            bodies = [{_REFUSED: "no line of the order can be sent to Yespo: "
                                 + "; ".join(notes)}]
        if event.enrichment.cart is not None and (event.enrichment.cart_id
                                                  or event.properties.get("cart_id")):
            # Without a cart id the visitor never had a cart Yespo knows of: nothing to empty.
            # "If the cart is empty, then you need to send an empty cart event": the purchase
            # emptied it, and Yespo would otherwise remind the buyer of a cart they paid for.
            bodies.append(self._status_cart(event, config))
        elif not items:
            # Nothing else to send: the whole event is refused, as before any line rule.
            raise MappingError(bodies[0][_REFUSED])
        return bodies

    @staticmethod
    def _purchase_line(line: Any, i: int) -> dict[str, Any]:
        where = f"products[{i}]"
        if not isinstance(line, dict):
            raise MappingError(f"{where} must be an object")
        if line.get("price") is None:
            raise MappingError(f"{where}.price is required by Yespo (unit_price)")
        return {
            "product_id": _key(product_ref(line), f"{where}.product_id"),
            "unit_price": price_text(line["price"], f"{where}.price"),
            "quantity": _quantity(line.get("quantity"), f"{where}.quantity"),
        }

    def _customer_data(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """ "Email should be sent at least in the personal account, on the page 'Thank you for
        the order' and during registration": a CustomerData on every identify that brought a
        user id, email or phone not yet sent for this visitor (`new_identity`; the older
        `new_binding` too), an email-only sign-up included (externalCustomerId is "Optional").
        The thank-you page's PurchasedItems carries the email in its GeneralInfo."""
        enrichment = event.enrichment
        if not (enrichment.new_identity or enrichment.new_binding) or enrichment.claimed_identity:
            return []
        body = self._body("CustomerData", event, config, None)
        info = body["GeneralInfo"]
        if not any(key in info for key in ("externalCustomerId", "user_email", "user_phone")):
            raise MappingError("identify carries no userId, email or phone for Yespo's "
                               "CustomerData (externalCustomerId / user_email / user_phone)")
        return [body]

    def _product_update(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """`Product Updated` (Segment's product properties) as Yespo's ProductUpdate: "an
        optional event that updates product data in Yespo in real-time, regardless of the
        scheduled feed update. Pass product properties that need constant updating — price,
        discount, availability, etc." Only the shop's backend speaks for its catalogue, so a
        browser copy (refused at ingest anyway) sends nothing."""
        if event.enrichment.source != "server":
            return []
        props = event.properties
        if props.get("in_stock") is None:
            # isInStock: "Required, can be 0 or 1".
            raise MappingError("Product Updated needs in_stock for Yespo's ProductUpdate "
                               "(isInStock is required)")
        line: dict[str, Any] = {
            "product_id": _key(props.get("product_id", props.get("sku")), "product_id"),
            "isInStock": _in_stock(props["in_stock"]),
        }
        if props.get("price") is not None:
            line["unit_price"] = price_text(props["price"], "price")
        currency = props.get("currency")
        if isinstance(currency, str) and currency.strip():
            line["price_currency_code"] = currency.strip().upper()
        for source, target in (("name", "name"), ("url", "url"), ("image_url", "imgurl"),
                               ("brand", "brand"), ("category", "category")):
            value = props.get(source)
            if isinstance(value, str) and value.strip():
                line[target] = value.strip()
        if props.get("category_id") not in (None, ""):
            line["category_id"] = [_key(props["category_id"], "category_id")]
        # The document's example GeneralInfo has eventName and siteId only: no visitor.
        return [{"GeneralInfo": {"eventName": "ProductUpdate", "siteId": config.site_id},
                 "ProductUpdate": [line]}]


VENDOR = Yespo()
