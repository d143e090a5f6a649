"""Checking Segment-shaped messages one by one (CONTRACT §1).

Each message of a batch is judged on its own: a bad one is reported with its index and reason
and the good ones around it are kept. Validation only rejects what would make a message useless
or dangerous; unknown fields are kept as sent (analytics.js and RudderStack add their own).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from shoprelay.events import (
    CART_ADDED_REMOVED_VIEWED,
    CART_STORE_FACTOR,
    MAX_IDENTITY_COPY_BYTES,
    MAX_USER_ID_CHARS,
    PRODUCT_LIST_VIEWED,
    PRODUCT_UPDATED,
)
from shoprelay.identity.state import MAX_STATE_BYTES

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
#: Messages one request may carry: Segment's clients batch a few hundred at most (analytics.js
#: sends one, its server libraries up to 100), so past this each further message is refused
#: on its own (`too_many`, the earlier ones kept).
MAX_BATCH_MESSAGES = 500
#: What one request may make the relay keep — its messages as stored (the relay's own fields
#: and the batch context merged in), what the relay stores beside each (enrichment, the
#: User-Agent, the copied visitor state) and its work rows — is at most this many times its
#: (decompressed) body, besides the request's first message, which is judged on its own
#: limits only. Messages past it are refused one by one (`over_budget`).
STORE_FACTOR = 10
#: Kept free in every request besides its first message: the floor below is an upper bound
#: (it charges the longest identity copy to every message), so a lean, ordinary batch — ten
#: ~150-byte `Product Viewed` from a server library, to five vendors — sits right at ten times
#: its body and would lose a message. A flood still meets the factor: 8 KB is a few messages.
REQUEST_ALLOWANCE = 8 * 1024
#: What the relay stores beside any message, the bare `{"type":"page"}` included: the visitor
#: and session ids, clocks, IP, flags, the event's wrapping (measured ~245 bytes on both
#: spools), and the visitor's identity it may copy (events.MAX_IDENTITY_COPY_BYTES). A
#: message is charged at least this plus its User-Agent and work rows, so a small compressed
#: body of thousands of tiny messages cannot store a thousand times its size.
ENRICHMENT_BYTES = 256 + MAX_IDENTITY_COPY_BYTES
#: What one unit of delivery work keeps (a row and its index entries; measured ~160-190 bytes
#: in SQLite, a stream entry in Redis); a message is charged one per vendor of its site
#: that maps its event.
WORK_ROW_BYTES = 160
#: Traits a message may carry (an identify's `traits`, any message's `context.traits`): how
#: many, and how long each value may be as JSON. Real profiles hold a few dozen short fields.
MAX_TRAITS = 50
MAX_TRAIT_BYTES = 1024
#: Levels of nesting the spool and the debugger wrap a message in when they serialise it
#: (orjson refuses to write more than 254 levels; a message must still fit inside them).
_WRAPPING_LEVELS = 4
#: The deepest message that is stored (a deeper one is refused on its own, with a reason).
MAX_DEPTH = 254 - _WRAPPING_LEVELS
#: The strings of a valid JSON text (each quote outside a string opens one, so scanning from
#: the left finds them exactly), with the colon that makes one a key; and, outside strings,
#: integers long enough to leave 64 bits.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"[ \t\r\n]*(:)?|(?<![\d.eE+-])(-?\d{19,})(?![\d.eE])')
MESSAGE_TYPES = frozenset({"page", "track", "identify", "alias", "group", "screen"})
#: One-letter route forms used by analytics.js.
SHORT_TYPES = {"t": "track", "p": "page", "i": "identify", "a": "alias", "g": "group",
               "s": "screen"}
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_STRING_FIELDS = ("event", "name", "category", "userId", "anonymousId", "previousId",
                  "groupId")
#: Fields the relay and the vendors add up or multiply (cart lines, order totals): beyond
#: this they overflow (1e308 + 1e308 is inf, stored as null; two integers past 2**63 leave
#: the 64 bits JSON writers take), which failed that visitor's later events with a 500.
_AMOUNT_FIELDS = frozenset({"quantity", "price", "revenue", "total", "subtotal", "value",
                            "shipping", "tax", "discount"})
MAX_AMOUNT = 1e15


class BadRequest(Exception):
    """The whole request is unusable (not JSON, not an object, too large)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Rejection:
    index: int
    message_id: str | None
    error: str
    #: A short, stable reason for metrics (`shoprelay_messages_rejected_total{reason}`).
    code: str = "invalid"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "messageId": self.message_id, "error": self.error}


@dataclass(slots=True)
class Checked:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_body(raw: bytes) -> dict[str, Any]:
    """Strict JSON: valid UTF-8, no NaN, integers within 64 bits, nesting under 1024 levels
    (orjson's rules), and no object with the same key twice."""
    if not raw.strip():
        raise BadRequest(400, "empty body: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "expected a JSON object")
    # Duplicate keys vanish when parsed (and an integer beyond 64 bits becomes a rounded
    # float), so a text that re-serialises to itself byte for byte has neither: that is what
    # JSON.stringify produces, and the common case costs one dumps. Comparing lengths is not
    # enough ({"q":0,"q":1e6} re-serialises to its own length): anything else gets the exact
    # check.
    try:
        canonical = orjson.dumps(body) == raw
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
        canonical = False
    if not canonical:
        _refuse_duplicates_and_overflow(raw, body)
    return body


def _refuse_duplicates_and_overflow(raw: bytes, body: dict[str, Any]) -> None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(400, f"duplicate key {key[:60]!r} in a JSON object")
            seen.add(key)
        return {}

    def int64(text: str) -> int:
        _check_int64(text)
        return 0

    try:
        json.loads(raw, object_pairs_hook=pairs_hook, parse_int=int64)
    except (ValueError, RecursionError):
        # Deeper than the stdlib parser goes (orjson allows 1024 levels): count instead.
        _refuse_by_counting(raw, body)


def _refuse_by_counting(raw: bytes, body: dict[str, Any]) -> None:
    """The same rules without recursion: the text must spell as many keys as the parsed
    document holds, and no integer token may leave 64 bits."""
    tokens = _TOKEN.findall(raw)
    for _, digits in tokens:
        if digits:
            _check_int64(digits.decode())
    if sum(1 for colon, _ in tokens if colon) != _keys_in_value(body):
        raise BadRequest(400, "duplicate key in a JSON object")


def _check_int64(text: str) -> None:
    if len(text) >= 19 and not -(2**63) <= int(text) < 2**64:
        raise BadRequest(400, f"number out of range: {text[:40]}")


def _keys_in_value(value: Any) -> int:
    """How many keys the parsed document holds, walked without recursion."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count


def _server_only(message: Any, type_hint: str) -> bool:
    kind = type_hint or (message.get("type") if isinstance(message, dict) else None)
    return (kind == "track" and isinstance(message, dict)
            and message.get("event") == PRODUCT_UPDATED)


def message_floor(user_agent_chars: int) -> int:
    """What the relay keeps for any message of a request beside the message itself and its
    work rows: its enrichment and the User-Agent as stored."""
    return ENRICHMENT_BYTES + user_agent_chars


def check_messages(
    messages: list[Any], *, batch_context: Any = None, received_at: float, type_hint: str = "",
    body_bytes: int | None = None, server: bool = False, floor: int = 0,
    fanout: Mapping[str, int] | None = None,
) -> Checked:
    """Validate and complete each message (messageId, timestamp, context from the batch).

    Sizes are of the message as it will be stored, the batch context merged in. With
    `body_bytes` (the request's decompressed size), each message is charged its stored size
    plus `floor` (see `message_floor`) and a work row for each vendor `fanout` says takes
    its event (twice when it carries an identity the rules store as an identify of its own)
    plus what it adds to the visitor's state, and messages past
    STORE_FACTOR times the body are refused one by one; those before are kept, and the first
    message is charged nothing against it (the bound is STORE_FACTOR times the body plus the
    first message and REQUEST_ALLOWANCE). Past
    MAX_BATCH_MESSAGES, every further message is refused (`too_many`).
    """
    checked = Checked()
    received_iso = datetime.fromtimestamp(received_at, UTC).isoformat(timespec="milliseconds")
    budget = None if body_bytes is None else STORE_FACTOR * body_bytes + REQUEST_ALLOWANCE
    stored = 0
    ids: set[str] = set()
    carts: set[tuple[str, str]] = set()
    for index, message in enumerate(messages):
        message_id = message.get("messageId") if isinstance(message, dict) else None
        problem = _problem(message, type_hint)
        if problem is None and index >= MAX_BATCH_MESSAGES:
            problem = ("too_many", f"this request carries {len(messages)} messages; at most "
                                   f"{MAX_BATCH_MESSAGES} are accepted per request: send the "
                                   "rest in another request")
        if problem is None and not server and _server_only(message, type_hint):
            # Only the shop's backend speaks for its catalogue: a page could otherwise
            # rewrite prices and stock at the vendors.
            problem = ("server_only", f"{PRODUCT_UPDATED} is a catalogue update: only the "
                                      "shop's backend may send it (server API, server key)")
        if problem is None:
            assert isinstance(message, dict)
            problem = _traits_problem(message)
        completed: dict[str, Any] = {}
        charge = 0
        if problem is None:
            assert isinstance(message, dict)
            completed = _completed(message, batch_context, type_hint, received_iso)
            problem, size = _size_problem(completed)
            rows = fanout or {}
            charge = size + floor + WORK_ROW_BYTES * rows.get(_event_name(completed), 0)
            if _carries_identity(completed):
                charge += floor + WORK_ROW_BYTES * rows.get("identify", 0)
            charge += _state_charge(completed)
            if completed.get("event") in CART_ADDED_REMOVED_VIEWED:
                # Each visitor's last cart event of the request stores that visitor's whole
                # cart (up to its state's budget): one visitor's is the request's bounded
                # exception; a cookie-less request naming more (by anonymousId) pays for
                # each further one.
                owner = (str(completed.get("anonymousId")), str(completed.get("userId")))
                if carts and owner not in carts:
                    charge += MAX_STATE_BYTES
            if completed["messageId"] in ids:
                charge = 0  # a resend of a message accepted above: stored once
            if not checked.accepted:
                # The first message is judged on its own limits (a one-message request of
                # 60 bytes cannot keep less than ten times that): it is not charged.
                charge = 0
            if problem is None and budget is not None and stored + charge > budget:
                problem = ("over_budget", (
                    "this request would make the relay keep more than "
                    f"{STORE_FACTOR} times its body: each message is charged what it "
                    f"stores, at least {floor} bytes beside itself and its work, and a batch "
                    "context is copied into every message; send fewer, fuller messages per "
                    "request"))
        if problem is not None:
            code, error = problem
            checked.rejected.append(
                Rejection(index, message_id if isinstance(message_id, str) else None, error,
                          code))
            continue
        stored += charge
        ids.add(completed["messageId"])
        if completed.get("event") in CART_ADDED_REMOVED_VIEWED:
            carts.add((str(completed.get("anonymousId")), str(completed.get("userId"))))
        checked.accepted.append(completed)
    return checked


def _event_name(message: dict[str, Any]) -> str:
    """The canonical name vendors map (events.StoredEvent.name)."""
    kind = str(message.get("type", ""))
    return str(message.get("event", "")) if kind == "track" else kind


def _state_charge(message: dict[str, Any]) -> int:
    """What a message may add to its visitor's state and copy from it again: a cart event
    its products (and the cart copies `identity.state.bound_carts` allows), a list view its
    block links. Other messages keep nothing of their own in the state."""
    name = message.get("event") if message.get("type") == "track" else None
    if name in CART_ADDED_REMOVED_VIEWED:
        return (CART_STORE_FACTOR + 1) * len(orjson.dumps(message.get("properties")))
    if name == PRODUCT_LIST_VIEWED:
        return len(orjson.dumps(message.get("properties")))
    return 0


def _carries_identity(message: dict[str, Any]) -> bool:
    """Whether the rules may store an identify of its own beside the message (its userId or
    `context.traits`, new for the visitor: `shoprelay.rules.fold`)."""
    if message.get("type") == "identify":
        return False
    context = message.get("context")
    return bool(message.get("userId")) or (isinstance(context, dict)
                                           and bool(context.get("traits")))


def _traits_problem(message: dict[str, Any]) -> tuple[str, str] | None:
    """Traits go to vendors' profiles and, as an identify of their own, into the spool: at
    most MAX_TRAITS of them, each at most MAX_TRAIT_BYTES as JSON."""
    context = message.get("context")
    for where, traits in (("traits", message.get("traits")),
                          ("context.traits", context.get("traits")
                           if isinstance(context, dict) else None)):
        if not isinstance(traits, dict):
            continue
        if len(traits) > MAX_TRAITS:
            return "bad_traits", (f"{where} holds {len(traits)} traits; at most {MAX_TRAITS} "
                                  "are accepted")
        for key, value in traits.items():
            if isinstance(value, str | int | float | bool) or value is None:
                size = len(str(value)) if isinstance(value, str) else 8
            else:
                try:
                    size = len(orjson.dumps(value))
                except orjson.JSONEncodeError:
                    size = MAX_TRAIT_BYTES + 1
            if size > MAX_TRAIT_BYTES or len(key) > MAX_TRAIT_BYTES:
                return "bad_traits", (f"{where}.{key[:40]} is longer than {MAX_TRAIT_BYTES} "
                                      "bytes; a trait is a short profile field")
    return None


def _completed(message: dict[str, Any], batch_context: Any, type_hint: str,
               received_iso: str) -> dict[str, Any]:
    """The message as stored (the relay's fields added, the batch context merged in)."""
    completed = dict(message)
    added: dict[str, str] = {}
    if type_hint and "type" not in completed:
        added["type"] = type_hint
    if not completed.get("messageId"):
        added["messageId"] = f"srv-{uuid.uuid4()}"
    if not completed.get("timestamp"):
        added["timestamp"] = received_iso
    if isinstance(batch_context, dict) and batch_context:
        # A message's own context wins over the batch's (Segment's rule).
        completed["context"] = {**batch_context, **(completed.get("context") or {})}
    completed.pop("receivedAt", None)
    added["receivedAt"] = received_iso
    completed.update(added)
    return completed


def _stored_size(message: dict[str, Any]) -> int:
    # Wrapped as deep as the spool and the debugger wrap it, so what passes here can be
    # written there too.
    wrapped: Any = message
    for _ in range(_WRAPPING_LEVELS):
        wrapped = [wrapped]
    return len(orjson.dumps(wrapped)) - 2 * _WRAPPING_LEVELS


def _size_problem(message: dict[str, Any]) -> tuple[tuple[str, str] | None, int]:
    """(the problem or None, the message's stored size)."""
    try:
        size = _stored_size(message)
    except orjson.JSONEncodeError:
        return ("too_deep", f"message is nested deeper than {MAX_DEPTH} levels (with the "
                            "batch context merged in), more than the relay can store"), 0
    if size > MAX_MESSAGE_BYTES:
        return ("too_large", f"message is {size} bytes as stored (with the batch context "
                             f"merged in); the limit is {MAX_MESSAGE_BYTES}"), size
    return None, size


def _problem(message: Any, type_hint: str) -> tuple[str, str] | None:
    """(code, reason) of what makes a message unusable, or None."""
    if not isinstance(message, dict):
        return "not_object", "a message must be a JSON object"
    kind = message.get("type", type_hint)
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        return "bad_type", (f"type must be one of {', '.join(sorted(MESSAGE_TYPES))}; "
                            f"got {str(kind)[:40]!r}")
    if type_hint and kind != type_hint:
        return "bad_type", f"type {kind!r} sent to the {type_hint} route"
    message_id = message.get("messageId")
    if message_id is not None and (not isinstance(message_id, str) or len(message_id) > 100):
        return "bad_message_id", "messageId must be a string of at most 100 characters"
    for key in _OBJECT_FIELDS:
        if key in message and message[key] is not None and not isinstance(message[key], dict):
            return "bad_field", f"{key} must be an object"
    for key in _STRING_FIELDS:
        value = message.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            return "bad_field", f"{key} must be a string"
        if isinstance(value, int):
            # Numeric ids are common (userId: 42); they are ids, so they are kept as text.
            message[key] = str(value)
        if key == "userId" and len(message[key]) > MAX_USER_ID_CHARS:
            # The visitor's user id is copied into every later event of theirs.
            return "bad_field", f"userId must be at most {MAX_USER_ID_CHARS} characters"
    if kind == "track" and not (isinstance(message.get("event"), str) and message["event"]):
        return "no_event", "a track message needs an event name"
    if kind == "identify" and not message.get("userId") and not message.get("traits"):
        return "no_identity", "an identify message needs a userId or traits"
    number = _bad_number(message)
    if number is not None:
        return "bad_number", number
    timestamp = message.get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, str):
            return "bad_timestamp", "timestamp must be an ISO-8601 string"
        try:
            datetime.fromisoformat(timestamp.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return "bad_timestamp", f"timestamp is not ISO-8601: {timestamp[:40]!r}"
    return None


def _bad_number(message: dict[str, Any]) -> str | None:
    """The reason a number of the message cannot be kept, or None: a non-finite one (none
    comes out of strict JSON, but a message is also built in-process), or an amount (a
    quantity, a price, a total; in the properties or in their products) beyond
    ±`MAX_AMOUNT`, which sums and products at the relay and the vendors would overflow."""
    stack: list[tuple[str, Any]] = [("", message)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((key, item) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{key or 'a field'} is not a finite number"
        elif key in _AMOUNT_FIELDS and not isinstance(value, bool):
            amount = _amount(value)
            if amount is not None and not math.isfinite(amount):
                return f"{key} is not a finite number"
            if amount is not None and abs(amount) > MAX_AMOUNT:
                return (f"{key} is {amount:.3g}: amounts beyond ±{MAX_AMOUNT:.0e} are "
                        "refused (sums and products of them overflow)")
    return None


def _amount(value: Any) -> float | None:
    """An amount as the relay reads it: a number, or a string it parses as one ("inf" too)."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and len(value) <= 100:
        try:
            return float(value)
        except ValueError:
            return None
    return None
