"""Advisable interactions API (vendor-docs/advisable-interactions.md).

Each interaction is `POST {base_url}/v1/{path}` with a JSON object; an order's lines go together
as one JSON array to `POST {base_url}/v1/{purchase_path}/batch`; a new login moves the visitor's
interactions to the user with `POST {base_url}/v1/users/{visitor}/interactions/transfer/{user}`.

Advisable does not publish its base URL, its auth header names or the exact plural path of each
interaction type, so all three are settings: `base_url` is required and is the host root (the
adapter adds `/v1`), the headers default to `x-app-id` / `x-app-secret`, the paths to `views`,
`cart_additions`, `bookmarks`, `ratings`, `purchases`.

Choices where the document is silent or loose (docs/vendors/advisable.md has the full list):

- `timestamp` is sent as a string of epoch milliseconds: the document types it `Optional[str]`
  yet says a number works too; a digit string is valid under both readings, a number is not
  valid under a strict `str` schema.
- `recommendation_id` is the relay's `list_id` of a block Advisable served (the event's
  `recommendation_vendor = "advisable"`, or the site's setting): the shop puts Advisable's
  recommendation id there when it renders an Advisable block; other vendors' blocks are
  never sent as one.
- The transfer is sent with `delete_user=true` (the document's default, made explicit): after
  a binding the relay never uses that visitor id as `user_id` again, so the guest is empty.
- `purchase_batch_size` splits very large orders: the document gives no batch limit.
- An order line Advisable cannot take is left out with a note, not the order; a line with
  `quantity: null` is one piece (`amount` 1, noted), since `amount` is optional.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from shoprelay import events as ev
from shoprelay.events import StoredEvent
from shoprelay.vendors.base import (
    MappingError,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    owns_block,
    product_ref,
    with_query,
)

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-.~]+$")
_PATH_FIELDS = ("view_path", "cart_addition_path", "bookmark_path", "rating_path",
                "purchase_path")


@dataclass(kw_only=True)
class AdvisableConfig(VendorConfig):
    app_id: str
    app_secret: str
    #: Header names: Advisable does not publish them, so they are settings.
    app_id_header: str = "x-app-id"
    app_secret_header: str = "x-app-secret"
    #: `/v1/{path}` of each interaction type (the document names the types, not the plurals).
    view_path: str = "views"
    cart_addition_path: str = "cart_additions"
    bookmark_path: str = "bookmarks"
    rating_path: str = "ratings"
    purchase_path: str = "purchases"
    #: `delete_user` of the transfer call: remove the guest once its interactions moved.
    transfer_delete_user: bool = True
    #: HTTP method of the transfer call: the document gives the path, not the method.
    transfer_method: str = "POST"
    #: Most order lines in one `/purchases/batch` call (undocumented; ours).
    purchase_batch_size: int = 100
    #: Not documented by Advisable: our own ceiling, per app id.
    rate_limit_per_second: int = 20

    secret_fields: ClassVar[tuple[str, ...]] = ("app_secret",)


def _item_id(props: dict[str, Any], where: str) -> str:
    """`item_id` is a string for Advisable; `sku` stands in when there is no `product_id`."""
    value = product_ref(props)
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{where} is required for Advisable's item_id, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, str | int | float):
        raise MappingError(f"{where} must be a string or number for Advisable, got {value!r}")
    text = str(value).strip()
    if not text:
        raise MappingError(f"{where} is empty")
    return text


def _number(value: Any, where: str) -> float | int:
    """A finite number; numeric strings are read because Segment clients often send them."""
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{where} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MappingError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MappingError(f"{where} must be a finite number, got {value!r}")
    return int(number) if number.is_integer() else number


def _recommendation(list_id: Any, owner: str | None, config: VendorConfig) -> dict[str, str]:
    """`recommendation_id` is "the id that was returned to you along with the recommendation
    data": only a block Advisable served carries it (CONTRACT §3)."""
    if not list_id or not owns_block("advisable", owner, config):
        return {}
    return {"recommendation_id": str(list_id)}


def _stated(props: dict[str, Any]) -> str | None:
    owner = props.get("recommendation_vendor")
    return str(owner).strip() or None if owner else None


class Advisable(Vendor[AdvisableConfig]):
    name = "advisable"
    title = "Advisable"
    config_class = AdvisableConfig
    # Not public: base_url is required in the settings.
    default_base_url = ""
    handles = frozenset(
        {
            ev.PRODUCT_VIEWED, ev.PRODUCT_ADDED, ev.PRODUCT_ADDED_TO_WISHLIST,
            ev.PRODUCT_REVIEWED, ev.ORDER_COMPLETED, ev.IDENTIFY,
        }
    )
    # `/purchases/batch` "accepts an array as an input": each purchase stands alone, so one
    # the vendor refuses is dead-lettered alone (shoprelay.vendors.base `array_units`).
    array_units = True

    def rate_limits(self, config: AdvisableConfig) -> list[RateLimit]:
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="app_id")]

    def config_problems(self, config: AdvisableConfig) -> dict[str, str]:
        """Value problems the type-checking loader cannot see: {key: reason}."""
        problems: dict[str, str] = {}
        path = urlsplit(config.base_url).path.rstrip("/")
        if path.endswith("/v1"):
            problems["base_url"] = "give the host root: the adapter adds /v1 itself"
        for key in ("app_id_header", "app_secret_header"):
            if not _TOKEN.match(getattr(config, key)):
                problems[key] = f"not an HTTP header name: {getattr(config, key)!r}"
        if config.app_id_header.lower() == config.app_secret_header.lower():
            problems["app_secret_header"] = "must differ from app_id_header"
        for key in _PATH_FIELDS:
            if not _SEGMENT.match(getattr(config, key)):
                problems[key] = f"must be one URL path segment, got {getattr(config, key)!r}"
        if config.transfer_method not in ("POST", "PUT", "PATCH"):
            problems["transfer_method"] = "must be POST, PUT or PATCH"
        return problems

    def requests_for(self, event: StoredEvent, config: AdvisableConfig) -> list[VendorRequest]:
        name = event.name
        if name == ev.IDENTIFY:
            return self._transfer(event, config)
        if name == ev.ORDER_COMPLETED:
            return self._purchases(event, config)
        path = {
            ev.PRODUCT_VIEWED: config.view_path,
            ev.PRODUCT_ADDED: config.cart_addition_path,
            ev.PRODUCT_ADDED_TO_WISHLIST: config.bookmark_path,
            ev.PRODUCT_REVIEWED: config.rating_path,
        }.get(name)
        if path is None:
            return []
        props = event.properties
        enrichment = event.enrichment
        if props.get("list_id"):
            block = _recommendation(props["list_id"], _stated(props), config)
        else:
            block = _recommendation(enrichment.list_id, enrichment.list_vendor, config)
        body: dict[str, Any] = {
            "user_id": event.customer_id,
            "item_id": _item_id(props, "product_id"),
            "timestamp": str(ev.epoch_ms(event.timestamp)),
            **block,
        }
        notes: list[str] = []
        if name == ev.PRODUCT_REVIEWED:
            if props.get("rating") is None:
                # A text-only review: nothing a rating interaction can carry.
                return []
            value = float(_number(props["rating"], "rating"))
            # value "Should be any positive float number between 0 and 5": 0 is not positive.
            if value == 0:
                return [VendorRequest.skipped(
                    "rating 0 not sent: Advisable's value must be a positive number "
                    "between 0 and 5")]
            if not 0 < value <= 5:
                raise MappingError(f"rating must be between 0 and 5 for Advisable, got {value}")
            body["value"] = value
        if name == ev.PRODUCT_VIEWED and props.get("duration_ms") is not None:
            # Optional ("The amount of time a user stared at a product (in ms)"): a bad one
            # is left out, the view still counts.
            try:
                duration = _number(props["duration_ms"], "duration_ms")
                if duration < 0:
                    raise MappingError(f"duration_ms must not be negative, got {duration}")
            except MappingError as exc:
                notes.append(f"duration left out: {exc}")
            else:
                body["duration"] = duration
        return [self._post(f"/v1/{path}", body, config).noted(notes)]

    def _purchases(self, event: StoredEvent, config: AdvisableConfig) -> list[VendorRequest]:
        props = event.properties
        lines = props.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Advisable's purchases")
        list_ids = event.enrichment.extra.get("line_list_ids") or {}
        if not isinstance(list_ids, dict):
            list_ids = {}
        owners = event.enrichment.extra.get("line_list_vendors") or {}
        if not isinstance(owners, dict):
            owners = {}
        stamp = str(ev.epoch_ms(event.timestamp))
        purchases: list[dict[str, Any]] = []
        #: (note, index of the first purchase sent after it): a note travels with its batch.
        notes: list[tuple[str, int]] = []
        for i, line in enumerate(lines):
            try:
                purchase, note = self._purchase(line, i, event, stamp, list_ids, owners, config)
            except MappingError as exc:
                # One line Advisable cannot take (no item id, a bad price or quantity) is
                # left out with its reason; the order's other lines still go.
                notes.append((f"order line {i} left out: {exc}", len(purchases)))
                continue
            if note:
                notes.append((note, len(purchases)))
            purchases.append(purchase)
        if not purchases:
            raise MappingError("no line of the order can be sent to Advisable: "
                               + "; ".join(note for note, _ in notes))
        size = config.purchase_batch_size
        last = len(purchases) - 1
        return [self._post(f"/v1/{config.purchase_path}/batch", purchases[i:i + size], config)
                .noted([n for n, at in notes if i <= min(at, last) < i + size])
                for i in range(0, len(purchases), size)]

    def _purchase(self, line: Any, i: int, event: StoredEvent, stamp: str,
                  list_ids: dict[str, Any], owners: dict[str, Any],
                  config: AdvisableConfig) -> tuple[dict[str, Any], str]:
        """One order line as a purchase, and a note on what was assumed ("" if nothing)."""
        if not isinstance(line, dict):
            raise MappingError(f"products[{i}] must be an object")
        item = _item_id(line, f"products[{i}].product_id")
        purchase: dict[str, Any] = {"user_id": event.customer_id, "item_id": item,
                                    "timestamp": stamp}
        if line.get("price") is not None:
            purchase["price"] = _number(line["price"], f"products[{i}].price")
        note = ""
        quantity = line.get("quantity", 1)
        if quantity is None:
            # `amount` is optional ("The amount of pieces if a user purchases more than one
            # of the same product"): a line without a quantity is one piece.
            note = f"products[{i}].quantity is null: sent as amount 1"
            quantity = 1
        amount = _number(quantity, f"products[{i}].quantity")
        if amount <= 0:
            raise MappingError(f"products[{i}].quantity must be positive, got {amount}")
        purchase["amount"] = amount
        # Ingest keys the map by the id as the client wrote it (`12.0`), we send `12`.
        raw = str(product_ref(line)).strip()
        if line.get("list_id"):
            block = _recommendation(line["list_id"], _stated(line), config)
        else:
            key = item if item in list_ids else raw
            block = _recommendation(list_ids.get(key), owners.get(key), config)
        purchase.update(block)
        return purchase, note

    def _transfer(self, event: StoredEvent, config: AdvisableConfig) -> list[VendorRequest]:
        # Only a binding the rules accepted (`binding_accepted`): an unsigned claim on a user
        # bound elsewhere must not merge the claimant's history into that user (issue 22).
        if not (event.enrichment.new_binding and event.enrichment.binding_accepted):
            return []
        visitor = event.enrichment.visitor_id
        user = event.enrichment.user_id or event.message.get("userId")
        if not user or str(user) == visitor:
            return []
        if "/" in str(user) or str(user) in (".", ".."):
            # Servers decode %2F before routing, and URL clients resolve dot segments, so such
            # an id would reach another path.
            raise MappingError(f"user id {user!r} cannot be a path segment of Advisable's "
                               "transfer call")
        path = (f"/v1/users/{quote(visitor, safe='')}/interactions/transfer/"
                f"{quote(str(user), safe='')}")
        flag = {"delete_user": "true" if config.transfer_delete_user else "false"}
        # No body: the two ids and the flag are the whole call.
        return [VendorRequest(method=config.transfer_method,
                              url=with_query(self.base_url(config) + path, flag),
                              headers=self._auth(config))]

    def refuses_settings(self, status: int, url: str) -> bool:
        """A 404 on the transfer call may name the guest user ("no such user"): that is about
        the event. Everywhere else 401/403/404 are about the settings."""
        if status == 404 and "/interactions/transfer/" in url:
            return False
        return super().refuses_settings(status, url)

    def _post(self, path: str, body: Any, config: AdvisableConfig) -> VendorRequest:
        return VendorRequest(method="POST", url=self.base_url(config) + path,
                             headers={"Content-Type": "application/json", **self._auth(config)},
                             json=body)

    @staticmethod
    def _auth(config: AdvisableConfig) -> dict[str, str]:
        return {config.app_id_header: config.app_id, config.app_secret_header: config.app_secret}


VENDOR = Advisable()
