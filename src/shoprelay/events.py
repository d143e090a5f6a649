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
#: The events that store the visitor's cart (with the purchase, which stores it emptied).
CART_ADDED_REMOVED_VIEWED = frozenset({PRODUCT_ADDED, PRODUCT_REMOVED, CART_VIEWED})


# ---- What one request may make the relay store ----------------------------------------------
# Every stored event is the message as sent (validation bounds that: 32 KB a message, and
# what a request keeps at most STORE_FACTOR times its body, each message charged its own
# bytes, its enrichment, its work rows and the cart copies it may store) plus the
# enrichment below. What the enrichment copies from elsewhere — the request's headers, the
# visitor's state — is stored once per event, so each such copy is bounded here: without a
# bound, one long value is stored again with every later event (a 30 KB User-Agent header on
# a batch of 500 bare `page` messages stored 15 MB).

#: Characters of the User-Agent header kept on an event (longer ones are cut). Browsers send
#: well under 512; only the `bot` flag, decided on the whole header, depends on it.
MAX_USER_AGENT_CHARS = 512
#: An id the visitor's state keeps and copies into later events — a cart line's product id,
#: the shop's cart id, a recommendation block id — is kept only up to this length (a longer
#: one is no id a vendor's catalogue holds; the event that sent it still stores it as sent).
MAX_KEPT_ID_CHARS = 128
#: Longest `userId` accepted (validation refuses a message with a longer one): the user id
#: is copied into every later event of the visitor.
MAX_USER_ID_CHARS = 256
#: Contact details copied into every event of the visitor (RFC 5321: an address has at most
#: 254 characters; E.164 numbers 15 digits, formatted ones more). A longer value is not copied.
MAX_CONTACT_CHARS = {"email": 254, "phone": 64, "name": 256}
#: What an event copies of its visitor's identity (user id, email, phone, name as JSON, keys
#: included) at most: a real one takes ~120 bytes, the longest user id accepted 269. Past it
#: the name, then the phone, then the email are left out of that event (the user id always
#: fits), and every message is charged this much at ingest, whatever the state holds.
MAX_IDENTITY_COPY_BYTES = 300
#: The carts a request stores beyond each visitor's last cart event in it: at most this many
#: times the request's own bytes (see `identity.state.bound_carts`).
CART_STORE_FACTOR = 4


def kept_text(value: str | None, limit: int) -> str | None:
    """`value` if it fits in `limit` characters, else None (an over-long value is not kept)."""
    return value if value is None or len(value) <= limit else None


def stored_user_agent(user_agent: str | None) -> str | None:
    return user_agent[:MAX_USER_AGENT_CHARS] if user_agent else user_agent


@dataclass(frozen=True, slots=True)
class CartLine:
    """One line of a visitor's cart as the relay keeps it (for Yespo's whole-cart StatusCart)."""

    product_id: str
    quantity: float = 1
    price: float | None = None
    currency: str | None = None

    def to_stored(self) -> list[Any]:
        """The line as stored: `[product_id, quantity, price, currency]`, trailing unknowns
        left off (`["p1", 2, 9.5]`). A cart is stored with every event that changes or shows
        it, so the keys of the older dict form (~50 bytes a line) were most of the spool."""
        stored: list[Any] = [self.product_id, self.quantity, self.price, self.currency]
        while stored[-1] is None:
            stored.pop()
        return stored

    def to_dict(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "quantity": self.quantity, "price": self.price,
                "currency": self.currency}

    @classmethod
    def from_stored(cls, value: Any) -> CartLine:
        """A stored line: the list form, or the dict form older releases stored."""
        if isinstance(value, dict):
            return cls(**value)
        return cls(*value)


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
    #: The rules accepted the binding this event made (its user → visitor binding was
    #: written): by the server API or a signed message, or, on a site without
    #: identify_secret, an unsigned claim that moved no strong binding. Advisable's transfer
    #: merges the visitor's history into the user's for good, so it goes only on these.
    binding_accepted: bool = False
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    #: The whole cart after this event; set only on events that change or show the cart
    #: (Product Added / Removed, Cart Viewed; `[]` on Order Completed: the purchase emptied
    #: it). None on such an event too when a later event of the same request stores the
    #: visitor's cart (`extra["cart_later"]` names it; see `identity.state.bound_carts`).
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
    #: At most MAX_USER_AGENT_CHARS. (The referrer, page URL and locale are not copied here:
    #: they are the message's own `context.page` / `context.locale`, and no adapter read the
    #: copies; events stored by older releases may still hold them, and they are ignored.)
    user_agent: str | None = None
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
                    data["cart"] = [line.to_stored() for line in value]
            elif name == "source":
                if value != "browser":  # the default: most events come from the browser
                    data[name] = value
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
            kwargs["cart"] = [CartLine.from_stored(line) for line in cart]
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
        # Asked per vendor by routing and the rules for every event: one lookup, not three.
        message = self.message
        kind = message.get("type", "")
        if kind == "track":
            return str(message.get("event", ""))
        return str(kind)

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
