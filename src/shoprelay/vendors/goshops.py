"""Go Shops "Interacciones" API 1.0 (vendor-docs/goshops-interactions.md).

Every interaction is `POST {base}/feedback` with the project's `x-api-key` header and the body
`{"project": …, "data": {"event", "item", "customer", "date"}}`; the vendor knows four events
(`view`, `like`, `cart`, `purchase`) and no batch form, so an order becomes one request per line.

`customer` is the bound user id once the visitor identified, else the relay's visitor id. Go Shops
has no call to merge a guest into a user, so what a visitor did before login stays under the
visitor id; that is the document's whole identity model.

The document says `date` is required but not its format. We send ISO-8601 in UTC with
milliseconds and an explicit offset (unambiguous whatever the vendor's parser assumes about
zones); `date_format` switches to epoch milliseconds or seconds should the vendor want a number.
It documents no rate limit either: `rate_limit_per_second` is ours, per API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from shoprelay import events as ev
from shoprelay.events import StoredEvent
from shoprelay.vendors.base import (
    MappingError,
    RateLimit,
    Vendor,
    VendorConfig,
    VendorRequest,
    product_ref,
)

#: Canonical event → Go Shops `data.event` (CONTRACT §3; Order Completed is per line).
EVENTS: dict[str, str] = {
    ev.PRODUCT_VIEWED: "view",
    ev.PRODUCT_ADDED: "cart",
    ev.PRODUCT_ADDED_TO_WISHLIST: "like",
    ev.ORDER_COMPLETED: "purchase",
}
DATE_FORMATS = ("iso8601", "epoch_ms", "epoch_s")


@dataclass(kw_only=True)
class GoShopsConfig(VendorConfig):
    #: The `project` id from the Go Shops Admin.
    project: str
    #: Sent as `x-api-key`; from the Go Shops Admin.
    api_key: str
    #: How `data.date` is written: "iso8601" | "epoch_ms" | "epoch_s" (the document is silent).
    date_format: str = "iso8601"
    #: Not documented by Go Shops: our own ceiling, per API key.
    rate_limit_per_second: int = 20

    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)


def item_id(props: dict[str, Any], where: str = "product_id") -> str:
    """The product id as a string; `sku` stands in when a client sent no `product_id`."""
    value = product_ref(props)
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{where} is required for Go Shops' item, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, str | int | float):
        raise MappingError(f"{where} must be a string or number for Go Shops, got {value!r}")
    text = str(value).strip()
    if not text:
        raise MappingError(f"{where} is empty")
    return text


def format_date(moment: datetime, date_format: str) -> str | int:
    if date_format == "iso8601":
        return moment.astimezone(UTC).isoformat(timespec="milliseconds")
    if date_format == "epoch_ms":
        return ev.epoch_ms(moment)
    if date_format == "epoch_s":
        return int(moment.timestamp())
    # check_config refuses this at start; reaching it means the settings were never checked.
    raise MappingError(f"date_format must be one of {', '.join(DATE_FORMATS)}, got {date_format!r}")


class GoShops(Vendor[GoShopsConfig]):
    name = "goshops"
    title = "Go Shops"
    config_class = GoShopsConfig
    default_base_url = "https://go-discover.goshops.com"
    handles = frozenset(EVENTS)

    def rate_limits(self, config: GoShopsConfig) -> list[RateLimit]:
        return [RateLimit(config.rate_limit_per_second, 1.0, scope="api_key")]

    def config_problems(self, config: GoShopsConfig) -> dict[str, str]:
        """Value problems the type-checking loader cannot see: {key: reason}."""
        problems: dict[str, str] = {}
        if config.date_format not in DATE_FORMATS:
            problems["date_format"] = (
                f"must be one of {', '.join(DATE_FORMATS)}, got {config.date_format!r}"
            )
        return problems

    def requests_for(self, event: StoredEvent, config: GoShopsConfig) -> list[VendorRequest]:
        return [VendorRequest.refused(data) if isinstance(data, str)
                else self._request(data, config) for data in self.interactions(event, config)]

    def interactions(self, event: StoredEvent,
                     config: GoShopsConfig) -> list[dict[str, Any] | str]:
        """The `data` objects for one event, before the envelope and headers; an order line
        that cannot be sent is its reason (a str) in its place."""
        kind = EVENTS.get(event.name)
        if kind is None:
            return []
        date = format_date(event.timestamp, config.date_format)
        customer = event.customer_id
        if event.name != ev.ORDER_COMPLETED:
            return [{"event": kind, "item": item_id(event.properties), "customer": customer,
                     "date": date}]
        lines = event.properties.get("products")
        if not isinstance(lines, list) or not lines:
            raise MappingError("Order Completed needs products[] for Go Shops' purchase calls")
        data: list[dict[str, Any] | str] = []
        problems = []
        for i, line in enumerate(lines):
            # One request per line, not per unit: the body has no quantity to repeat. A line
            # that cannot be sent is dead-lettered alone with its reason (the delivery layer
            # does that for a refusal in its place); it does not sink the others.
            try:
                if not isinstance(line, dict):
                    raise MappingError(f"products[{i}] must be an object")
                item = item_id(line, f"products[{i}].product_id")
            except MappingError as exc:
                problems.append(f"products[{i}]: {exc}")
                data.append(problems[-1])
                continue
            data.append({"event": kind, "item": item, "customer": customer, "date": date})
        if len(problems) == len(data):
            raise MappingError("no line of the order can be sent: " + "; ".join(problems))
        return data

    def _request(self, data: dict[str, Any], config: GoShopsConfig) -> VendorRequest:
        return VendorRequest(
            method="POST",
            url=f"{self.base_url(config)}/feedback",
            headers={"Content-Type": "application/json", "x-api-key": config.api_key},
            json={"project": config.project, "data": data},
        )


VENDOR = GoShops()
