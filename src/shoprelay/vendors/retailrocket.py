"""Retail Rocket tracking API 1.0 (vendor-docs/retailrocket-tracking.md).

Every call is `POST {base}/1.0/{method}?apiKey=…&partnerId=…` with a JSON object body;
`productId`, `categoryId` and `groupId` are integers, `timestamp` is ISO-8601 with an offset and
`sessionExternalId` is the relay's visitor id (so it never changes on login). With
`visitor_events = true` the calls of one visitor are merged into `visitorEvents` batches.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from shoprelay import events as ev
from shoprelay.events import StoredEvent
from shoprelay.vendors.base import (
    MappingError,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    contact_value,
    with_query,
)

_ALNUM = re.compile(r"[^A-Za-z0-9]")
#: Methods the `visitorEvents` envelope can carry (setContact is not among them).
_BATCHABLE = frozenset(
    {
        "view", "groupView", "addToBasket", "order", "categoryView", "search",
        "recomBlockViewed", "recomTap", "recomAddToBasket",
        "impressionContentViewed", "impressionContentClicked",
    }
)


@dataclass(kw_only=True)
class RetailRocketConfig(VendorConfig):
    partner_id: str
    api_key: str
    #: Send the calls of a visitor as `visitorEvents` batches (opt-in).
    visitor_events: bool = False
    #: Documented default limit: 50 requests a second per shop (raised on request).
    rate_limit_per_second: int = 50
    #: Most events in one `visitorEvents` call.
    batch_size: int = 50

    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)


def contact_external_id(user_id: str) -> str:
    """Retail Rocket wants letters and digits only, at most 50: strip the rest, hash if needed."""
    cleaned = _ALNUM.sub("", user_id)
    if cleaned and len(cleaned) <= 50:
        return cleaned
    return hashlib.sha1(user_id.encode()).hexdigest()


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise MappingError(f"{field} must be an integer for Retail Rocket, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise MappingError(f"{field} must be an integer for Retail Rocket, got {value!r}")


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} must be a number for Retail Rocket, got {value!r}")
    if isinstance(value, int | float):
        return value
    try:
        number = float(str(value))
    except ValueError:
        raise MappingError(f"{field} must be a number for Retail Rocket, got {value!r}") from None
    return int(number) if number.is_integer() else number


class RetailRocket(Vendor):
    name = "retailrocket"
    title = "Retail Rocket"
    config_class = RetailRocketConfig
    default_base_url = "https://apptracking.retailrocket.net/1.0"
    handles = frozenset(
        {
            ev.PRODUCT_LIST_VIEWED, ev.PRODUCT_VIEWED, ev.PRODUCTS_SEARCHED, ev.PRODUCT_ADDED,
            ev.PRODUCT_CLICKED, ev.PROMOTION_VIEWED, ev.PROMOTION_CLICKED,
            ev.ORDER_COMPLETED, ev.IDENTIFY,
        }
    )
    max_batch = 50

    def rate_limits(self, config: VendorConfig) -> list[RateLimit]:
        assert isinstance(config, RetailRocketConfig)
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="partner_id")]

    def requests_for(self, event: StoredEvent, config: VendorConfig) -> list[VendorRequest]:
        assert isinstance(config, RetailRocketConfig)
        calls = self.calls_for(event, config)
        return [self._request(method, body, event, config) for method, body in calls]

    def calls_for(self, event: StoredEvent,
                  config: RetailRocketConfig) -> list[tuple[str, dict[str, Any]]]:
        """The (method, body) pairs for one event, before URLs and batching."""
        props = event.properties
        base = {"sessionExternalId": event.enrichment.visitor_id}
        stamp = {"timestamp": event.timestamp.isoformat(timespec="seconds")}
        stock = {"stockId": str(props["stock_id"])} if props.get("stock_id") else {}
        name = event.name

        if name == ev.PRODUCT_LIST_VIEWED:
            if props.get("list_id"):
                return [("recomBlockViewed", {**base, "recomBlockId": str(props["list_id"])[:50],
                                              **stamp})]
            if props.get("category_id") is not None:
                return [("categoryView", {**base, "categoryId": _int(props["category_id"],
                                                                     "category_id"), **stamp})]
            return []
        if name == ev.PRODUCT_VIEWED:
            if props.get("group_id") is not None and props.get("variant_ids"):
                ids = props["variant_ids"]
                if not isinstance(ids, list):
                    raise MappingError("variant_ids must be a list")
                return [("groupView", {**base, "groupId": _int(props["group_id"], "group_id"),
                                       "productIds": [_int(i, "variant_ids[]") for i in ids],
                                       **stock, **stamp})]
            return [("view", {**base, "productId": self._product(props), **stock, **stamp})]
        if name == ev.PRODUCTS_SEARCHED:
            query = str(props.get("query") or "").strip()
            return [("search", {**base, "searchPhrase": query, **stock, **stamp})] if query else []
        if name == ev.PRODUCT_ADDED:
            product = {"productId": self._product(props)}
            if props.get("list_id"):
                return [("recomAddToBasket", {**base, **product, **stock, **stamp,
                                              "recomBlockId": str(props["list_id"])[:50]})]
            return [("addToBasket", {**base, **product, **stock, **stamp})]
        if name == ev.PRODUCT_CLICKED:
            if not props.get("list_id"):
                return []
            return [("recomTap", {**base, "productId": self._product(props), **stock, **stamp,
                                  "recomBlockId": str(props["list_id"])[:50]})]
        if name in (ev.PROMOTION_VIEWED, ev.PROMOTION_CLICKED):
            promotion = props.get("promotion_id")
            if not promotion:
                return []
            method = ("impressionContentViewed" if name == ev.PROMOTION_VIEWED
                      else "impressionContentClicked")
            return [(method, {**base, "impressionContentId": str(promotion), **stamp})]
        if name == ev.ORDER_COMPLETED:
            return self._order(event, base, stamp)
        if name == ev.IDENTIFY:
            return self._set_contact(event, base, stamp, config)
        return []

    @staticmethod
    def _product(props: dict[str, Any]) -> int:
        return _int(props.get("product_id", props.get("sku")), "product_id")

    def _order(self, event: StoredEvent, base: dict, stamp: dict) -> list[tuple[str, dict]]:
        props = event.properties
        order_id = props.get("order_id")
        if not order_id:
            raise MappingError("Order Completed needs order_id for Retail Rocket's transaction")
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Retail Rocket's order calls")
        calls = []
        for line in lines:
            if not isinstance(line, dict):
                raise MappingError("products[] entries must be objects")
            body = {**base, "productId": self._product(line)}
            if line.get("stock_id"):
                body["stockId"] = str(line["stock_id"])
            body["price"] = _number(line.get("price"), "products[].price")
            body["quantity"] = _number(line.get("quantity", 1), "products[].quantity")
            body["transaction"] = str(order_id)
            calls.append(("order", {**body, **stamp}))
        return calls

    @staticmethod
    def _set_contact(event: StoredEvent, base: dict, stamp: dict,
                     config: RetailRocketConfig) -> list[tuple[str, dict]]:
        user_id = event.enrichment.user_id or event.message.get("userId")
        if not user_id or not event.enrichment.new_binding:
            return []
        body: dict[str, Any] = {**base, "contactExternalId": contact_external_id(str(user_id))}
        traits = event.traits
        if traits.get("email"):
            # The document types `email` as integer; it is an address, so it is sent as a string.
            body["email"] = contact_value(str(traits["email"]), config, "email")
        if traits.get("phone"):
            body["phone"] = contact_value(str(traits["phone"]), config, "phone")
        return [("setContact", {**body, **stamp})]

    def _request(
        self, method: str, body: dict[str, Any], event: StoredEvent, config: RetailRocketConfig
    ) -> VendorRequest:
        batch_key = None
        if config.visitor_events and method in _BATCHABLE:
            # One batch at a time per visitor, in order (the document's rule for visitorEvents).
            batch_key = f"visitorEvents:{event.enrichment.visitor_id}"
        return VendorRequest(
            method="POST",
            url=with_query(f"{self.base_url(config)}/{method}", self._auth(config)),
            headers={"Content-Type": "application/json"},
            json=body,
            batch_key=batch_key,
        )

    @staticmethod
    def _auth(config: RetailRocketConfig) -> dict[str, str]:
        return {"apiKey": config.api_key, "partnerId": config.partner_id}

    def merge(self, requests: list[VendorRequest], config: VendorConfig) -> VendorRequest:
        assert isinstance(config, RetailRocketConfig)
        envelopes = []
        for request in requests:
            method = request.url.split("?", 1)[0].rsplit("/", 1)[-1]
            envelopes.append({method: request.json})
        return VendorRequest(
            method="POST",
            url=with_query(f"{self.base_url(config)}/visitorEvents", self._auth(config)),
            headers={"Content-Type": "application/json"},
            json=envelopes,
        )


VENDOR = RetailRocket()
