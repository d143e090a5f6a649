"""The scale-out spool: Redis Streams shared by any number of relay processes and hosts.

Selected by `spool = "redis://host:port/db"`. Every process ingests and delivers; Redis holds
everything that must be shared. One module per job, each with its part of the design:

- `keys`: where everything is kept (the work: one entry per stored message in a site's
  partition stream, one consumer group per vendor beside it, the retry hashes; and the layout
  before, still drained), key naming and the Lua scripts;
- `ingest`: one optimistic transaction per request (WATCH, fold, MULTI/EXEC);
- `intake`: the request path's one append, and the rules stage that folds it (per intake
  partition, through `ingest`'s transaction);
- `partitions`: order across processes (heartbeat, leases, fair share, claiming a crashed
  process's work first, handing partitions on), the read-ahead buffer, the wake-up channel;
- `outbox`: due work and each row's fate (XACK, retry state, dead letter);
- `deadletters`: listing and replaying dead letters;
- `maintenance`: statistics, retention (prune), forgetting old consumers, wiping a prefix;
- `trace`: what became of a message at each vendor, a site's history, backfill claims.

They share one `RedisContext` (connection, key names, this process's id, lease time, TTLs,
the new-work callback); `RedisSpool` composes them behind the `Spool` interface.

Redis must keep what it acknowledged: see docs/deploy.md (appendonly).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from shoprelay.rules import IngestRules, RequestContext, SitePolicy
from shoprelay.spool.base import (
    DeadLetter,
    HistoryItem,
    IngestResult,
    LetterFilter,
    MessageRecord,
    OutboxRow,
    Retention,
    Router,
    SpoolStats,
    VendorFigures,
)
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.deadletters import DeadLetters
from shoprelay.spool.redis.ingest import Ingest
from shoprelay.spool.redis.intake import Intake
from shoprelay.spool.redis.keys import KeySpace
from shoprelay.spool.redis.maintenance import Maintenance
from shoprelay.spool.redis.outbox import Outbox
from shoprelay.spool.redis.partitions import Partitions, Queue
from shoprelay.spool.redis.trace import Traces

__all__ = ["RedisSpool"]


class RedisSpool:
    """The `Spool` on Redis: each call handed to the part that does that job."""

    def __init__(
        self,
        url: str,
        *,
        router: Router,
        session_timeout: float = 1800.0,
        alias_for: Callable[[str, str], str],
        new_id: Callable[[], str],
        prefix: str = "shoprelay:",
        partitions: int = 8,
        lease_seconds: float = 10.0,
        policy: Callable[[str], SitePolicy] | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.url = url
        self.path = url  # what the app logs as "spool"
        self.rules = IngestRules(router=router, session_timeout=session_timeout,
                                 alias_for=alias_for, new_id=new_id, policy=policy)
        self._keys = KeySpace(prefix, partitions)
        #: What is kept how long: the keys' TTLs, and what `prune` trims (`Retention.cut`).
        self.retention = retention = retention or Retention()
        self._ctx = RedisContext(
            redis=aioredis.Redis.from_url(url, decode_responses=True),
            keys=self._keys,
            proc_id=f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            lease_ms=max(300, int(lease_seconds * 1000)),
            dedup_ttl=retention.dedup_ttl,
            event_ttl=retention.event_ttl,
            state_ttl=retention.state_ttl,
            retention=retention,
        )
        self._ingest = Ingest(self._ctx, self.rules, alias_for)
        self._intake = Intake(self._ctx, self._ingest)
        #: Called after a request was appended (the delivery process wakes on it).
        self.on_new_intake: Callable[[], None] = lambda: None
        self._partitions = Partitions(self._ctx)
        self._outbox = Outbox(self._ctx, self._partitions)
        self._dead = DeadLetters(self._ctx)
        self._maintenance = Maintenance(self._ctx)
        self._traces = Traces(self._ctx)

    # ---- what the app, the command line and the tests read -----------------------------------

    @property
    def on_new_work(self) -> Callable[[], None]:
        """Called after new work was committed (here or, via pub/sub, in another process)."""
        return self._ctx.on_new_work

    @on_new_work.setter
    def on_new_work(self, callback: Callable[[], None]) -> None:
        self._ctx.on_new_work = callback

    @property
    def redis(self) -> aioredis.Redis:
        return self._ctx.redis

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def partitions(self) -> int:
        return self._keys.partitions

    @property
    def proc_id(self) -> str:
        """This process's consumer name and lease value (new every start)."""
        return self._ctx.proc_id

    def _k(self, *parts: str) -> str:
        return self._keys.k(*parts)

    def stream_key(self, site: str, vendor: str, partition: int) -> str:
        """The stream a vendor's work on this partition is read from: the site's partition
        stream, shared by every vendor (each reads it through its own group; see `keys`)."""
        return self._keys.stream_key(site, partition)

    def partition_of(self, visitor: str) -> int:
        return self._keys.partition_of(visitor)

    # The tests stop a process's background tasks to play a crash, and count the partitions
    # each process holds.
    @property
    def _tasks(self) -> list[asyncio.Task[None]]:
        return self._partitions.tasks

    @property
    def _queues(self) -> dict[tuple[str, str], Queue]:
        return self._partitions.queues

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to open: connections are made on first use (on the caller's loop)."""

    def close(self) -> None:
        """Synchronous close for callers without a loop; `aclose` also hands partitions on."""
        self._intake.cancel()
        self._partitions.cancel()

    def claim_delivery(self) -> None:
        """Any number of processes deliver from one Redis (partition leases keep order)."""

    async def aclose(self) -> None:
        """Stop heartbeats, hand every held partition on (its pending entries marked idle so
        the next holder claims them at once) and close the connections."""
        await self._intake.aclose()
        await self._partitions.aclose()
        await self._ctx.redis.aclose()

    # ---- the Spool interface ---------------------------------------------------------------

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext) -> IngestResult:
        """Store the messages as the ingest rules decide, in one Redis transaction."""
        return await self._ingest.ingest(site, messages, context)

    async def append(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext, *, wait: bool = False) -> str:
        ticket = await self._intake.append(site, messages, context, wait)
        self.on_new_intake()
        return ticket

    async def routed(self, ticket: str) -> IngestResult | None:
        return await self._intake.routed(ticket)

    async def alias(self, site: str, anonymous_id: str) -> str | None:
        value = await self._ctx.redis.get(self._k("alias", site, anonymous_id))
        return None if value is None else str(value)

    def route_intake(self) -> None:
        self._intake.start()

    def kick_intake(self) -> None:
        self._intake.kick()

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]:
        """Due work from the partitions this process holds, oldest first, skipping any
        visitor whose earlier work waits for a retry (as SQLite's `due`)."""
        return await self._outbox.due(site, vendor, now, limit)

    async def next_due_at(self, site: str, vendor: str) -> float | None:
        return await self._outbox.next_due_at(site, vendor)

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None, request: str = "",
                        response: str = "") -> None:
        await self._outbox.mark_done(ids, skipped=skipped, status=status, request=request,
                                     response=response)

    async def mark_progress(self, row_id: int, sent: int) -> None:
        await self._outbox.mark_progress(row_id, sent)

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str, request: str = "", response: str = "") -> None:
        await self._outbox.mark_retry(ids, next_at=next_at, status=status, error=error,
                                      request=request, response=response)

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None:
        await self._outbox.mark_dead(ids, status=status, error=error, response=response,
                                     request=request)

    async def mark_part_dead(self, row_id: int, part: int, *, status: int | None, error: str,
                             response: str = "", request: str = "") -> None:
        await self._outbox.mark_part_dead(row_id, part, status=status, error=error,
                                          response=response, request=request)

    async def dead_letters(self, where: LetterFilter | None = None, *,
                           vendor: str | None = None, since: float | None = None,
                           dead_id: int | None = None) -> list[DeadLetter]:
        return await self._dead.dead_letters(
            LetterFilter.given(where, vendor=vendor, since=since, dead_id=dead_id))

    async def replay(self, where: LetterFilter | None = None, *, vendor: str | None = None,
                     dead_id: int | None = None) -> int:
        """Queue dead letters again: a new stream entry each (fresh attempts and max age)."""
        return await self._dead.replay(LetterFilter.given(where, vendor=vendor,
                                                          dead_id=dead_id))

    async def stats(self) -> SpoolStats:
        stats = await self._maintenance.stats()
        stats.intake, stats.intake_oldest, stats.intake_failed = await self._intake.figures()
        return stats

    async def prune(self, older_than: float) -> int:
        """Trim what the retention's cut says: finished stream entries, dead letters, the
        sites' histories (the rest goes by TTL)."""
        cut = self.retention.cut(older_than, time.time())
        await self._traces.prune(cut)
        return await self._maintenance.prune(cut)

    async def vendor_figures(self, now: float) -> list[VendorFigures]:
        return await self._traces.vendor_figures(now, await self._maintenance.queues())

    async def find_messages(self, site: str, *, message_id: str | None = None,
                            order_id: str | None = None, visitor_id: str | None = None,
                            limit: int = 20) -> list[MessageRecord]:
        found = await self._traces.find_messages(site, message_id=message_id,
                                                 order_id=order_id, visitor_id=visitor_id,
                                                 limit=limit)
        if message_id is not None and not found:
            found = await self._intake.find(site, message_id)
        return found

    async def history(self, site: str, *, since: float, until: float, cursor: int = 0,
                      limit: int = 500) -> tuple[list[HistoryItem], int]:
        return await self._traces.history(site, since=since, until=until, cursor=cursor,
                                          limit=limit)

    async def claim_backfill(self, site: str, vendor: str,
                             items: list[HistoryItem]) -> list[str]:
        return await self._traces.claim_backfill(site, vendor, items)

    async def settle_backfill(self, site: str, vendor: str, message_id: str, *, state: int,
                              status: int | None = None, error: str = "", request: str = "",
                              response: str = "") -> None:
        await self._traces.settle_backfill(site, vendor, message_id, state=state,
                                           status=status, error=error, request=request,
                                           response=response)

    async def delete_all(self) -> int:
        """Remove every key under this spool's prefix (tests and tools; never the relay)."""
        return await self._maintenance.delete_all()
