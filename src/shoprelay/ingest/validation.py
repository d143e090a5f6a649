"""Checking Segment-shaped messages one by one (CONTRACT §1).

Each message of a batch is judged on its own: a bad one is reported with its index and reason
and the good ones around it are kept. Validation only rejects what would make a message useless
or dangerous; unknown fields are kept as sent (analytics.js and RudderStack add their own).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MESSAGE_TYPES = frozenset({"page", "track", "identify", "alias", "group", "screen"})
#: One-letter route forms used by analytics.js.
SHORT_TYPES = {"t": "track", "p": "page", "i": "identify", "a": "alias", "g": "group",
               "s": "screen"}
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_STRING_FIELDS = ("event", "name", "category", "userId", "anonymousId", "previousId",
                  "groupId")


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
    # Duplicate keys vanish when parsed (and an overflowing number becomes null), so a body that
    # re-serialises to its own length has neither: that is what JSON.stringify produces, and
    # the common case costs one dumps. Anything else — whitespace, escapes, duplicates, huge
    # numbers — gets the exact, slower check.
    if len(orjson.dumps(body)) != len(raw):
        _refuse_duplicate_keys(raw)
    return body


def _refuse_duplicate_keys(raw: bytes) -> None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(400, f"duplicate key {key[:60]!r} in a JSON object")
            seen.add(key)
        return {}

    def finite(text: str) -> float:
        number = float(text)
        if math.isinf(number):
            raise BadRequest(400, f"number out of range: {text[:40]}")
        return number

    def int64(text: str) -> int:
        number = int(text)
        if not -(2**63) <= number < 2**64:
            raise BadRequest(400, f"number out of range: {text[:40]}")
        return number

    try:
        json.loads(raw, object_pairs_hook=pairs_hook, parse_float=finite, parse_int=int64)
    except (ValueError, RecursionError):
        # orjson accepted the document; the stdlib's own limits are not the client's fault.
        return


def check_messages(
    messages: list[Any], *, batch_context: Any = None, received_at: float, type_hint: str = ""
) -> Checked:
    """Validate and complete each message (messageId, timestamp, context from the batch)."""
    checked = Checked()
    received_iso = datetime.fromtimestamp(received_at, UTC).isoformat(timespec="milliseconds")
    for index, message in enumerate(messages):
        message_id = message.get("messageId") if isinstance(message, dict) else None
        problem = _problem(message, type_hint)
        if problem is None:
            size = len(orjson.dumps(message))
            if size > MAX_MESSAGE_BYTES:
                problem = ("too_large",
                           f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
        if problem is not None:
            code, error = problem
            checked.rejected.append(
                Rejection(index, message_id if isinstance(message_id, str) else None, error,
                          code))
            continue
        assert isinstance(message, dict)
        if type_hint and "type" not in message:
            message["type"] = type_hint
        if not message.get("messageId"):
            message["messageId"] = f"srv-{uuid.uuid4()}"
        if not message.get("timestamp"):
            message["timestamp"] = received_iso
        if isinstance(batch_context, dict) and batch_context:
            # A message's own context wins over the batch's (Segment's rule).
            message["context"] = {**batch_context, **(message.get("context") or {})}
        message["receivedAt"] = received_iso
        checked.accepted.append(message)
    return checked


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
    if kind == "track" and not (isinstance(message.get("event"), str) and message["event"]):
        return "no_event", "a track message needs an event name"
    if kind == "identify" and not message.get("userId") and not message.get("traits"):
        return "no_identity", "an identify message needs a userId or traits"
    timestamp = message.get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, str):
            return "bad_timestamp", "timestamp must be an ISO-8601 string"
        try:
            datetime.fromisoformat(timestamp.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return "bad_timestamp", f"timestamp is not ISO-8601: {timestamp[:40]!r}"
    return None
