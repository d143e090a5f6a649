"""The spool's vocabulary, shared by every backend (SQLite now, Redis for scale-out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoprelay.events import StoredEvent

# The rules decide what ingest stores; a spool only stores it.
from shoprelay.ingest.rules import IngestResult, RequestContext, Router

__all__ = ["IngestResult", "RequestContext", "Router"]

#: Outbox states.
PENDING, DELIVERED, DEAD, SKIPPED = 0, 1, 2, 3
STATE_NAMES = {PENDING: "queued", DELIVERED: "delivered", DEAD: "dead", SKIPPED: "skipped"}

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
    #: The last failure's reason, if it was tried before (kept for the max-age dead letter).
    error: str = ""


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
    #: The vendor request that failed (method, URL and body, secrets masked), if one was sent.
    request: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "site": self.site, "vendor": self.vendor,
            "visitor_id": self.visitor_id, "attempts": self.attempts, "status": self.status,
            "error": self.error, "request": self.request, "response": self.response,
            "failed_at": self.failed_at, "event": self.event.name,
            "messageId": self.event.message_id,
        }


@dataclass(slots=True)
class SpoolStats:
    messages: int = 0
    #: vendor → state name → count
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: vendor → creation time of its oldest queued work
    oldest_queued: dict[str, float] = field(default_factory=dict)
    #: Bytes the spool takes on disk (SQLite: the file plus its WAL); 0 where unknown.
    file_bytes: int = 0

    def add(self, vendor: str, state: int, count: int, oldest: float | None) -> None:
        self.counts.setdefault(vendor, {})[STATE_NAMES.get(state, str(state))] = count
        if state == PENDING and oldest is not None:
            self.oldest_queued[vendor] = oldest

    def queued(self) -> int:
        return sum(c.get("queued", 0) for c in self.counts.values())

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "messages": self.messages,
            "queued": self.queued(),
            "vendors": {
                vendor: {**counts, "oldest_queued_age_seconds":
                         round(now - self.oldest_queued[vendor], 3)
                         if vendor in self.oldest_queued else None}
                for vendor, counts in sorted(self.counts.items())
            },
        }

    def summary(self, now: float) -> str:
        """One log line: size, queued work and its age per vendor."""
        parts = [f"{self.file_bytes / 1e6:.1f} MB", f"{self.messages} message(s)",
                 f"{self.queued()} queued"]
        for vendor, counts in sorted(self.counts.items()):
            oldest = self.oldest_queued.get(vendor)
            age = f", oldest {now - oldest:.0f}s" if oldest is not None else ""
            parts.append(f"{vendor}: {counts.get('queued', 0)} queued{age}, "
                         f"{counts.get('dead', 0)} dead")
        return "; ".join(parts)


class Spool(Protocol):
    """What ingest, delivery and the command line need from a spool backend.

    Delivery work is one row per (event, vendor): `due` hands out rows whose time has come
    without ever skipping ahead of a visitor's earlier row that waits for a retry, and the
    `mark_*` calls record each row's fate. Every write is durable when its call returns.
    """

    #: Called (from any thread) after new work was committed, so workers can wake up.
    on_new_work: Callable[[], None]

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext) -> IngestResult:
        """Store the messages as `shoprelay.ingest.rules` decides, atomically."""
        ...

    def start(self) -> None: ...

    def close(self) -> None:
        """Close from a caller without an event loop (the command line's last resort)."""
        ...

    async def aclose(self) -> None:
        """Close on the loop: stop background work, hand shared work on, close connections."""
        ...

    def claim_delivery(self) -> None:
        """Called before this process starts delivering: a backend that cannot share its
        work between processes raises with the reason if another process delivers already."""
        ...

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]: ...

    async def next_due_at(self, site: str, vendor: str) -> float | None: ...

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None) -> None: ...

    async def mark_progress(self, row_id: int, sent: int) -> None: ...

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str) -> None: ...

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None: ...

    async def dead_letters(self, *, vendor: str | None = None, since: float | None = None,
                           dead_id: int | None = None) -> list[DeadLetter]: ...

    async def replay(self, *, vendor: str | None = None, dead_id: int | None = None) -> int: ...

    async def stats(self) -> SpoolStats: ...

    async def prune(self, older_than: float) -> int: ...
