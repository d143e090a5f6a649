"""The spool's vocabulary, shared by every backend (SQLite now, Redis for scale-out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoprelay.events import StoredEvent

#: Outbox states.
PENDING, DELIVERED, DEAD, SKIPPED = 0, 1, 2, 3
STATE_NAMES = {PENDING: "queued", DELIVERED: "delivered", DEAD: "dead", SKIPPED: "skipped"}

#: Given a stored event, the vendor names that should receive it.
Router = Callable[[StoredEvent], list[str]]


@dataclass(slots=True)
class IngestResult:
    visitor_id: str
    stored: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class OutboxRow:
    """One event's delivery to one vendor."""

    id: int
    site: str
    vendor: str
    visitor_id: str
    attempts: int
    #: How many of the event's vendor requests were already delivered (resume point).
    sent: int
    created_at: float
    event: StoredEvent


@dataclass(slots=True)
class DeadLetter:
    id: int
    site: str
    vendor: str
    visitor_id: str
    attempts: int
    status: int | None
    error: str
    response: str
    failed_at: float
    event: StoredEvent

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "site": self.site, "vendor": self.vendor,
            "visitor_id": self.visitor_id, "attempts": self.attempts, "status": self.status,
            "error": self.error, "response": self.response, "failed_at": self.failed_at,
            "event": self.event.name, "messageId": self.event.message_id,
        }


@dataclass(slots=True)
class SpoolStats:
    messages: int = 0
    #: vendor → state name → count
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: vendor → creation time of its oldest queued work
    oldest_queued: dict[str, float] = field(default_factory=dict)

    def add(self, vendor: str, state: int, count: int, oldest: float | None) -> None:
        self.counts.setdefault(vendor, {})[STATE_NAMES.get(state, str(state))] = count
        if state == PENDING and oldest is not None:
            self.oldest_queued[vendor] = oldest
