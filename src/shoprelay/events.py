"""The canonical event as it is stored in the spool and handed to vendor adapters.

A stored event is the validated Segment-shaped message exactly as the client sent it (plus a
`messageId` and `timestamp` when the client sent none), together with the relay's enrichment:
who the visitor is, which user they are bound to, what their cart holds *after* this event, and
which recommendation block a product came from. The enrichment is computed once, at ingest, in
arrival order, and stored beside the message. That is what lets adapters stay pure functions:
rendering the same stored event twice gives the same vendor requests, so a retry is always the
same request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

# Canonical names used by the vendor mapping (CONTRACT §2).
PAGE = "page"
IDENTIFY = "identify"
PRODUCT_LIST_VIEWED = "Product List Viewed"
PRODUCT_VIEWED = "Product Viewed"
PRODUCTS_SEARCHED = "Products Searched"
PRODUCT_ADDED = "Product Added"
PRODUCT_REMOVED = "Product Removed"
CART_VIEWED = "Cart Viewed"
PRODUCT_ADDED_TO_WISHLIST = "Product Added to Wishlist"
PRODUCT_CLICKED = "Product Clicked"
PROMOTION_VIEWED = "Promotion Viewed"
PROMOTION_CLICKED = "Promotion Clicked"
PRODUCT_REVIEWED = "Product Reviewed"
ORDER_COMPLETED = "Order Completed"
#: A catalogue update from the shop's backend (server API only; Yespo's ProductUpdate).
PRODUCT_UPDATED = "Product Updated"


@dataclass(frozen=True, slots=True)
class CartLine:
    """One line of a visitor's cart as the relay keeps it (for Yespo's whole-cart StatusCart)."""

    product_id: str
    quantity: float = 1
    price: float | None = None
    currency: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "quantity": self.quantity, "price": self.price,
                "currency": self.currency}


@dataclass(slots=True)
class Enrichment:
    """What the relay knows about the event's visitor at the moment the event arrived."""

    visitor_id: str
    session_id: str = ""
    user_id: str | None = None
    #: True on the `identify` that created a new visitor → user binding (identity calls go once).
    new_binding: bool = False
    #: True when the event told the relay something new about who the visitor is: an
    #: identify bringing a user id, email or phone not yet announced for this visitor, or an
    #: Order Completed with a new email. Identity calls (Retail Rocket setContact, Yespo
    #: CustomerData) go on these, and identical repeats do not.
    new_identity: bool = False
    #: The user id is an unsigned browser claim the shop did not vouch for (its backend bound
    #: that user to another visitor): adapters send no identity call carrying an email.
    claimed_identity: bool = False
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    #: The whole cart after this event; set only on events that touch the cart.
    cart: list[CartLine] | None = None
    #: A stable id of the visitor's current cart (a new one after the cart empties on purchase).
    cart_id: str | None = None
    #: How many times that cart's composition changed up to this event (0 = not counted).
    cart_version: int = 0
    #: The recommendation block the event's product was shown/clicked in (`list_id`), if known.
    list_id: str | None = None
    #: The vendor that served that block (CONTRACT §3: a block's id goes only to its vendor);
    #: None = not known, which the adapters read as "not theirs" unless the site names one.
    list_vendor: str | None = None
    #: When the visitor's current session began (relay clock, epoch seconds).
    session_started: float = 0.0
    ip: str | None = None
    user_agent: str | None = None
    referrer: str | None = None
    page_url: str | None = None
    locale: str | None = None
    #: UTM campaign (`context.campaign`: source, medium, name, term, content).
    campaign: dict[str, str] | None = None
    #: Consent per category as the client (and Sec-GPC) stated it; absent = not stated.
    consent: dict[str, bool] | None = None
    #: Flagged as a crawler or headless tool by its user agent.
    bot: bool = False
    #: "browser" (the tracker, analytics.js) or "server" (the shop's backend, server key).
    source: str = "browser"
    received_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict: this runs for every stored event, and
        # asdict's recursive deep copy was 40 % of the spool writer's time.
        data: dict[str, Any] = {}
        for name in _ENRICHMENT_FIELDS:
            value = getattr(self, name)
            if name == "cart":
                if value is not None:
                    data["cart"] = [line.to_dict() for line in value]
            elif value not in (None, {}, "", False):
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Enrichment:
        data = dict(data)
        cart = data.pop("cart", None)
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        if cart is not None:
            kwargs["cart"] = [CartLine(**line) for line in cart]
        return cls(**kwargs)


_ENRICHMENT_FIELDS = tuple(f.name for f in fields(Enrichment))


@dataclass(slots=True)
class StoredEvent:
    """A canonical message plus its enrichment: the input of every vendor adapter."""

    site: str
    message: dict[str, Any]
    enrichment: Enrichment

    @property
    def type(self) -> str:
        return str(self.message.get("type", ""))

    @property
    def name(self) -> str:
        """The canonical name: the track event's name, else the message type."""
        if self.type == "track":
            return str(self.message.get("event", ""))
        return self.type

    @property
    def properties(self) -> dict[str, Any]:
        props = self.message.get("properties")
        return props if isinstance(props, dict) else {}

    @property
    def traits(self) -> dict[str, Any]:
        traits = self.message.get("traits")
        if not isinstance(traits, dict):
            traits = (self.message.get("context") or {}).get("traits")
        return traits if isinstance(traits, dict) else {}

    @property
    def message_id(self) -> str:
        return str(self.message.get("messageId", ""))

    @property
    def timestamp(self) -> datetime:
        """When the event happened (the client's clock, as Segment's spec says), timezone-aware."""
        return parse_timestamp(self.message.get("timestamp"), self.enrichment.received_at)

    @property
    def customer_id(self) -> str:
        """The user id once identified, else the visitor id."""
        return self.enrichment.user_id or self.enrichment.visitor_id

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "message": self.message, "enrichment": self.enrichment.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredEvent:
        return cls(data["site"], data["message"], Enrichment.from_dict(data["enrichment"]))


def parse_timestamp(value: Any, fallback_epoch: float) -> datetime:
    """Read an ISO-8601 timestamp; naive ones are taken as UTC; bad ones fall back to arrival."""
    if isinstance(value, str) and value:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(fallback_epoch or 0, tz=UTC)


def epoch_ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))
