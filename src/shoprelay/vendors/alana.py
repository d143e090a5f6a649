"""Alana shopping events (vendor-docs/alana-events.md).

Every event is one element of `POST {base}/api/v1/events` `{"events": [...]}`, authenticated by
the `x-api-key` header (the document also allows a `key` query parameter; the header keeps the
secret out of URLs, access logs and the dead-letter listing). Alana takes up to 100 events of
any type and any visitor in one request, so all requests share one batch key and the delivery
layer concatenates them. `visitorId` is always the relay's visitor id (so it never changes on
login); `userId` is added once the visitor is bound to a user, which is all an `identify` means
to Alana: identify itself sends nothing.

Alana has no timestamp field, so a batch sent late (retries, batching) would be dated by its
arrival; the event's own time and `messageId` go in the free-form `metadata` so the vendor can
date and de-duplicate it. See docs/vendors/alana.md for the full mapping and the assumptions.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any, ClassVar

import orjson

from shoprelay import events as ev
from shoprelay.events import StoredEvent
from shoprelay.vendors.base import (
    MappingError,
    Outcome,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    classify_status,
    owns_block,
    product_ref,
)

#: A key an event carries from `event_for` to `requests_for` only: what was left out.
_NOTES = "__notes__"


def _stated(props: dict[str, Any]) -> str | None:
    owner = props.get("recommendation_vendor")
    return str(owner).strip() or None if owner else None

PATH = "/api/v1/events"
#: Every Alana request may be merged with every other one of the same site: one endpoint, and
#: each event carries its own visitor.
BATCH_KEY = "events"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
#: Values of X-RateLimit-Reset above this are a Unix time, below it a number of seconds to
#: wait: no plausible reset moment lies before 2001-09-09 and no window lasts 31 years.
_EPOCH_THRESHOLD = 1_000_000_000
_EPOCH_MS_THRESHOLD = 1_000_000_000_000

Json = dict[str, Any]

#: The document's "Event Types" table: each type's required fields beyond `visitorId`.
REQUIRED: dict[str, tuple[str, ...]] = {
    "home-page-view": (),
    "search": ("query",),
    "category-view": ("categoryPath",),
    "detail-page-view": ("productId",),
    "add-to-cart": ("productId",),
    "shopping-cart-page-view": (),
    "purchase-complete": ("productIds", "revenue", "currency"),
}
#: The document's "Common Fields" table.
COMMON = ("eventType", "visitorId", "userId", "metadata")


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


#: Types of the required fields. The document types only the common fields; these are the
#: relay's reading (docs/vendors/alana.md, "confirm before going live"): ids and text as
#: non-empty strings (its examples), `productIds` a non-empty list of them, `revenue` a number.
_TYPES: dict[str, tuple[Any, str]] = {
    "query": (_filled, "a non-empty string"),
    "categoryPath": (_filled, "a non-empty string"),
    "productId": (_filled, "a non-empty string"),
    "currency": (lambda v: isinstance(v, str) and bool(_CURRENCY.match(v)),
                 "a three-letter currency code"),
    "productIds": (lambda v: isinstance(v, list) and bool(v) and all(_filled(i) for i in v),
                   "a non-empty array of non-empty strings"),
    "revenue": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                and math.isfinite(v), "a number"),
}


def check_event(event: Json) -> str | None:
    """Why Alana's document would not have it stored, or None. Checked on every event before
    it goes, so the refusals Alana answers with a bare count stay rare; it also keeps the
    event to the fields the document names (common ones and the type's required ones)."""
    kind = event.get("eventType")
    if kind not in REQUIRED:
        return f"eventType must be one of the 7 event types, got {kind!r}"
    if not _filled(event.get("visitorId")):
        return "visitorId must be a non-empty string"
    if "userId" in event and not _filled(event["userId"]):
        return f"userId must be a non-empty string, got {event['userId']!r}"
    if "metadata" in event and not isinstance(event["metadata"], dict):
        return "metadata must be an object"
    for key in REQUIRED[kind]:
        check, text = _TYPES[key]
        if key not in event or not check(event[key]):
            return f"{kind}: {key} must be {text}, got {event.get(key)!r}"
    extra = sorted(set(event) - set(COMMON) - set(REQUIRED[kind]))
    if extra:
        return f"{kind}: fields the document does not name: {extra}"
    return None


@dataclass(kw_only=True)
class AlanaConfig(VendorConfig):
    api_key: str
    #: Documented: 1,000 requests a minute per API key.
    requests_per_minute: int = 1000
    #: Documented: 100 requests a minute per API key and client IP. The relay sends from one
    #: address, so this is the limit that binds in practice.
    requests_per_minute_per_ip: int = 100
    #: Used for `purchase-complete` when an Order Completed carries no `currency` (Alana
    #: requires one); empty means such an order is refused with a reason.
    default_currency: str = ""

    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)


def _text(value: Any, field: str) -> str:
    """A non-empty identifier as Alana's string; numbers are accepted (ids are often ints)."""
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} must be a string or number for Alana, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, str | int | float):
        raise MappingError(f"{field} must be a string or number for Alana, got {value!r}")
    text = str(value).strip()
    if not text:
        raise MappingError(f"{field} is empty")
    return text


def _number(value: Any, field: str) -> int | float:
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} must be a number for Alana, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value) if isinstance(value, float | str) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise MappingError(f"{field} must be a number for Alana, got {value!r}")
    return number


def _product_id(props: dict[str, Any], where: str) -> str:
    value = product_ref(props)
    if value is None or value == "":
        raise MappingError(f"{where} has no product_id (or sku) for Alana's productId")
    return _text(value, f"{where}.product_id")


def _is_home(event: StoredEvent) -> bool:
    """A page is Home when its name or category says so (either, as analytics.js allows)."""
    message, props = event.message, event.properties
    for value in (message.get("name"), message.get("category"),
                  props.get("name"), props.get("category")):
        if isinstance(value, str) and value.strip().lower() == "home":
            return True
    return False


def _metadata(event: StoredEvent, **extra: Any) -> Json:
    """Flat key/value context: when it happened, which message, plus the event's own extras."""
    stamp = event.timestamp.astimezone(UTC).isoformat(timespec="milliseconds")
    meta: Json = {"timestamp": stamp.replace("+00:00", "Z")}
    if event.message_id:
        meta["messageId"] = event.message_id
    for key, value in extra.items():
        if isinstance(value, bool) or value is None or value == "":
            continue
        if isinstance(value, str | int | float):
            meta[key] = value
    return meta


def reset_seconds(value: str, now: float) -> float | None:
    """Seconds to wait from an `X-RateLimit-Reset` value.

    The document does not say what the value is. Alana's answers look like an Express service
    (`{status, stored, errors}`), whose rate limiter sends it as a Unix time in seconds, as
    GitHub does; that is the reading taken. A small value can only be a delay, so it is read
    as one, and a value in milliseconds is recognised too.
    """
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    if number >= _EPOCH_MS_THRESHOLD:
        number = number / 1000 - now
    elif number >= _EPOCH_THRESHOLD:
        number -= now
    return max(0.0, number)


class Alana(Vendor[AlanaConfig]):
    name = "alana"
    title = "Alana"
    config_class = AlanaConfig
    default_base_url = "https://alana.shopping"
    handles = frozenset(
        {
            ev.PAGE, ev.PRODUCT_LIST_VIEWED, ev.PRODUCT_VIEWED, ev.PRODUCTS_SEARCHED,
            ev.PRODUCT_ADDED, ev.CART_VIEWED, ev.ORDER_COMPLETED,
        }
    )
    max_batch = 100

    def rate_limits(self, config: AlanaConfig) -> list[RateLimit]:
        return [
            RateLimit(max(1, config.requests_per_minute), 60.0, scope="api_key"),
            RateLimit(max(1, config.requests_per_minute_per_ip), 60.0, scope="api_key+ip"),
        ]

    def requests_for(self, event: StoredEvent, config: AlanaConfig) -> list[VendorRequest]:
        body = self.event_for(event, config)
        if body is None:
            return []
        notes = body.pop(_NOTES, [])
        problem = check_event(body)
        if problem is not None:
            # Alana would count it in `errors` without saying which: in a batch that would
            # leave every event of it in doubt (docs/vendors/alana.md, "Answers").
            raise MappingError(f"Alana would refuse it: {problem}")
        return [self._request([body], config).noted(notes)]

    def event_for(self, event: StoredEvent, config: AlanaConfig) -> Json | None:
        """The one Alana event for a canonical event, or None when Alana has no such event."""
        props = event.properties
        name = event.name
        visitor = event.enrichment.visitor_id
        if not visitor:
            raise MappingError("the event has no visitor id for Alana's visitorId")

        def build(event_type: str, fields: Json, meta: Json) -> Json:
            body: Json = {"eventType": event_type, "visitorId": visitor}
            if event.enrichment.user_id:
                body["userId"] = str(event.enrichment.user_id)
            body.update(fields)
            body["metadata"] = meta
            return body

        # A block's id goes only to the vendor that served it (CONTRACT §3).
        if props.get("list_id"):
            list_id = props["list_id"] if owns_block(self.name, _stated(props), config) else None
        else:
            list_id = (event.enrichment.list_id if owns_block(
                self.name, event.enrichment.list_vendor, config) else None)
        if name == ev.PAGE:
            if not _is_home(event):
                return None
            return build("home-page-view", {}, _metadata(event))
        if name == ev.PRODUCT_LIST_VIEWED:
            # A recommendation block's impression is not a category page for Alana.
            if props.get("list_id"):
                return None
            category = props.get("category")
            if category is None or (isinstance(category, str) and not category.strip()):
                return None
            path = _text(category, "category")
            category_id = props.get("category_id")
            return build("category-view", {"categoryPath": path},
                         _metadata(event, categoryId=None if category_id is None
                                   else str(category_id)))
        if name == ev.PRODUCT_VIEWED:
            product = _product_id(props, "Product Viewed")
            return build("detail-page-view", {"productId": product},
                         _metadata(event, listId=list_id))
        if name == ev.PRODUCTS_SEARCHED:
            query = props.get("query")
            if query is None or (isinstance(query, str) and not query.strip()):
                return None
            results = props.get("results")
            if results is not None and (isinstance(results, bool) or not isinstance(
                    results, int | float) or not math.isfinite(results) or results < 0):
                # Optional context: a malformed count is left out, the search still sent.
                return {**build("search", {"query": _text(query, "query")}, _metadata(event)),
                        _NOTES: [f"metadata.results left out: not a count: {results!r}"]}
            return build("search", {"query": _text(query, "query")},
                         _metadata(event, results=results))
        if name == ev.PRODUCT_ADDED:
            product = _product_id(props, "Product Added")
            quantity = props.get("quantity")
            return build("add-to-cart", {"productId": product},
                         _metadata(event, quantity=quantity, listId=list_id,
                                   cartId=event.enrichment.cart_id or props.get("cart_id")))
        if name == ev.CART_VIEWED:
            return build("shopping-cart-page-view", {},
                         _metadata(event,
                                   cartId=event.enrichment.cart_id or props.get("cart_id")))
        if name == ev.ORDER_COMPLETED:
            return build("purchase-complete", self._purchase(event, config),
                         _metadata(event, orderId=props.get("order_id")))
        return None

    @staticmethod
    def _purchase(event: StoredEvent, config: AlanaConfig) -> Json:
        props = event.properties
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Alana's productIds")
        ids: list[str] = []
        for i, line in enumerate(lines):
            if not isinstance(line, dict):
                raise MappingError(f"products[{i}] must be an object")
            product = _product_id(line, f"products[{i}]")
            # Two lines of one product (e.g. two sizes) are one purchased product to Alana.
            if product not in ids:
                ids.append(product)
        amount = props.get("revenue")
        field = "revenue"
        if amount is None:
            amount, field = props.get("total"), "total"
        if amount is None:
            raise MappingError("Order Completed needs revenue or total for Alana's revenue")
        revenue = _number(amount, field)
        currency = props.get("currency") or config.default_currency
        if not currency:
            raise MappingError("Order Completed has no currency and no default_currency is set")
        if not isinstance(currency, str) or not _CURRENCY.match(currency.strip().upper()):
            raise MappingError(f"currency must be an ISO 4217 code, got {currency!r}")
        return {"productIds": ids, "revenue": revenue, "currency": currency.strip().upper()}

    def _request(self, events: list[Json], config: AlanaConfig) -> VendorRequest:
        return VendorRequest(
            method="POST",
            url=f"{self.base_url(config)}{PATH}",
            headers={"Content-Type": "application/json", "x-api-key": config.api_key},
            json={"events": events},
            batch_key=BATCH_KEY,
        )

    def merge(self, requests: list[VendorRequest], config: AlanaConfig) -> VendorRequest:
        events: list[Json] = []
        notes: list[str] = []
        for request in requests:
            events.extend(request.json["events"])
            notes.extend(request.notes)
        if len(events) > self.max_batch:
            # Alana answers 400 to the whole batch; better to fail here, where it is a bug.
            raise ValueError(f"{len(events)} events in one Alana batch; at most {self.max_batch}")
        return self._request(events, config).noted(notes)

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> Outcome:
        outcome = classify_status(status, headers)
        if status == 429:
            lowered = {k.lower(): v for k, v in headers.items()}
            reset = lowered.get("x-ratelimit-reset")
            wait = reset_seconds(reset, time.time()) if reset is not None else None
            # Both headers may come; waiting for the later of the two satisfies both.
            waits = [w for w in (outcome.retry_after, wait) if w is not None]
            return Outcome(ok=False, retry=True, retry_after=max(waits) if waits else None,
                           detail=f"HTTP 429: {_error_text(body)}")
        if not outcome.ok:
            return Outcome(ok=outcome.ok, retry=outcome.retry, retry_after=outcome.retry_after,
                           detail=f"HTTP {status}: {_error_text(body)}")
        try:
            answer = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            answer = None
        shown = body.decode("utf-8", "replace")[:300]
        if not isinstance(answer, dict):
            # "status | string | Always "ok" on success": without it this is no known
            # success, yet the events may be stored, so they are not sent again either.
            return Outcome(ok=False, maybe_stored=True,
                           detail=f"HTTP {status} without Alana's {{status, stored, errors}} "
                                  f"answer, so the events may or may not be stored: {shown!r}")
        stored, errors = answer.get("stored"), answer.get("errors")
        if answer.get("status") != "ok":
            detail = (f"Alana answered status {answer.get('status')!r}, not \"ok\" (\"Always "
                      f"\"ok\" on success\"): {shown}")
            if _count(stored) == 0:
                # It says it stored none: a refusal of the whole request.
                return Outcome(ok=False, detail=detail)
            return Outcome(ok=False, maybe_stored=True, detail=detail)
        if (count := _count(errors)) is not None and count > 0:
            # The answer counts the refused events but does not say which ones or why.
            return Outcome(ok=True, failed_events=count,
                           detail=f"Alana stored {stored} event(s) and refused {count} "
                                  "that failed its validation")
        return Outcome(ok=True, detail=f"Alana stored {stored} event(s)")


def _count(value: Any) -> int | None:
    """A count from Alana's answer (`stored`, `errors`: "number"), or None if it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def _error_text(body: bytes) -> str:
    try:
        answer = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        for key in ("error", "message", "errors"):
            if answer.get(key):
                return str(answer[key])[:300]
    return body.decode("utf-8", "replace")[:300]


VENDOR = Alana()
