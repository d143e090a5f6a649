"""Checking Segment-shaped messages one by one (CONTRACT §1).

Each message of a batch is judged on its own: a bad one is reported with its index and reason
and the good ones around it are kept. Validation only rejects what would make a message useless
or dangerous; unknown fields are kept as sent (analytics.js and RudderStack add their own).
"""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "messageId": self.message_id, "error": self.error}


@dataclass(slots=True)
class Checked:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest(400, "empty body: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "expected a JSON object")
    return body


def check_messages(
    messages: list[Any], *, batch_context: Any = None, received_at: float, type_hint: str = ""
) -> Checked:
    """Validate and complete each message (messageId, timestamp, context from the batch)."""
    checked = Checked()
    received_iso = datetime.fromtimestamp(received_at, UTC).isoformat(timespec="milliseconds")
    for index, message in enumerate(messages):
        message_id = message.get("messageId") if isinstance(message, dict) else None
        error = _problem(message, type_hint)
        if error is None:
            size = len(orjson.dumps(message))
            if size > MAX_MESSAGE_BYTES:
                error = f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}"
        if error is not None:
            checked.rejected.append(
                Rejection(index, message_id if isinstance(message_id, str) else None, error))
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


def _problem(message: Any, type_hint: str) -> str | None:
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type", type_hint)
    if kind not in MESSAGE_TYPES:
        return f"type must be one of {', '.join(sorted(MESSAGE_TYPES))}; got {kind!r}"
    if type_hint and kind != type_hint:
        return f"type {kind!r} sent to the {type_hint} route"
    message_id = message.get("messageId")
    if message_id is not None and (not isinstance(message_id, str) or len(message_id) > 100):
        return "messageId must be a string of at most 100 characters"
    for key in _OBJECT_FIELDS:
        if key in message and message[key] is not None and not isinstance(message[key], dict):
            return f"{key} must be an object"
    for key in _STRING_FIELDS:
        value = message.get(key)
        if value is not None and not isinstance(value, str | int) or isinstance(value, bool):
            return f"{key} must be a string"
        if isinstance(value, int):
            message[key] = str(value)
    if kind == "track" and not (isinstance(message.get("event"), str) and message["event"]):
        return "a track message needs an event name"
    if kind == "identify" and not message.get("userId") and not message.get("traits"):
        return "an identify message needs a userId or traits"
    timestamp = message.get("timestamp")
    if timestamp is not None:
        if not isinstance(timestamp, str):
            return "timestamp must be an ISO-8601 string"
        try:
            datetime.fromisoformat(timestamp.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return f"timestamp is not ISO-8601: {timestamp[:40]!r}"
    return None
