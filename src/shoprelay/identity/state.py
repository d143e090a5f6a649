"""Per-visitor memory: user binding, contact traits, cart, session, recommendation blocks.

Vendors need things no single event carries: Yespo's StatusCart wants the whole cart, Advisable
wants the recommendation block a purchased product came from, every vendor wants the user id
after login. The relay keeps that state per visitor and folds each arriving event into it, in
arrival order, producing the event's `Enrichment`. This module is pure (ids and time are passed
in) so it behaves the same under any spool backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from shoprelay import events as ev
from shoprelay.events import (
    CART_STORE_FACTOR,
    MAX_CONTACT_CHARS,
    MAX_IDENTITY_COPY_BYTES,
    MAX_KEPT_ID_CHARS,
    CartLine,
    Enrichment,
    kept_text,
)
from shoprelay.vendors.base import product_ref

#: Most lines a visitor's cart keeps (beyond it the oldest line goes, recorded on the event as
#: `cart_dropped`): the whole cart is stored with the events that change or show it, so this
#: (with MAX_KEPT_ID_CHARS) bounds what one cart event stores (~1.5 KB with short ids, at
#: most ~16 KB) whatever a client sends.
MAX_CART_LINES = 100
#: How many product → recommendation-block links a visitor keeps (oldest dropped first).
MAX_BLOCK_LINKS = 200
#: Most bytes a visitor's state takes as stored (JSON): the state is read and rewritten with
#: every request of the visitor and copied in part into events, so a client must not grow
#: it at will (20 visitors of 5 MB each once raised RSS by 100 MB and every request of theirs
#: took 60-80 ms). Past it the oldest block links go first, then the oldest cart lines.
MAX_STATE_BYTES = 16 * 1024
#: Longest values of the state's own short fields: a campaign ("source|medium|name"), a
#: cart line's currency, the vendor that served a block. A longer one is not kept.
MAX_CAMPAIGN_CHARS = 256
MAX_CURRENCY_CHARS = 16
MAX_VENDOR_CHARS = 64
#: The most a state takes besides its cart and block links (every other field at its longest
#: kept), a cart line and a block link at their longest: a state that cannot pass the budget
#: by these is not measured (it is folded for every message).
_STATE_BASE_BYTES = 3072
_LINE_BYTES = MAX_KEPT_ID_CHARS + MAX_CURRENCY_CHARS + 64
_LINK_BYTES = 2 * MAX_KEPT_ID_CHARS + MAX_VENDOR_CHARS + 96
_UTM = ("source", "medium", "campaign", "term", "content")
#: The track event that ends a visitor's user binding (logout; the tracker's `reset()`).
SIGNED_OUT = "Signed Out"
_LIST_ID_EVENTS = frozenset(
    {ev.PRODUCT_VIEWED, ev.PRODUCT_ADDED, ev.PRODUCT_ADDED_TO_WISHLIST, ev.PRODUCT_REVIEWED,
     ev.PRODUCT_CLICKED, ev.PRODUCT_REMOVED}
)


@dataclass(slots=True)
class VisitorState:
    user_id: str | None = None
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    cart: list[CartLine] = field(default_factory=list)
    cart_id: str | None = None
    #: Counts the changes of the cart's composition (Yespo: a new GUID for every change, even
    #: back to an earlier composition).
    cart_version: int = 0
    #: product id → the recommendation block it was last shown, clicked in or added from:
    #: {"list": list_id, "vendor": who served it or None, "session": session id}. A link lasts
    #: for the visitor's session only (CONTRACT §3); links of stored states from before
    #: (bare list ids, no session) count as expired.
    blocks: dict[str, Any] = field(default_factory=dict)
    session_id: str = ""
    session_started: float = 0.0
    last_seen: float = 0.0
    campaign: str | None = None
    #: The identity facts last announced to vendors for this visitor (user_id, email, phone):
    #: an identify repeating them sends no identity call again.
    announced: dict[str, str] = field(default_factory=dict)
    #: The visitor's user id is an unsigned browser claim on a user the shop's backend (or a
    #: signed identify) bound to another visitor: no identity call carrying an email.
    claimed: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict (a recursive deep copy): it runs for every
        # visitor touched by every ingest request.
        return {
            "user_id": self.user_id, "email": self.email, "phone": self.phone,
            "name": self.name, "cart": [line.to_stored() for line in self.cart],
            "cart_id": self.cart_id, "cart_version": self.cart_version, "blocks": self.blocks,
            "session_id": self.session_id,
            "session_started": self.session_started, "last_seen": self.last_seen,
            "campaign": self.campaign, "announced": self.announced, "claimed": self.claimed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisitorState:
        data = dict(data)
        data["cart"] = [CartLine.from_stored(line) for line in data.get("cart", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def identity_traits(message: dict[str, Any]) -> dict[str, Any]:
    """What a message tells about its user: `context.traits` (RudderStack's SDK puts the
    user's traits there on every message, its identify included; Segment's spec allows it on
    any message), overlaid by an identify's own `traits`."""
    context = message.get("context")
    found = context.get("traits") if isinstance(context, dict) else None
    traits: dict[str, Any] = dict(found) if isinstance(found, dict) else {}
    own = message.get("traits") if message.get("type") == "identify" else None
    if isinstance(own, dict):
        traits.update(own)
    return traits


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _number(value: Any, default: float | None) -> float | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return value
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _product(props: dict[str, Any]) -> str | None:
    """`product_id`, else `sku` (the same fallback as every vendor adapter)."""
    return _text(product_ref(props))


def _kept_id(value: Any) -> str | None:
    """An id the state keeps (and copies into later events): None if over-long."""
    return kept_text(_text(value), MAX_KEPT_ID_CHARS)


def _line(props: dict[str, Any], notes: list[str] | None = None) -> CartLine | None:
    product = _kept_id(product_ref(props))
    if product is None:
        if notes is not None and _product(props) is not None:
            notes.append(f"state: a cart line's product id is longer than {MAX_KEPT_ID_CHARS} "
                         "characters, not kept in the cart")
        return None
    quantity = _number(props.get("quantity"), 1) or 1
    return CartLine(product, quantity, _number(props.get("price"), None),
                    kept_text(_text(props.get("currency")), MAX_CURRENCY_CHARS))


def campaign_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """`context.campaign`, or the utm_* parameters of the page URL when the client sent none
    (our tracker leaves them to the relay to stay small)."""
    context = message.get("context")
    if not isinstance(context, dict):
        return None
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        return campaign
    page = context.get("page")
    if not isinstance(page, dict):
        return None
    url = page.get("search") or page.get("url")
    if not isinstance(url, str) or "utm_" not in url:
        return None
    query = url.split("?", 1)[1] if "?" in url else url
    found = {key[4:]: values[0] for key, values in parse_qs(query).items()
             if key.startswith("utm_") and key[4:] in _UTM and values}
    return {("name" if k == "campaign" else k): v for k, v in found.items()} or None


def _campaign(message: dict[str, Any]) -> str | None:
    campaign = campaign_of(message)
    if not isinstance(campaign, dict):
        return None
    parts = [str(campaign.get(k, "")) for k in ("source", "medium", "name")]
    return "|".join(parts) if any(parts) else None


def apply(
    state: VisitorState,
    message: dict[str, Any],
    *,
    visitor_id: str,
    received_at: float,
    session_timeout: float,
    new_id: Callable[[], str],
    notes: list[str] | None = None,
) -> Enrichment:
    """Fold one accepted message into `state` (in place) and return its enrichment. What the
    state refused or cut to stay within its budget is told in `notes` (for the trace)."""
    told: list[str] = [] if notes is None else notes
    # Sessions follow the relay's clock: client clocks are often wrong.
    campaign = _campaign(message)
    if campaign is not None and len(campaign) > MAX_CAMPAIGN_CHARS:
        told.append(f"state: campaign not kept (longer than {MAX_CAMPAIGN_CHARS} characters)")
        campaign = None
    if (
        not state.session_id
        or received_at - state.last_seen > session_timeout
        or (campaign is not None and campaign != state.campaign)
    ):
        state.session_id = new_id()
        state.session_started = received_at
    if campaign is not None:
        state.campaign = campaign
    state.last_seen = received_at

    kind = message.get("type")
    name = message.get("event") if kind == "track" else kind
    raw_props = message.get("properties")
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    enrichment = Enrichment(visitor_id=visitor_id, received_at=received_at)

    if name == SIGNED_OUT and kind == "track":
        # Logout ends the binding but keeps the visitor (Retail Rocket: the session id must not
        # change on login or logout); the user's contact details go with the user. The next
        # login is announced again ("при ... успешной авторизации").
        state.user_id = state.email = state.phone = state.name = None
        state.announced = {}
    if kind == "identify":
        traits = identity_traits(message)
        user_id = _text(message.get("userId"))
        if user_id is not None and user_id != state.user_id:
            state.user_id = user_id
            enrichment.new_binding = True
        state.email = _text(traits.get("email")) or state.email
        state.phone = _text(traits.get("phone")) or state.phone
        state.name = _text(traits.get("name")) or state.name
        brought = {"user_id": user_id, "email": _text(traits.get("email")),
                   "phone": _text(traits.get("phone"))}
        _announce(state, enrichment, brought)
    elif name == ev.ORDER_COMPLETED and kind == "track":
        # A guest checkout leaves an email on the order itself; it is the buyer's.
        email = _text(props.get("email")) or state.email
        if email:
            state.email = email
            _announce(state, enrichment, {"email": email})

    product = _product(props)
    list_id = _text(props.get("list_id"))
    list_vendor = _text(props.get("recommendation_vendor"))
    if state.blocks and any(not isinstance(v, dict) or v.get("session") != state.session_id
                            for v in state.blocks.values()):
        # A new session forgets the links of the last one.
        state.blocks = {k: v for k, v in state.blocks.items()
                        if isinstance(v, dict) and v.get("session") == state.session_id}
    if list_id and name == ev.PRODUCT_LIST_VIEWED:
        enrichment.list_id, enrichment.list_vendor = list_id, list_vendor
        raw_shown = props.get("products")
        shown: list[Any] = raw_shown if isinstance(raw_shown, list) else []
        for line in shown:
            if isinstance(line, dict) and (pid := _product(line)):
                _link(state, pid, list_id, list_vendor)
    if product and list_id and name in (ev.PRODUCT_CLICKED, ev.PRODUCT_ADDED):
        _link(state, product, list_id, list_vendor)
    if product and name in _LIST_ID_EVENTS:
        if list_id:
            enrichment.list_id, enrichment.list_vendor = list_id, list_vendor
        elif (link := state.blocks.get(product)) is not None:
            enrichment.list_id, enrichment.list_vendor = link["list"], link.get("vendor")

    if name in (ev.PRODUCT_ADDED, ev.PRODUCT_REMOVED, ev.CART_VIEWED):
        before = list(state.cart)
        _update_cart(state, name, props, new_id, told)
        if dropped := _cap_cart(state):
            # A cart is stored with every cart event: unbounded, one visitor's 1,000 additions
            # made the spool grow quadratically. The oldest lines go, and the event says so.
            enrichment.extra["cart_dropped"] = dropped
        if state.cart != before:
            state.cart_version += 1
        else:
            # Provisional: `bound_carts` decides whether this event stores the cart anyway.
            enrichment.extra["cart_unchanged"] = state.cart_version
        enrichment.cart = list(state.cart)
        enrichment.cart_id = state.cart_id
        enrichment.cart_version = state.cart_version
    elif name == ev.ORDER_COMPLETED:
        raw_lines = props.get("products")
        lines: list[Any] = raw_lines if isinstance(raw_lines, list) else []
        links, owners = {}, {}
        for line in lines:
            if isinstance(line, dict) and (pid := _product(line)):
                if _text(line.get("list_id")):
                    links[pid] = _text(line.get("list_id"))
                    owner = _text(line.get("recommendation_vendor"))
                elif (link := state.blocks.get(pid)) is not None:
                    links[pid], owner = link["list"], link.get("vendor")
                else:
                    continue
                if owner:
                    owners[pid] = owner
        enrichment.extra["line_list_ids"] = links
        if owners:
            enrichment.extra["line_list_vendors"] = owners
        # The purchased cart is done with: the next addition starts a new cart id.
        enrichment.cart = []
        enrichment.cart_id = state.cart_id
        enrichment.cart_version = state.cart_version + 1
        state.cart = []
        state.cart_id = None
        state.cart_version = 0

    if dropped := fit_state(state, told):
        enrichment.extra.setdefault("cart_dropped", []).extend(dropped)
        if enrichment.cart is not None:
            enrichment.cart = list(state.cart)
    # The cart id goes only with the cart events and the purchase (Yespo's GUID, Alana's
    # cartId): no adapter reads it on any other event.
    enrichment.user_id = state.user_id
    # Copied into every later event of the visitor: an over-long value (no real address,
    # number or name) is not, or one identify would be stored again with each event.
    enrichment.email = kept_text(state.email, MAX_CONTACT_CHARS["email"])
    enrichment.phone = kept_text(state.phone, MAX_CONTACT_CHARS["phone"])
    enrichment.name = kept_text(state.name, MAX_CONTACT_CHARS["name"])
    _bound_identity_copy(enrichment, told)
    enrichment.session_id = state.session_id
    enrichment.session_started = state.session_started
    _context(enrichment, message)
    return enrichment


def _bound_identity_copy(enrichment: Enrichment, notes: list[str]) -> None:
    """Keep the event's copy of the visitor's identity within MAX_IDENTITY_COPY_BYTES (what
    ingest charged each message for it): the name goes first, then the phone, the email."""
    parts = {"user_id": enrichment.user_id, "email": enrichment.email,
             "phone": enrichment.phone, "name": enrichment.name}
    size = sum(len(k) + len(v.encode()) + 6 for k, v in parts.items() if v)
    for key in ("name", "phone", "email"):
        value = parts[key]
        if size <= MAX_IDENTITY_COPY_BYTES:
            return
        if value:
            setattr(enrichment, key, None)
            size -= len(key) + len(value.encode()) + 6
            notes.append(f"event: the visitor's {key} not copied (the identity an event "
                         f"copies is at most {MAX_IDENTITY_COPY_BYTES} bytes)")


def fit_state(state: VisitorState, notes: list[str]) -> list[str]:
    """Keep `state` within its budget: contact details longer than any real one are not kept
    (MAX_CONTACT_CHARS), then, past MAX_STATE_BYTES, the oldest block links go and then the
    oldest cart lines (their product ids are returned). Each cut is told in `notes`."""
    for key in ("email", "phone", "name"):
        value = getattr(state, key)
        if value is not None and len(value) > MAX_CONTACT_CHARS[key]:
            setattr(state, key, None)
            notes.append(f"state: {key} not kept (longer than {MAX_CONTACT_CHARS[key]} "
                         "characters)")
    if any(len(v) > MAX_CONTACT_CHARS.get(k, MAX_KEPT_ID_CHARS * 2)
           for k, v in state.announced.items() if isinstance(v, str)):
        state.announced = {k: v for k, v in state.announced.items() if isinstance(v, str)
                           and len(v) <= MAX_CONTACT_CHARS.get(k, MAX_KEPT_ID_CHARS * 2)}
    if (_STATE_BASE_BYTES + _LINE_BYTES * len(state.cart) + _LINK_BYTES * len(state.blocks)
            <= MAX_STATE_BYTES):
        return []  # within the budget whatever its ids hold: no need to measure it
    size = len(orjson.dumps(state.to_dict()))
    if size <= MAX_STATE_BYTES:
        return []
    links = len(state.blocks)
    while state.blocks and size > MAX_STATE_BYTES:
        product = next(iter(state.blocks))
        size -= len(orjson.dumps({product: state.blocks.pop(product)})) - 1
    dropped: list[str] = []
    while state.cart and size > MAX_STATE_BYTES:
        line = state.cart.pop(0)
        dropped.append(line.product_id)
        size -= len(orjson.dumps(line.to_stored())) + 1
    if links != len(state.blocks):
        notes.append(f"state: {links - len(state.blocks)} oldest recommendation block "
                     f"link(s) forgotten to stay within {MAX_STATE_BYTES} bytes")
    if dropped:
        notes.append(f"state: {len(dropped)} oldest cart line(s) dropped to stay within "
                     f"{MAX_STATE_BYTES} bytes")
    return dropped


def bound_carts(
    events: Sequence[tuple[str, Sequence[str], dict[str, Any], Enrichment]],
) -> None:
    """Bound the carts one request stores: (visitor id, vendors, message, enrichment) of each
    event the request stores, in order; trims the enrichments in place.

    The whole cart goes with every event that changes or shows it (Yespo's StatusCart
    carries the whole cart), so a batch of 1,000 additions stored the 100-line cart 1,000
    times, 50× the request. A visitor's last cart event of the request always keeps its cart
    (it is the composition the vendor must end with); from there back, the earlier ones keep
    theirs while the request's carts stay within CART_STORE_FACTOR times the bytes of its
    messages' `properties` (what the client itself sent about the products; a batch context
    would count once per message). The events before that store no cart, and
    `extra["cart_later"]` names the message that sends the visitor's cart as it ended. An
    ordinary request (a few cart events) loses nothing.

    A cart event that changed nothing (a view, a removal of what the cart does not hold;
    `extra["cart_unchanged"]` gives the cart's version) stores its cart only while that costs
    at most CART_STORE_FACTOR times the event's own bytes: Yespo's StatusCart is "sent after
    the cart status is changed", and a bare `Cart Viewed` of 100 bytes stored a 16 KB cart."""
    for _visitor, _vendors, message, enrichment in events:
        if enrichment.cart is None or "cart_unchanged" not in enrichment.extra:
            continue
        if (len(orjson.dumps([line.to_stored() for line in enrichment.cart]))
                > CART_STORE_FACTOR * len(orjson.dumps(message))):
            enrichment.cart = None
        else:
            del enrichment.extra["cart_unchanged"]
    last: dict[tuple[str, frozenset[str]], str] = {}
    several = False
    for visitor, vendors, message, enrichment in events:
        if enrichment.cart is not None:
            key = (visitor, frozenset(vendors))
            several = several or key in last
            last[key] = str(message.get("messageId", ""))
    if not several:
        return
    budget = CART_STORE_FACTOR * sum(len(orjson.dumps(message.get("properties")))
                                     for _, _, message, _ in events)
    spent = 0
    exhausted = False
    kept: set[tuple[str, frozenset[str]]] = set()
    for visitor, vendors, _message, enrichment in reversed(events):
        if enrichment.cart is None:
            continue
        key = (visitor, frozenset(vendors))
        cost = len(orjson.dumps([line.to_stored() for line in enrichment.cart]))
        if key not in kept:
            kept.add(key)  # the visitor's last cart event of the request
        elif enrichment.cart and (exhausted or spent + cost > budget):
            # (An empty cart, as a purchase leaves it, costs two bytes: always kept.)
            exhausted = True
            enrichment.cart = None
            enrichment.extra["cart_later"] = last[key]
            continue
        spent += cost


def _link(state: VisitorState, product: str, list_id: str, vendor: str | None) -> None:
    if len(product) > MAX_KEPT_ID_CHARS or len(list_id) > MAX_KEPT_ID_CHARS:
        return  # a link is copied into later events: over-long ids are not kept
    vendor = kept_text(vendor, MAX_VENDOR_CHARS)
    state.blocks.pop(product, None)
    state.blocks[product] = {"list": list_id, "vendor": vendor, "session": state.session_id}
    while len(state.blocks) > MAX_BLOCK_LINKS:
        state.blocks.pop(next(iter(state.blocks)))


def _announce(state: VisitorState, enrichment: Enrichment, brought: dict[str, Any]) -> None:
    """Mark the event as an identity event when it brings a user id, email or phone not yet
    announced for this visitor; identical repeats stay quiet."""
    fresh = {k: v for k, v in brought.items() if v and state.announced.get(k) != v}
    if fresh:
        enrichment.new_identity = True
        state.announced = {**state.announced, **fresh}


def _context(enrichment: Enrichment, message: dict[str, Any]) -> None:
    """The UTM campaign, which may come from the page URL's parameters. (The page URL,
    referrer and locale are in the stored message itself: copying them only stored them
    twice.)"""
    context = message.get("context")
    if not isinstance(context, dict):
        return
    campaign = campaign_of(message)
    if isinstance(campaign, dict):
        kept = {k: str(v) for k, v in campaign.items()
                if k in ("source", "medium", "name", "term", "content") and _text(v)}
        enrichment.campaign = kept or None


def _cap_cart(state: VisitorState) -> list[str]:
    """Keep the cart within MAX_CART_LINES, dropping the oldest lines; returns their ids."""
    dropped = [line.product_id for line in state.cart[:-MAX_CART_LINES]]
    if dropped:
        state.cart = state.cart[-MAX_CART_LINES:]
    return dropped


def _update_cart(
    state: VisitorState, name: str, props: dict[str, Any], new_id: Callable[[], str],
    notes: list[str],
) -> None:
    shop_cart_id = _kept_id(props.get("cart_id"))
    if shop_cart_id is None and _text(props.get("cart_id")) is not None:
        notes.append(f"state: cart_id longer than {MAX_KEPT_ID_CHARS} characters, not kept")
    if shop_cart_id:
        state.cart_id = shop_cart_id
    elif state.cart_id is None:
        state.cart_id = new_id()

    if name == ev.CART_VIEWED:
        products = props.get("products")
        if isinstance(products, list):
            # A cart view that lists the products is the truth: it replaces what we kept.
            lines = [_line(p, notes) for p in products if isinstance(p, dict)]
            state.cart = [line for line in lines if line is not None]
        return
    line = _line(props, notes)
    if line is None:
        return
    index = next((i for i, held in enumerate(state.cart) if held.product_id == line.product_id),
                 None)
    if name == ev.PRODUCT_ADDED:
        if index is None:
            state.cart.append(line)
        else:
            held = state.cart[index]
            state.cart[index] = CartLine(
                held.product_id, held.quantity + line.quantity,
                line.price if line.price is not None else held.price,
                line.currency or held.currency,
            )
        return
    if index is None:
        return
    held = state.cart[index]
    if "quantity" in props and line.quantity < held.quantity:
        state.cart[index] = CartLine(held.product_id, held.quantity - line.quantity,
                                     held.price, held.currency)
    else:
        del state.cart[index]
