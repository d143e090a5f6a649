"""What the fold reads from storage (`Snapshot`) and what it asks storage to write
(`IngestPlan`): the whole interface between the rules and a spool backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import orjson

from shoprelay.events import StoredEvent
from shoprelay.identity.state import VisitorState
from shoprelay.rules.context import IngestResult


@dataclass(frozen=True, slots=True)
class UserBinding:
    """Which visitor a user id is bound to, and whether the shop vouched for it (`strong`:
    made by the server API or by a signed identify, so an unsigned browser claim never moves
    it)."""

    visitor_id: str
    strong: bool = False

    def encode(self) -> str:
        return self.visitor_id + ("!" if self.strong else "")

    @classmethod
    def decode(cls, text: str) -> UserBinding:
        return cls(text[:-1], True) if text.endswith("!") else cls(text, False)


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """What the relay remembers of an order id: the vendors its copies were sent to so far
    (None: every vendor, as recorded by an older release)."""

    message_id: str
    vendors: frozenset[str] | None

    def to_json(self) -> str:
        return orjson.dumps({"m": self.message_id,
                             "v": None if self.vendors is None else sorted(self.vendors)}
                            ).decode()

    @classmethod
    def from_json(cls, text: str) -> OrderRecord:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):  # an older release stored the messageId alone
            return cls(text, None)
        vendors = data.get("v")
        return cls(str(data.get("m", "")), None if vendors is None else frozenset(vendors))


class Snapshot(Protocol):
    """What the fold reads from storage; every value as it was before this request.

    A backend that cannot answer a key yet (Redis reads in rounds) raises `Missing` naming it;
    the fold is then run again once the key was read."""

    def alias(self, anonymous_id: str) -> str | None: ...

    def user(self, user_id: str) -> UserBinding | None: ...

    def message_seen(self, message_id: str) -> bool: ...

    def order(self, order_id: str) -> OrderRecord | None: ...

    def state(self, visitor_id: str) -> VisitorState:
        """The visitor's state, an object the fold may change in place (a fresh one, or the
        backend's cached copy that a rolled-back write discards)."""
        ...


class Missing(Exception):  # noqa: N818 - a request for more data, not an error
    """The snapshot was asked for keys it has not read: read them, then fold again."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not read yet")
        self.kind = kind
        self.key = key


@dataclass(slots=True)
class StoredMessage:
    """One accepted, new message as it is to be stored, with the vendors that get it."""

    visitor_id: str
    event: StoredEvent
    vendors: list[str]


@dataclass(slots=True)
class IngestPlan:
    """Everything one request writes, decided by the fold: the backend writes it atomically."""

    result: IngestResult
    #: anonymousId → visitor id, new or moved.
    aliases: dict[str, str] = field(default_factory=dict)
    #: user id → its binding, new or changed.
    users: dict[str, UserBinding] = field(default_factory=dict)
    #: The states of the visitors this request changed.
    states: dict[str, VisitorState] = field(default_factory=dict)
    stored: list[StoredMessage] = field(default_factory=list)
    #: order id → what to remember of it after this request.
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    #: (messageId, note, order id or None) on copies not stored, for a trace: resends
    #: deduplicated, order copies dropped as duplicates. Rare, so cheap to keep.
    notes: list[tuple[str, str, str | None]] = field(default_factory=list)

    @property
    def work(self) -> int:
        """Delivery rows the plan creates (one per stored message and vendor)."""
        return sum(len(m.vendors) for m in self.stored)
