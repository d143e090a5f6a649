"""Retail Rocket tracking API 1.0 (vendor-docs/retailrocket-tracking.md).

Every call is `POST {base}/1.0/{method}?apiKey=…&partnerId=…` with a JSON object body;
`productId`, `categoryId` and `groupId` are integers, `timestamp` is ISO-8601 with an offset and
`sessionExternalId` is the relay's visitor id (so it never changes on login). By default
(`visitor_events = true`) the calls are merged into `visitorEvents` batches across visitors.
"""

from __future__ import annotations

import hashlib
import math
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
    owns_block,
    product_ref,
    with_query,
)

#: The "method" `calls_for` gives an order line it cannot render, in the line's place.
_REFUSED = ""
#: A body key carrying what was changed on the way from `calls_for` to `requests_for` only.
_NOTES = "__notes__"
#: "Идентификатор блока рекомендаций `recomBlockId` - любая строка до 50 символов".
BLOCK_ID_CHARS = 50

_VALID_CONTACT = re.compile(r"^[A-Za-z0-9]{1,50}$")
#: Envelopes of the document's `visitorEvents` table. Its example also shows recomBlockViewed,
#: recomTap and recomAddToBasket, which the table does not list: until Retail Rocket confirms
#: them (`batch_recom = true`), those keep their own requests.
_TABLE_ENVELOPES = frozenset(
    {
        "view", "groupView", "addToBasket", "order", "categoryView", "search",
        "impressionContentViewed", "impressionContentClicked",
    }
)
_RECOM = frozenset({"recomBlockViewed", "recomTap", "recomAddToBasket"})
#: Contact ids the relay made itself begin with this; a shop id that does too is encoded, so
#: no shop id can ever equal an encoded one.
_MARK = "SR0"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Bytes of a user id that still fit, encoded, in the 50 characters (`SR0x` + base 62).
_REVERSIBLE_BYTES = 33


def _b62(data: bytes) -> str:
    number = int.from_bytes(b"\x01" + data, "big")  # the 0x01 keeps leading zero bytes
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_B62[rest])
    return "".join(reversed(digits))


def _unb62(text: str) -> bytes | None:
    number = 0
    for ch in text:
        index = _B62.find(ch)
        if index < 0:
            return None
        number = number * 62 + index
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return raw[1:] if raw[:1] == b"\x01" else None


@dataclass(kw_only=True)
@dataclass(kw_only=True)
class RetailRocketConfig(VendorConfig):
    partner_id: str
    api_key: str
    #: Send calls as `visitorEvents` batches. On by default: at the documented 50 requests a
    #: second, one call per event caps a shop at 50 events a second and a busier shop's
    #: backlog would age into the dead letter; batches of 50 carry 50 times as many.
    visitor_events: bool = True
    #: Also batch recomBlockViewed / recomTap / recomAddToBasket, which the document's
    #: example puts in `visitorEvents` but its table of envelopes does not list.
    batch_recom: bool = False
    #: Documented default limit: 50 requests a second per shop (raised on request).
    rate_limit_per_second: int = 50
    #: Most events in one `visitorEvents` call (the document names no maximum; ours).
    batch_size: int = 50
    #: Batches in flight at once: visitors are spread over this many ordered lanes (each
    #: visitor always in the same one, so its events keep their order).
    batch_lanes: int = 8

    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)


def contact_external_id(user_id: str) -> str:
    """The shop's user id as Retail Rocket's `contactExternalId`, which must be "only letters
    and digits, at most 50" and is the id "по которому пользователь может быть распознан в
    учетной системе клиента" (by which the shop recognises the user).

    - An id that already qualifies is sent unchanged (`user42`).
    - Any other id up to 33 bytes is encoded reversibly: `SR0x` + base 62 of its UTF-8, so
      `user-42` and `user_42` stay two contacts and `shoprelay vendors contact-id` reads the
      user back.
    - A longer one becomes `SR0h` + base 62 of its SHA-256: still one contact per user (a
      collision would need a SHA-256 collision); the shop finds the user by computing it.
    - A qualifying id that itself begins with `SR0` is encoded too, so it can never be
      mistaken for (or collide with) one the relay made.
    """
    if _VALID_CONTACT.match(user_id) and not user_id.startswith(_MARK):
        return user_id
    raw = user_id.encode("utf-8")
    if len(raw) <= _REVERSIBLE_BYTES:
        return f"{_MARK}x{_b62(raw)}"
    return f"{_MARK}h{_b62(hashlib.sha256(raw).digest())}"


def user_id_of_contact(contact_id: str) -> str | None:
    """The user id behind a `contactExternalId` the relay sent; None for a hashed (long) one,
    which can only be matched by computing `contact_external_id` of a candidate."""
    if not contact_id.startswith(_MARK):
        return contact_id
    if contact_id.startswith(f"{_MARK}x"):
        raw = _unb62(contact_id[len(_MARK) + 1:])
        if raw is not None:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def _stated(props: dict[str, Any]) -> str | None:
    owner = props.get("recommendation_vendor")
    return str(owner).strip() or None if owner else None


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
    """A finite number: NaN or infinity would reach Retail Rocket as null or not at all."""
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} must be a number for Retail Rocket, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value if isinstance(value, float) else str(value))
    except ValueError:
        raise MappingError(f"{field} must be a number for Retail Rocket, got {value!r}") from None
    if not math.isfinite(number):
        raise MappingError(f"{field} must be a finite number for Retail Rocket, got {value!r}")
    if isinstance(value, float):
        return value
    return int(number) if number.is_integer() else number


class RetailRocket(Vendor[RetailRocketConfig]):
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

    def rate_limits(self, config: RetailRocketConfig) -> list[RateLimit]:
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="partner_id")]

    def config_problems(self, config: RetailRocketConfig) -> dict[str, str]:
        problems: dict[str, str] = {}
        if config.hash_pii:
            problems["hash_pii"] = (
                "Retail Rocket mails the address setContact gives it (\"Привязка каналов "
                "коммуникации используется для доставки персонализированного контента\"): "
                "a hash cannot be delivered to")
        if config.batch_lanes < 1:
            problems["batch_lanes"] = "must be at least 1"
        return problems

    def requests_for(self, event: StoredEvent, config: RetailRocketConfig) -> list[VendorRequest]:
        calls = self.calls_for(event, config)
        requests = []
        for method, body in calls:
            if method == _REFUSED:
                requests.append(VendorRequest.refused(body["reason"]))
                continue
            notes = body.pop(_NOTES, [])
            requests.append(self._request(method, body, event, config).noted(notes))
        return requests

    def calls_for(self, event: StoredEvent,
                  config: RetailRocketConfig) -> list[tuple[str, dict[str, Any]]]:
        """The (method, body) pairs for one event, before URLs and batching."""
        props = event.properties
        base = {"sessionExternalId": event.enrichment.visitor_id}
        stamp = {"timestamp": event.timestamp.isoformat(timespec="seconds")}
        stock = {"stockId": str(props["stock_id"])} if props.get("stock_id") else {}
        name = event.name

        # A block's id goes only to the vendor that served it (CONTRACT §3): another
        # vendor's block is a plain event here, or nothing.
        block = (str(props["list_id"]) if props.get("list_id") and owns_block(
            self.name, _stated(props), config) else None)
        noted: dict[str, Any] = {}
        if block is not None and len(block) > BLOCK_ID_CHARS:
            # "recomBlockId - любая строка до 50 символов": cut the same way every time, so
            # the block's views, taps and additions still agree, and say so.
            cut, block = block, block[:BLOCK_ID_CHARS]
            noted = {_NOTES: [f"recomBlockId cut to {BLOCK_ID_CHARS} characters (\"любая "
                              f"строка до 50 символов\"): list_id has {len(cut)}, "
                              f"sent {block!r}"]}
        if name == ev.PRODUCT_LIST_VIEWED:
            if props.get("list_id"):
                if block is None:
                    return []
                return [("recomBlockViewed", {**base, "recomBlockId": block, **stamp,
                                              **noted})]
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
            if block is not None:
                return [("recomAddToBasket", {**base, **product, **stock, **stamp,
                                              "recomBlockId": block, **noted})]
            return [("addToBasket", {**base, **product, **stock, **stamp})]
        if name == ev.PRODUCT_CLICKED:
            if block is None:
                return []
            return [("recomTap", {**base, "productId": self._product(props), **stock, **stamp,
                                  "recomBlockId": block, **noted})]
        if name in (ev.PROMOTION_VIEWED, ev.PROMOTION_CLICKED):
            promotion = props.get("promotion_id")
            if not promotion:
                return []
            method = ("impressionContentViewed" if name == ev.PROMOTION_VIEWED
                      else "impressionContentClicked")
            return [(method, {**base, "impressionContentId": str(promotion), **stamp})]
        if name == ev.ORDER_COMPLETED:
            return self._order(event, base, stamp, config)
        if name == ev.IDENTIFY:
            return self._set_contact(event, base, stamp, config)
        return []

    @staticmethod
    def _product(props: dict[str, Any]) -> int:
        return _int(product_ref(props), "product_id")

    def _order(self, event: StoredEvent, base: dict[str, Any], stamp: dict[str, Any],
               config: RetailRocketConfig) -> list[tuple[str, dict[str, Any]]]:
        """ "Должен быть вызван для каждой товарной позиции в заказе": one `order` per line.
        A line that cannot be rendered keeps its place as a refusal with its reason (the
        delivery layer dead-letters it alone), so it does not sink the good lines; an order
        with no good line is refused whole."""
        props = event.properties
        order_id = props.get("order_id")
        if not order_id:
            raise MappingError("Order Completed needs order_id for Retail Rocket's transaction")
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Retail Rocket's order calls")
        # The thank-you page is where Retail Rocket wants the email too (setContact is to be
        # called "при ... оформлении заказа"), once per new address (enrichment.new_identity).
        calls = self._set_contact(event, base, stamp, config)
        problems = []
        for i, line in enumerate(lines):
            try:
                if not isinstance(line, dict):
                    raise MappingError("must be an object")
                body = {**base, "productId": self._product(line)}
                if line.get("stock_id"):
                    body["stockId"] = str(line["stock_id"])
                body["price"] = _number(line.get("price"), "price")
                body["quantity"] = _number(line.get("quantity", 1), "quantity")
            except MappingError as exc:
                problems.append(f"products[{i}]: {exc}")
                calls.append((_REFUSED, {"reason": problems[-1]}))
                continue
            body["transaction"] = str(order_id)
            calls.append(("order", {**body, **stamp}))
        if not any(method == "order" for method, _ in calls):
            raise MappingError("no line of the order can be sent: " + "; ".join(problems))
        return calls

    @staticmethod
    def _set_contact(event: StoredEvent, base: dict[str, Any], stamp: dict[str, Any],
                     config: RetailRocketConfig) -> list[tuple[str, dict[str, Any]]]:
        """ "Метод нужно вызывать при регистрации, успешной авторизации, оформлении заказа и
        других местах интернет-магазина, когда пользователь может оставить email адрес": on
        every event that told the relay something new about who the visitor is
        (`enrichment.new_identity`: a new user id, email or phone; an order with an email).
        `contactExternalId` is the user id, or the email for a guest who left only that."""
        enrichment = event.enrichment
        if not (enrichment.new_identity or enrichment.new_binding) or enrichment.claimed_identity:
            # A claim the shop did not vouch for gets no contact: Retail Rocket would mail
            # the claimant's address as that user.
            return []
        traits = event.traits if event.type == "identify" else {}
        user_id = enrichment.user_id or (event.message.get("userId")
                                         if event.type == "identify" else None)
        email = enrichment.email or traits.get("email")
        phone = enrichment.phone or traits.get("phone")
        contact = user_id or email
        if not contact:
            return []
        body: dict[str, Any] = {**base, "contactExternalId": contact_external_id(str(contact))}
        if email:
            # The document types `email` as integer; it is an address, so it is sent as a string.
            body["email"] = contact_value(str(email), config, "email")
        if phone:
            body["phone"] = contact_value(str(phone), config, "phone")
        return [("setContact", {**body, **stamp})]

    def _request(
        self, method: str, body: dict[str, Any], event: StoredEvent, config: RetailRocketConfig
    ) -> VendorRequest:
        batch_key = None
        batchable = method in _TABLE_ENVELOPES or (config.batch_recom and method in _RECOM)
        if config.visitor_events and batchable:
            # "В теле вызова метода передается список пользовательских событий" and each
            # carries its own sessionExternalId: the document sets no one-visitor rule, so a
            # batch mixes visitors. Visitors are spread over `batch_lanes` lanes by a stable
            # hash; the delivery layer keeps every lane (so every visitor) in order.
            lane = int(hashlib.sha1(event.enrichment.visitor_id.encode()).hexdigest()[:8], 16)
            batch_key = f"visitorEvents:{lane % max(1, config.batch_lanes)}"
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

    def merge(self, requests: list[VendorRequest], config: RetailRocketConfig) -> VendorRequest:
        envelopes = []
        for request in requests:
            method = request.url.split("?", 1)[0].rsplit("/", 1)[-1]
            envelopes.append({method: request.json})
        notes = [note for request in requests for note in request.notes]
        return VendorRequest(
            method="POST",
            url=with_query(f"{self.base_url(config)}/visitorEvents", self._auth(config)),
            headers={"Content-Type": "application/json"},
            json=envelopes, notes=tuple(notes),
        )


VENDOR = RetailRocket()
