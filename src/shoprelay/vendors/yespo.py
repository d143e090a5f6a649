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

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from shoprelay import events as ev
from shoprelay.events import CartLine, StoredEvent, epoch_ms
from shoprelay.vendors.base import (
    MappingError,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    contact_value,
)


@dataclass(kw_only=True)
class YespoConfig(VendorConfig):
    #: The shop's site id, given by Yespo support (e.g. "8A412DC").
    site_id: str
    #: Ours, not Yespo's: the document names no limit, so stay polite per site id.
    rate_limit_per_second: int = 50


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


class Yespo(Vendor):
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

    def rate_limits(self, config: VendorConfig) -> list[RateLimit]:
        assert isinstance(config, YespoConfig)
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="site_id")]

    def requests_for(self, event: StoredEvent, config: VendorConfig) -> list[VendorRequest]:
        assert isinstance(config, YespoConfig)
        url = self.base_url(config)
        return [
            VendorRequest(method="POST", url=url,
                          headers={"Content-Type": "application/json"}, json=body)
            for body in self.bodies_for(event, config)
        ]

    def bodies_for(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        """The request bodies for one event, in the order they must reach Yespo."""
        props = event.properties
        name = event.name
        if name == ev.PRODUCT_UPDATED:
            return self._product_update(event, config)

        if name == ev.PRODUCT_LIST_VIEWED:
            if props.get("list_id"):
                return self._impressions(event, config)
            category = props.get("category_id")
            if category is None or category == "":
                # The document's own example key "Babies" is a name: take the text when the
                # shop sends no feed id.
                category = props.get("category")
            if category is None or category == "":
                return []
            return [self._body("CategoryPage", event, config, {
                "Category": {"categoryKey": _key(category, "category_id")}})]
        if name == ev.PRODUCT_VIEWED:
            return [self._body("ProductPage", event, config,
                               {"Product": self._product(props, with_currency=True)})]
        if name == ev.PRODUCTS_SEARCHED:
            query = str(props.get("query") or "").strip()
            if not query:
                return []
            search: dict[str, Any] = {"search": query}
            if props.get("results") is not None:
                found = _decimal(props["results"], "results")
                search["isFound"] = 1 if found > 0 else 0
            return [self._body("SearchRequest", event, config, search)]
        if name in (ev.PRODUCT_ADDED, ev.PRODUCT_REMOVED, ev.CART_VIEWED):
            return [self._status_cart(event, config)]
        if name == ev.PRODUCT_ADDED_TO_WISHLIST:
            return [self._body("AddToWishlist", event, config,
                               {"Product": self._product(props, with_currency=True)})]
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
        info.update({k: str(v) for k, v in known.items() if v not in (None, "")})
        for key, kind in (("user_email", "email"), ("user_phone", "phone")):
            if key in info:
                info[key] = contact_value(info[key], config, kind)
        info["cookies"] = {"sc": enrichment.visitor_id}
        return info

    def _body(self, event_name: str, event: StoredEvent, config: YespoConfig,
              payload: dict[str, Any] | None, key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"GeneralInfo": self._general_info(event_name, event, config)}
        if payload is not None:
            body[key or event_name] = payload
        return body

    @staticmethod
    def _product(props: dict[str, Any], *, with_currency: bool) -> dict[str, Any]:
        product_id = props.get("product_id", props.get("sku"))
        if props.get("price") is None:
            raise MappingError("price is required by Yespo (Product.price)")
        price = price_text(props["price"], "price")
        currency = props.get("currency")
        if with_currency and isinstance(currency, str) and currency.strip():
            # "The price per item can be sent with the currency value": "754 USD".
            price = f"{price} {currency.strip().upper()}"
        product: dict[str, Any] = {"productKey": _key(product_id, "product_id"), "price": price}
        if props.get("in_stock") is not None:
            product["isInStock"] = _in_stock(props["in_stock"])
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
            product_id = line.get("product_id", line.get("sku"))
            shown.append({"product_id": _key(product_id, f"products[{i}].product_id"),
                          "container_type": block})
        if not shown:
            return []
        # The event is named ProductImpressions but the document's body key is singular.
        return [self._body("ProductImpressions", event, config, {"Products": shown},
                           key="ProductImpression")]

    def _status_cart(self, event: StoredEvent, config: YespoConfig) -> dict[str, Any]:
        enrichment = event.enrichment
        if enrichment.cart is None:
            raise MappingError(f"{event.name} carries no cart state (enrichment.cart): "
                               "Yespo's StatusCart needs the whole cart")
        guid = enrichment.cart_id or event.properties.get("cart_id")
        if not guid:
            raise MappingError("StatusCart needs a cart id (enrichment.cart_id) for its GUID")
        return self._body("StatusCart", event, config, {
            "GUID": str(guid),
            "Products": [self._cart_line(line, i) for i, line in enumerate(enrichment.cart)],
        })

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
        props = event.properties
        order_id = props.get("order_id")
        if order_id is None or order_id == "":
            raise MappingError("Order Completed needs order_id for Yespo's OrderNumber")
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Yespo's PurchasedItems")
        items = []
        for i, line in enumerate(lines):
            if not isinstance(line, dict):
                raise MappingError(f"products[{i}] must be an object")
            if line.get("price") is None:
                raise MappingError(f"products[{i}].price is required by Yespo (unit_price)")
            items.append({
                "product_id": _key(line.get("product_id", line.get("sku")),
                                   f"products[{i}].product_id"),
                "unit_price": price_text(line["price"], f"products[{i}].price"),
                "quantity": _quantity(line.get("quantity"), f"products[{i}].quantity"),
            })
        bodies = [self._body("PurchasedItems", event, config,
                             {"Products": items, "OrderNumber": _key(order_id, "order_id")})]
        if event.enrichment.cart is not None and (event.enrichment.cart_id
                                                  or event.properties.get("cart_id")):
            # Without a cart id the visitor never had a cart Yespo knows of: nothing to empty.
            # "If the cart is empty, then you need to send an empty cart event": the purchase
            # emptied it, and Yespo would otherwise remind the buyer of a cart they paid for.
            bodies.append(self._status_cart(event, config))
        return bodies

    def _customer_data(self, event: StoredEvent, config: YespoConfig) -> list[dict[str, Any]]:
        if not event.enrichment.new_binding:
            return []
        body = self._body("CustomerData", event, config, None)
        if "externalCustomerId" not in body["GeneralInfo"]:
            raise MappingError("identify bound a user but carries no userId for Yespo's "
                               "externalCustomerId")
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
