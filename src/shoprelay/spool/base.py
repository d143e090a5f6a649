"""The spool's vocabulary, shared by every backend (SQLite now, Redis for scale-out)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoprelay.events import StoredEvent
from shoprelay.masking import mask_credentials

# The rules decide what ingest stores; a spool only stores it.
from shoprelay.rules import IngestResult, RequestContext, Router

__all__ = ["IngestResult", "RequestContext", "Router"]

#: Outbox states. BACKFILL: claimed by a backfill (`shoprelay backfill`), not yet settled;
#: the live path never hands such work out.
PENDING, DELIVERED, DEAD, SKIPPED, BACKFILL = 0, 1, 2, 3, 4
#: The one place the states are named: SQLite stores the codes, Redis the names, and every
#: reader (traces, statistics, backfill) sees the names.
STATE_NAMES = {PENDING: "queued", DELIVERED: "delivered", DEAD: "dead", SKIPPED: "skipped",
               BACKFILL: "backfill"}
STATE_CODES = {name: code for code, name in STATE_NAMES.items()}
#: A trace's state of a vendor whose work is known only by its parts (see `gather_work`).
PARTS_ONLY = "unknown"
#: The states a finished piece of work ends in (what retention may forget).
FINISHED = (DELIVERED, SKIPPED, DEAD)


def state_name(state: int) -> str:
    """A state's name (an unknown code, from a newer release, as its number)."""
    return STATE_NAMES.get(state, str(state))
#: How much of a vendor exchange a spool keeps, whichever the backend. A trace (a work row's
#: last exchange, kept within the retention for every row) keeps `EXCHANGE_CHARS` of the
#: request and of the answer; a dead letter, which an operator reads to fix and replay, keeps
#: its answer to `LETTER_ANSWER_CHARS` and its request to `LETTER_REQUEST_CHARS`.
EXCHANGE_CHARS = 500
LETTER_ANSWER_CHARS = 4000
LETTER_REQUEST_CHARS = 1_000_000


def trace_exchange(request: str, response: str) -> tuple[str, str]:
    """What a trace keeps of an exchange (the text is masked before: a cut secret would not
    be recognised any more; every credential-named value is masked here as well, whoever
    wrote it, before the cut)."""
    return (mask_credentials(request)[:EXCHANGE_CHARS],
            mask_credentials(response)[:EXCHANGE_CHARS])


def letter_exchange(request: str, response: str) -> tuple[str, str]:
    """What a dead letter keeps of its failed exchange (credential values masked whole)."""
    return (mask_credentials(request)[:LETTER_REQUEST_CHARS],
            mask_credentials(response)[:LETTER_ANSWER_CHARS])


def kept_exchange(state: int, request: str, response: str) -> tuple[str, str]:
    """What a spool stores of the exchange that gave work `state`: a dead letter's share for
    DEAD, a trace's for every other fate."""
    return (letter_exchange if state == DEAD else trace_exchange)(request, response)


#: The windows of `VendorFigures`, in seconds before `now`: the fates of the last hour, and
#: the work rows that got a vendor answer in the last minute (each row once, at its latest
#: answer).
FIGURE_HOUR, FIGURE_MINUTE = 3600.0, 60.0

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
    #: None: the whole event. Else this work is one request of the event's rendering, by
    #: index (a part dead-lettered alone, see `Spool.mark_part_dead`, then replayed).
    part: int | None = None


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
    #: Set when only this request of the event was dead-lettered (one bad order line): its
    #: index among the event's requests; None: the whole event.
    part: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "site": self.site, "vendor": self.vendor, "part": self.part,
            "visitor_id": self.visitor_id, "attempts": self.attempts, "status": self.status,
            "error": self.error, "request": self.request, "response": self.response,
            "failed_at": self.failed_at, "event": self.event.name,
            "messageId": self.event.message_id,
        }


@dataclass(slots=True)
class WorkRecord:
    """What became of one message at one vendor so far: its work row's state and its last
    exchange with the vendor (request masked, both cut by `trace_exchange`)."""

    vendor: str
    state: str
    attempts: int = 0
    #: When a retry is due (0: not waiting).
    next_at: float = 0.0
    status: int | None = None
    error: str = ""
    request: str = ""
    response: str = ""
    updated_at: float = 0.0
    #: Requests of the event handled alone (dead-lettered, or replayed since): part index →
    #: that part's own record.
    parts: dict[int, WorkRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"vendor": self.vendor, "state": self.state, "attempts": self.attempts,
               "next_at": self.next_at or None, "status": self.status, "error": self.error,
               "request": self.request, "response": self.response,
               "updated_at": self.updated_at or None}
        if self.parts:
            out["parts"] = {str(i): {k: v for k, v in p.to_dict().items() if k != "vendor"}
                            for i, p in sorted(self.parts.items())}
        return out


@dataclass(slots=True)
class MessageRecord:
    """A message as a trace finds it: the stored event (None when no copy was stored, e.g. an
    order copy dropped as a duplicate), its work per vendor, and notes on copies not stored."""

    site: str
    message_id: str
    visitor_id: str
    received_at: float
    event: StoredEvent | None
    work: dict[str, WorkRecord] = field(default_factory=dict)
    #: (time, text): resends deduplicated, order copies dropped.
    notes: list[tuple[float, str]] = field(default_factory=list)


# ---- traces: put together here from the rows a spool returns ----------------------------------

def work_record(vendor: str, state: str, *, attempts: int = 0, next_at: float = 0.0,
                status: int | None = None, error: str = "", request: str = "",
                response: str = "", updated_at: float = 0.0) -> WorkRecord:
    """One stored work row (or part) as a trace shows it, whichever spool kept it: a trace's
    share of the exchange (a SQLite row holds a dead letter's larger share), a retry time only
    while the work still waits (a finished row keeps its last one)."""
    request, response = trace_exchange(request, response)
    waiting = state in (STATE_NAMES[PENDING], STATE_NAMES[BACKFILL])
    return WorkRecord(vendor=vendor, state=state, attempts=attempts,
                      next_at=next_at if waiting else 0.0, status=status or None, error=error,
                      request=request, response=response, updated_at=updated_at)


def gather_work(rows: Iterable[tuple[int | None, WorkRecord]]) -> dict[str, WorkRecord]:
    """A message's work per vendor from its raw (part, record) rows: the whole event's
    record, and under it each request handled alone (`part`). A vendor known only by its
    parts (the event's own row already pruned) shows as "unknown" with those parts."""
    work: dict[str, WorkRecord] = {}
    parts: list[tuple[int, WorkRecord]] = []
    for part, record in rows:
        if part is None:
            work[record.vendor] = record
        else:
            parts.append((part, record))
    for part, record in parts:
        vendor = record.vendor
        work.setdefault(vendor, WorkRecord(vendor=vendor, state=PARTS_ONLY)).parts[part] = record
    return work


def noted_only(site: str, message_id: str, notes: list[tuple[float, str]]
               ) -> MessageRecord | None:
    """A message no copy of which was stored (a resend, a dropped order copy), told by its
    notes; None when nothing is known of it."""
    if not notes:
        return None
    return MessageRecord(site, message_id, "", notes[0][0], None, notes=notes)


def newest_first(records: Iterable[MessageRecord], limit: int) -> list[MessageRecord]:
    """What `find_messages` answers: each message once, newest first, at most `limit`."""
    seen: dict[str, MessageRecord] = {}
    for record in records:
        seen.setdefault(record.message_id, record)
    return sorted(seen.values(), key=lambda r: -r.received_at)[:limit]


def intake_note(received_at: float, failed: str | None = None) -> str:
    """A trace's line for a message still in the intake."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(received_at))
    if failed:
        return f"accepted at {when} UTC, not routed: the rules stage failed on it ({failed})"
    return f"accepted at {when} UTC, not yet routed"


def in_intake(site: str, message_id: str, received_at: float,
              failed: str | None = None) -> MessageRecord:
    """What a trace finds of a message still in the intake, whichever spool holds it."""
    return MessageRecord(site, message_id, "", received_at, None,
                         notes=[(received_at, intake_note(received_at, failed))])


@dataclass(slots=True)
class HistoryItem:
    """One stored message of a site's history, in the order it was accepted (a backfill's
    input), with the vendors that already have work for it."""

    message_id: str
    visitor_id: str
    received_at: float
    event: StoredEvent
    vendors: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class VendorFigures:
    """One (site, vendor)'s delivery at a glance, as the spool knows it (so every process and
    the command line see the same): its queue, and what happened in the last hour/minute."""

    site: str
    vendor: str
    queued: int = 0
    oldest_queued_at: float | None = None
    #: Queued work parked until a retry (SQLite knows it; Redis tells 0 and relies on the
    #: last error being newer than the last delivery).
    retry_waiting: int = 0
    next_retry_at: float | None = None
    delivered_hour: int = 0
    retried_hour: int = 0
    dead_hour: int = 0
    #: Work rows that got a vendor answer in the last `FIGURE_MINUTE` (delivered, retried,
    #: dead; a skipped row was not sent).
    sent_minute: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    last_delivered_at: float | None = None


@dataclass(slots=True)
class SpoolStats:
    messages: int = 0
    #: vendor → state name → count
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: vendor → creation time of its oldest queued work
    oldest_queued: dict[str, float] = field(default_factory=dict)
    #: Bytes the spool takes on disk (SQLite: the file plus its WAL); 0 where unknown.
    file_bytes: int = 0
    #: Accepted requests not yet routed by the rules stage, and when the oldest arrived.
    intake: int = 0
    intake_oldest: float | None = None
    #: Intake entries the rules stage could not fold (kept for inspection; see the log).
    intake_failed: int = 0

    def add(self, vendor: str, state: int, count: int, oldest: float | None) -> None:
        self.counts.setdefault(vendor, {})[state_name(state)] = count
        if state == PENDING and oldest is not None:
            self.oldest_queued[vendor] = oldest

    def queued(self) -> int:
        return sum(c.get("queued", 0) for c in self.counts.values())

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "messages": self.messages,
            "queued": self.queued(),
            "intake": {"pending": self.intake, "failed": self.intake_failed,
                       "oldest_age_seconds": None if self.intake_oldest is None
                       else round(now - self.intake_oldest, 3)},
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
        if self.intake:
            age = "" if self.intake_oldest is None else f", oldest {now - self.intake_oldest:.0f}s"
            parts.append(f"{self.intake} request(s) accepted, not yet routed{age}")
        for vendor, counts in sorted(self.counts.items()):
            oldest = self.oldest_queued.get(vendor)
            age = f", oldest {now - oldest:.0f}s" if oldest is not None else ""
            parts.append(f"{vendor}: {counts.get('queued', 0)} queued{age}, "
                         f"{counts.get('dead', 0)} dead")
        return "; ".join(parts)


# ---- dead letters: which ones a listing or a replay means -------------------------------------

@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters a listing or a replay means; every field that is set must match
    (None: any). Written once here: the command line builds it, each spool translates it into
    its own query (SQLite: a WHERE clause; Redis: `matches` over the time-sorted records)."""

    site: str | None = None
    vendor: str | None = None
    dead_id: int | None = None
    #: Failed at or after this time.
    since: float | None = None
    #: The vendor's HTTP status of the failed request.
    status: int | None = None

    @classmethod
    def given(cls, where: LetterFilter | None, *, vendor: str | None = None,
              since: float | None = None, dead_id: int | None = None) -> LetterFilter:
        """`where`, or the filter the `Spool` calls' shorthand keywords name."""
        if where is not None:
            return where
        return cls(vendor=vendor or None, since=since, dead_id=dead_id)

    def matches(self, *, site: str, vendor: str, dead_id: int, failed_at: float,
                status: int | None) -> bool:
        return ((self.site is None or site == self.site)
                and (self.vendor is None or vendor == self.vendor)
                and (self.dead_id is None or dead_id == self.dead_id)
                and (self.since is None or failed_at >= self.since)
                and (self.status is None or status == self.status))


# ---- retention: what a spool keeps, and for how long -----------------------------------------

@dataclass(frozen=True, slots=True)
class PruneCut:
    """What one `prune` removes, as plain times: work finished before `finished` (delivered,
    skipped, dead letters), the messages received before it that no work names any more, the
    orders recorded and notes written before it; visitors (with their aliases and user
    bindings) not seen since `visitors`; intake answers nobody read and failed intake entries
    received before `answers`."""

    finished: float
    visitors: float
    answers: float


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a spool keeps what, in seconds (`finished` 0: forever), handed to every spool
    by `runtime.open_spool`: SQLite applies it in `prune`, Redis as key TTLs and in `prune`."""

    #: Finished work, its dead letters and trace, its message and the order and dedup records.
    finished: float = 168 * 3600.0
    #: Queued work is dead-lettered past this age (delivery's rule), so an event may be
    #: needed for this long after `finished`.
    max_age: float = 24 * 3600.0
    #: A visitor not seen for this long is forgotten with its aliases and user bindings.
    visitors: float = 168 * 3600.0
    #: An intake answer a server request never read, or a failed intake entry, is kept at
    #: most this long (less when `finished` is shorter).
    answers: float = 3600.0

    def cut(self, older_than: float, now: float) -> PruneCut:
        """What `prune(older_than)` removes: `older_than` stands for now minus `finished`
        (the command line may pass another), the other times keep their distance to it."""
        return PruneCut(finished=older_than,
                        visitors=older_than + self.finished - self.visitors,
                        answers=min(older_than, now - self.answers))

    @property
    def dedup_ttl(self) -> int | None:
        """A messageId or order id is remembered as long as its message is kept."""
        return max(1, int(self.finished)) if self.finished > 0 else None

    @property
    def event_ttl(self) -> int | None:
        """A stored event lives as long as its work may: finished work's retention plus the
        age at which queued work gives up."""
        return max(1, int(self.finished + self.max_age)) if self.finished > 0 else None

    @property
    def state_ttl(self) -> int:
        return max(1, int(self.visitors))


# ---- backfill: which claims are a backfill's to send ----------------------------------------

def backfill_owns(created: bool, state: str | None) -> bool:
    """Whether a backfill is to send a message it tried to claim: its claim was just made, or
    an earlier backfill's claim stands unsettled (that run stopped before the answer). Any
    other work of the vendor (live work, a settled backfill of any fate, a dead letter)
    means the vendor has it: nothing is sent twice."""
    return created or state == STATE_NAMES[BACKFILL]


class Spool(Protocol):
    """What ingest, delivery and the command line need from a spool backend.

    Delivery work is one piece per (event, vendor), an `OutboxRow` to the caller whatever
    the backend stores (SQLite: one `work` row per message with a bit per vendor owed, an
    `outbox` row only for an exceptional pair, see `spool.sqlite`; Redis: one stream entry
    per vendor). `due` hands out work whose time has come without ever skipping ahead of a
    visitor's earlier work that waits for a retry, and the `mark_*` calls record each piece's
    fate by its id. Every write is durable when its call returns.
    """

    #: What the spool keeps and how long (`runtime.retention_of` makes it from the settings).
    retention: Retention
    #: Called (from any thread) after new work was committed, so workers can wake up.
    on_new_work: Callable[[], None]
    #: Called (from any thread) after a request was appended to the intake, so the rules
    #: stage (here or in the delivery process) can look at it.
    on_new_intake: Callable[[], None]

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext) -> IngestResult:
        """Store the messages as `shoprelay.rules` decides, atomically (the fold at
        once, without the intake: the command line's and the tests' direct path)."""
        ...

    async def append(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext, *, wait: bool = False) -> str:
        """Append one request's accepted messages to the intake, durably, as they are: the
        request path's only write. Returns the entry's ticket. With `wait`, the rules stage
        keeps the fold's result for `routed` (the server API answers with it)."""
        ...

    async def routed(self, ticket: str) -> IngestResult | None:
        """The fold's result for a `wait` append once the rules stage routed it (then
        forgotten), or None while it is still in the intake."""
        ...

    async def alias(self, site: str, anonymous_id: str) -> str | None:
        """The visitor an anonymousId is bound to, if any (one read; for the cookie)."""
        ...

    def route_intake(self) -> None:
        """Run the rules stage in this process: fold what the intake holds, in order, into
        stored events and work, each entry removed in the same transaction as its writes.
        Only one process per spool (SQLite) or per intake partition (Redis) routes at once."""
        ...

    def kick_intake(self) -> None:
        """Another process appended to the intake: the rules stage looks now."""
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
                        status: int | None = None, request: str = "",
                        response: str = "") -> None:
        """Record delivered (or skipped) work; `request` (masked) and `response` are the last
        exchange, kept for a trace within the retention."""
        ...

    async def mark_progress(self, row_id: int, sent: int) -> None: ...

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str, request: str = "", response: str = "") -> None: ...

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None: ...

    async def mark_part_dead(self, row_id: int, part: int, *, status: int | None, error: str,
                             response: str = "", request: str = "") -> None:
        """Keep request `part` of the work as a dead letter of its own (with `DeadLetter.part`
        set; a replay sends only that request). The work itself goes on with its other
        requests: the caller moves its resume point past `part` as for a delivered one.
        Idempotent per (work, part): met again (a restart before the caller's progress), the
        first letter stands and nothing is written."""
        ...

    async def dead_letters(self, where: LetterFilter | None = None, *,
                           vendor: str | None = None, since: float | None = None,
                           dead_id: int | None = None) -> list[DeadLetter]:
        """The dead letters `where` matches (the keywords are shorthand for a
        `LetterFilter`), by id."""
        ...

    async def replay(self, where: LetterFilter | None = None, *, vendor: str | None = None,
                     dead_id: int | None = None) -> int:
        """Queue the dead letters `where` matches again (fresh attempts and max age); returns
        how many."""
        ...

    async def stats(self) -> SpoolStats: ...

    async def prune(self, older_than: float) -> int:
        """Forget what the spool's `Retention` says `prune(older_than)` removes
        (`Retention.cut`); returns the finished work removed."""
        ...

    async def vendor_figures(self, now: float) -> list[VendorFigures]:
        """Per (site, vendor): queue, delivered / retried / dead in the hour before `now`,
        answers in its last minute, the last error."""
        ...

    # ---- traces and backfill ---------------------------------------------------------------

    async def find_messages(self, site: str, *, message_id: str | None = None,
                            order_id: str | None = None, visitor_id: str | None = None,
                            limit: int = 20) -> list[MessageRecord]:
        """Stored messages by messageId, by the order id they reported, or by visitor (newest
        first), each with its work per vendor and its notes."""
        ...

    async def history(self, site: str, *, since: float, until: float, cursor: int = 0,
                      limit: int = 500) -> tuple[list[HistoryItem], int]:
        """The site's stored messages accepted in [since, until), in acceptance order, a page
        at a time: pass the returned cursor back for the next page (empty list: done)."""
        ...

    async def claim_backfill(self, site: str, vendor: str,
                             items: list[HistoryItem]) -> list[str]:
        """Create backfill work for (message, vendor) where none exists, atomically per pair,
        and return the messageIds a backfill is to send: those just claimed and those claimed
        by an earlier, unfinished backfill. A message the vendor has any work for is never
        returned, so running a backfill twice sends nothing new."""
        ...

    async def settle_backfill(self, site: str, vendor: str, message_id: str, *, state: int,
                              status: int | None = None, error: str = "", request: str = "",
                              response: str = "") -> None:
        """Record the fate of backfill work (DELIVERED, SKIPPED or DEAD) and its exchange,
        as the live path records it: counted in the statistics, in the trace, and a DEAD one
        kept as a dead letter that `replay` queues for the live path."""
        ...
