"""Yespo tracker sandbox: enforces vendor-docs/yespo-tracker-rest.md.

The tracker is one endpoint, `POST /api/v2`, taking one event per request: a JSON object with
`GeneralInfo` and one object named after `eventName`. The document only says "Response status
code is 200"; everything below about refusals is the sandbox's choice of what the real tracker
most plausibly does, and is written here so nobody mistakes it for the vendor's word:

- There is no authorization, so the site id is what a wrong credential looks like: an unknown
  `siteId` is refused with 400 (as is every other malformed request: the document names no
  other code) and the reason.
- A body that is a JSON array (several events) is refused: the document only shows one event a
  request, so a batch is by definition oversize.
- `Content-type: application/json` is required, as the document's request headers say.
- Required fields and types come from the parameter tables. Where the table and the example
  disagree both are accepted: StatusCart `price` / `discount` as string or number, the stock
  flag spelt `isInStock` (examples) or `isinStock` (table) and valued "0"/"1" or 0/1,
  `cookies` as an object with `sc` or a plain string, the impressions under the example's
  `ProductImpression` (an object with `Products`) or the table's `ProductImpressions` ("Type:
  array of objects", or the object). `datetime` has no type and no "Required" in the tables:
  when present it must be milliseconds, as an integer or a digit string — a seconds value is
  refused, because that is the mistake the field invites.
- Fields the document does not name are refused, except `tag_*` fields and the `Tags` object
  it invites ("All additional fields can be transferred in this parameter. The prefix tag_ is
  required"): so a typo shows up here.
- Every customer field of CustomerData is "Optional": one naming nobody is accepted, with a
  note on the record (it tells Yespo nothing about the user).
- StatusCart: "An event is sent after the cart status (with a new GUID) is changed", the GUID
  "Displays the current composition of the shopping cart": a GUID the visitor (site id + `sc`)
  used before for another composition (products and quantities) is refused (`CartGuids`).
- SearchRequest: "Send it only if the search returned no results", but the example has
  `isFound: 1`: a request with `isFound: 1` is accepted, with a note on the record.
- The document names no rate limit. The sandbox answers 429 with Retry-After past 50 requests
  a second per site id, like the relay's default `rate_limit_per_second`.
- An accepted event gets 200 with an empty body (the document shows no response body).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shoprelay.sandbox.base import (
    DEMO_KEY,
    Refusal,
    Sandbox,
    SandboxState,
    SlidingWindow,
    parse_json_body,
)

_S, _I, _NS, _FLAG, _TAGS = "string", "integer", "string or number", "0 or 1", "string array"
_MS = "epoch milliseconds (an integer or a digit string)"
#: Below this a "millisecond" timestamp is really seconds (1e11 ms is March 1973).
_MIN_MS = 100_000_000_000

_GENERAL = {
    "eventName": (True, _S), "siteId": (True, _S), "datetime": (False, _MS),
    "externalCustomerId": (False, _S), "user_phone": (False, _S), "user_email": (False, _S),
    "user_name": (False, _S), "user_es_contact_id": (False, _S),
}
#: The table spells the stock flag `isinStock` (Type: int), the examples `isInStock` ("1"):
#: both are accepted, as int or string 0/1.
_PAGE_PRODUCT = {"productKey": (True, _S), "price": (True, _S), "isInStock": (False, _FLAG),
                 "isinStock": (False, _FLAG)}
_CART_LINE = {"productKey": (True, _S), "price": (True, _NS), "discount": (False, _NS),
              "quantity": (True, _I), "price_currency_code": (False, _S)}
_PURCHASE_LINE = {"product_id": (True, _S), "unit_price": (True, _S), "quantity": (True, _I)}
_IMPRESSION = {"product_id": (True, _S), "container_type": (True, _S)}
_UPDATE_LINE = {
    "product_id": (True, _NS), "isInStock": (True, _FLAG), "unit_price": (False, _NS),
    "description": (False, _S), "name": (False, _S), "imgurl": (False, _S),
    "url": (False, _S), "brand": (False, _S), "price_currency_code": (False, _S),
    "category": (False, _S), "category_id": (False, _TAGS),
}

#: eventName → the body key of its description (None: GeneralInfo only).
BODY_KEYS: dict[str, str | None] = {
    "ProductPage": "ProductPage", "StatusCart": "StatusCart", "AddToWishlist": "AddToWishlist",
    "PurchasedItems": "PurchasedItems", "ProductImpressions": "ProductImpression",
    "CategoryPage": "CategoryPage", "CustomerData": None, "SearchRequest": "SearchRequest",
    "ProductUpdate": "ProductUpdate",
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _S:
        return isinstance(value, str)
    if kind == _I:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NS:
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == _FLAG:
        return value in ("0", "1") or (isinstance(value, int) and not isinstance(value, bool)
                                       and value in (0, 1))
    if kind == _TAGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _MS:
        # "datetime | 1579622183208 | Timestamp (millisecond)": no type is given.
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.isascii() and value.isdigit())
    return False


def _fields(obj: Any, schema: dict[str, tuple[bool, str]], where: str,
            extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check one object against a table: required keys, types, no unnamed keys but `tag_*`."""
    if not isinstance(obj, dict):
        raise Refusal(400, f"{where}: expected a JSON object")
    for key, (required, kind) in schema.items():
        if key not in obj:
            if required:
                raise Refusal(400, f"{where}.{key} is required")
            continue
        if not _type_ok(obj[key], kind):
            raise Refusal(400, f"{where}.{key} must be {kind}, got {obj[key]!r}")
        if required and kind == _S and not obj[key].strip():
            raise Refusal(400, f"{where}.{key} must not be empty")
    for key, value in obj.items():
        if key in schema or key in extra:
            continue
        if key.startswith("tag_") and len(key) > 4:
            if not _type_ok(value, _TAGS):
                raise Refusal(400, f"{where}.{key} must be an array of strings")
            continue
        raise Refusal(400, f"{where}: unknown field {key!r}")
    return obj


def _tags(obj: dict[str, Any], where: str) -> None:
    if "Tags" not in obj:
        return
    tags = obj["Tags"]
    if not isinstance(tags, dict) or not all(_type_ok(v, _TAGS) for v in tags.values()):
        raise Refusal(400, f"{where}.Tags must be an object of string arrays")


def _lines(obj: dict[str, Any], key: str, schema: dict[str, tuple[bool, str]], where: str,
           *, allow_empty: bool) -> None:
    if key not in obj:
        raise Refusal(400, f"{where}.{key} is required")
    lines = obj[key]
    if not isinstance(lines, list):
        raise Refusal(400, f"{where}.{key} must be an array of objects")
    if not lines and not allow_empty:
        raise Refusal(400, f"{where}.{key} must not be empty")
    for i, line in enumerate(lines):
        _fields(line, schema, f"{where}.{key}[{i}]")


def check_general(given: Any, event_name: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = _fields(given, _GENERAL, "GeneralInfo", extra=frozenset({"cookies"}))
    if "datetime" in info and int(info["datetime"]) < _MIN_MS:
        raise Refusal(400, f"GeneralInfo.datetime must be milliseconds, got {info['datetime']}")
    if event_name == "ProductUpdate" and "cookies" not in info:
        # The ProductUpdate example has no visitor (it is a catalogue call), and its table
        # names siteId alone; the other GeneralInfo fields are still accepted.
        return info
    if "cookies" not in info:
        raise Refusal(400, "GeneralInfo.cookies is required")
    cookies = info["cookies"]
    if isinstance(cookies, dict):
        sc = cookies.get("sc")
        if not isinstance(sc, str) or not sc.strip():
            raise Refusal(400, "GeneralInfo.cookies.sc must be a non-empty string")
    elif not isinstance(cookies, str) or not cookies.strip():
        raise Refusal(400, "GeneralInfo.cookies must be an object with sc, or a string")
    return info


def check_event(body: Any, site_ids: frozenset[str], notes: list[str] | None = None) -> str:
    """Refuse (400) an event the document says is wrong; return its eventName. What the
    document allows but advises against is added to `notes` (the record shows it)."""
    notes = [] if notes is None else notes
    if isinstance(body, list):
        raise Refusal(400, "one event per request: the tracker takes a JSON object, not an array")
    if not isinstance(body, dict):
        raise Refusal(400, "expected a JSON object")
    if "GeneralInfo" not in body:
        raise Refusal(400, "GeneralInfo is required")
    found = body["GeneralInfo"].get("eventName") if isinstance(body["GeneralInfo"], dict) else None
    if isinstance(found, str) and found not in BODY_KEYS:
        raise Refusal(400, f"GeneralInfo.eventName: unknown event {found!r}")
    info = check_general(body["GeneralInfo"], found)
    name = str(info["eventName"])
    if info["siteId"] not in site_ids:
        raise Refusal(400, f"GeneralInfo.siteId: unknown site {info['siteId']!r}")
    key = BODY_KEYS[name]
    keys = {key} if key else set()
    if name == "ProductImpressions":
        # The example's key is `ProductImpression`, the table's `ProductImpressions`.
        keys = {"ProductImpression", "ProductImpressions"}
    unknown = set(body) - {"GeneralInfo"} - keys
    if unknown:
        raise Refusal(400, f"unknown top-level fields for {name}: {sorted(unknown)}")
    if key is None:
        # Every customer field is "Optional": a CustomerData naming nobody is accepted,
        # with a note, since it tells Yespo nothing about the user.
        if not any(info.get(k) for k in ("externalCustomerId", "user_email", "user_phone",
                                          "user_name", "user_es_contact_id")):
            notes.append("CustomerData names no customer (every customer field is optional, "
                         "but \"you need to send a request with the data on the user\")")
        return name
    present = sorted(keys & set(body))
    if len(present) > 1:
        raise Refusal(400, f"both {present[0]} and {present[1]}: one event object a request")
    if not present:
        raise Refusal(400, f"{key} is required for eventName {name}")
    key = present[0]
    payload = body[key]
    if name == "ProductUpdate":
        if not isinstance(payload, list) or not payload:
            raise Refusal(400, "ProductUpdate must be a non-empty array of objects")
        for i, line in enumerate(payload):
            _fields(line, _UPDATE_LINE, f"ProductUpdate[{i}]")
        return name
    if name == "ProductImpressions" and isinstance(payload, list):
        # The table: "ProductImpressions | Required | Type: array of objects".
        if not payload:
            raise Refusal(400, f"{key} must not be empty")
        for i, line in enumerate(payload):
            _fields(line, _IMPRESSION, f"{key}[{i}]")
        return name
    if not isinstance(payload, dict):
        raise Refusal(400, f"{key}: expected a JSON object")
    if name in ("ProductPage", "AddToWishlist"):
        _fields(payload, {}, key, extra=frozenset({"Product", "Tags"}))
        if "Product" not in payload:
            raise Refusal(400, f"{key}.Product is required")
        _fields(payload["Product"], _PAGE_PRODUCT, f"{key}.Product")
    elif name == "StatusCart":
        _fields(payload, {"GUID": (True, _S)}, key, extra=frozenset({"Products", "Tags"}))
        # "If the cart is empty, then you need to send an empty cart event."
        _lines(payload, "Products", _CART_LINE, key, allow_empty=True)
    elif name == "PurchasedItems":
        _fields(payload, {"OrderNumber": (True, _S)}, key, extra=frozenset({"Products", "Tags"}))
        _lines(payload, "Products", _PURCHASE_LINE, key, allow_empty=False)
    elif name == "ProductImpressions":
        _fields(payload, {}, key, extra=frozenset({"Products", "Tags"}))
        _lines(payload, "Products", _IMPRESSION, key, allow_empty=False)
    elif name == "CategoryPage":
        _fields(payload, {}, key, extra=frozenset({"Category", "Tags"}))
        if "Category" not in payload:
            raise Refusal(400, "CategoryPage.Category is required")
        _fields(payload["Category"], {"categoryKey": (True, _S)}, "CategoryPage.Category")
    elif name == "SearchRequest":
        _fields(payload, {"search": (True, _S), "isFound": (False, _FLAG)}, key)
        if isinstance(payload.get("isFound"), str):
            raise Refusal(400, "SearchRequest.isFound must be integer 0 or 1")
        if payload.get("isFound") == 1:
            # "Send it only if the search returned no results", yet the example has
            # isFound: 1. Accepted, as the example shows, and noted: only a shop that asked
            # for every search (the relay's search_requests = "all") should send it.
            notes.append("SearchRequest with isFound 1: the document says \"Send it only if "
                         "the search returned no results\" (expected only with "
                         "search_requests = \"all\")")
    _tags(payload, key)
    return name


class CartGuids:
    """Which cart composition each StatusCart GUID named, per visitor (site id + `sc`).

    "An event is sent after the cart status (with a new GUID) is changed", and the GUID
    "Displays the current composition of the shopping cart": a GUID seen before with other
    products or quantities is refused. The same GUID with the same composition (a resend, or a
    cart page showing an unchanged cart) is accepted, and so is a new GUID for an unchanged
    cart ("Can be generated from random numbers"). A price change alone is not a change of
    composition (the document does not say): accepted either way. Bounded, oldest first."""

    def __init__(self, visitors: int = 10_000, per_visitor: int = 200) -> None:
        self.visitors = visitors
        self.per_visitor = per_visitor
        self._seen: OrderedDict[tuple[str, str], OrderedDict[str, Any]] = OrderedDict()

    @staticmethod
    def _visitor(info: dict[str, Any]) -> tuple[str, str]:
        cookies = info["cookies"]
        return str(info["siteId"]), str(cookies["sc"] if isinstance(cookies, dict) else cookies)

    @staticmethod
    def _composition(cart: dict[str, Any]) -> Any:
        return sorted((str(line["productKey"]), int(line["quantity"]))
                      for line in cart["Products"])

    def check(self, info: dict[str, Any], cart: dict[str, Any]) -> None:
        known: dict[str, Any] = self._seen.get(self._visitor(info), {})
        guid = cart["GUID"]
        if guid in known and known[guid] != self._composition(cart):
            raise Refusal(400, f"StatusCart.GUID {guid!r} already named another composition of "
                               "this visitor's cart: \"An event is sent after the cart status "
                               "(with a new GUID) is changed\"")

    def remember(self, info: dict[str, Any], cart: dict[str, Any]) -> None:
        visitor = self._visitor(info)
        known = self._seen.setdefault(visitor, OrderedDict())
        self._seen.move_to_end(visitor)
        known[cart["GUID"]] = self._composition(cart)
        known.move_to_end(cart["GUID"])
        while len(known) > self.per_visitor:
            known.popitem(last=False)
        while len(self._seen) > self.visitors:
            self._seen.popitem(last=False)


class YespoSandbox(Sandbox):
    name = "yespo"

    def __init__(self, site_id: str = DEMO_KEY, per_second: int = 50) -> None:
        self.site_id = site_id
        self.per_second = per_second

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        limiter = SlidingWindow(self.per_second, 1.0)
        site_ids = frozenset({self.site_id})
        guids = CartGuids()

        async def call(request: Request, raw: bytes) -> Response:
            if "application/json" not in request.headers.get("content-type", ""):
                raise Refusal(400, "Content-type must be application/json")
            body = parse_json_body(raw)
            notes: list[str] = []
            name = check_event(body, site_ids, notes)
            info = body["GeneralInfo"]
            if name == "StatusCart":
                guids.check(info, body["StatusCart"])
            wait = limiter.hit(info["siteId"])
            if wait is not None:
                raise Refusal(429, "more than the site's requests per second",
                              {"Retry-After": str(max(1, round(wait)))})
            if name == "StatusCart":
                guids.remember(info, body["StatusCart"])
            if notes:
                request.state.sandbox_note = "; ".join(notes)
            return Response(status_code=200)

        async def endpoint(request: Request) -> Response:
            return await sandbox.handle(request, call)

        return [Route("/api/v2", endpoint, methods=["POST"]),
                Route("/api/v2/", endpoint, methods=["POST"])]

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": f"{base_url}/api/v2", "site_id": self.site_id}


SANDBOX = YespoSandbox()
