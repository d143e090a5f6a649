"""Delivery's side of the Redis spool: due work from the held partitions, and each row's fate.

- **Fates.** Delivered: XACK by the vendor's group (the `ACK` script, which also counts the
  entry off `queued`). Retry: stays pending, with next_at in its hash. Dead: XACK plus a
  dead-letter record (hash by id + time-sorted zset); replay XADDs it again.
- **Traces.** Each fate also sets the vendor's field in the message's trace hash (state and
  last exchange), in the same transaction: one HSET more per row.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis.exceptions import WatchError

from shoprelay.events import StoredEvent
from shoprelay.spool.base import (
    DEAD,
    DELIVERED,
    FIGURE_HOUR,
    FIGURE_MINUTE,
    PENDING,
    SKIPPED,
    STATE_NAMES,
    OutboxRow,
    trace_exchange,
)
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.deadletters import keep_letter
from shoprelay.spool.redis.keys import ACK
from shoprelay.spool.redis.partitions import Entry, Partitions

log = logging.getLogger("shoprelay.spool")


class Outbox:
    """`due`, `next_due_at` and the `mark_*` calls, on the entries `Partitions` buffered."""

    def __init__(self, ctx: RedisContext, partitions: Partitions) -> None:
        self._ctx = ctx
        self._partitions = partitions

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]:
        """Due work from the partitions this process holds, oldest first, skipping any
        visitor whose earlier work waits for a retry (as SQLite's `due`)."""
        ready = await self._partitions.take(site, vendor, limit)
        picked: list[Entry] = []
        for part in ready:
            parked: set[str] = set()
            for entry in part.entries.values():
                if entry.visitor in parked:
                    continue
                if entry.next_at > now:
                    parked.add(entry.visitor)  # its later work waits for this retry
                    continue
                picked.append(entry)
        # Work ids follow commit order per visitor (a visitor's concurrent ingest retries
        # with fresh ids after a WatchError), so id order keeps each visitor's order.
        picked.sort(key=lambda e: e.work_id)
        picked = picked[:limit]
        await self._load_events(picked)
        rows: list[OutboxRow] = []
        for entry in picked:
            if entry.event is None:
                # The event's body expired (work older than retention + max age): nothing left
                # to send. Acknowledge it so it does not block its partition.
                log.warning("redis spool: event %s of work %d is gone; dropping the work",
                            entry.event_key, entry.work_id)
                await self._ack(entry)
                continue
            rows.append(OutboxRow(id=entry.work_id, site=site, vendor=vendor,
                                  visitor_id=entry.visitor, attempts=entry.attempts,
                                  sent=entry.sent, created_at=entry.created_at,
                                  event=entry.event, error=entry.error, part=entry.part))
        return rows

    async def next_due_at(self, site: str, vendor: str) -> float | None:
        """The earliest retry among buffered work; at the latest a lease period from now, so
        an idle worker still looks for partitions to take and for other processes' work."""
        queue = self._partitions.queues.get((site, vendor))
        soon = time.time() + self._ctx.lease_ms / 3000.0
        if queue is None:
            return soon
        times = [e.next_at for p in queue.held.values() for e in p.entries.values()]
        if any(not p.ready for p in queue.held.values()):
            times.append(time.time() + 0.2)
        return min([*times, soon])

    async def _load_events(self, entries: list[Entry]) -> None:
        """Read the bodies of the entries' events not read yet (an expired one stays None)."""
        missing = [e for e in entries if e.event is None]
        if missing:
            bodies = await self._ctx.redis.mget([e.event_key for e in missing])
            for entry, body in zip(missing, bodies, strict=True):
                if body:
                    entry.event = StoredEvent.from_dict(orjson.loads(body))

    async def _ack(self, entry: Entry) -> None:
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            self._acknowledge(pipe, entry)
            await pipe.execute()
        self._partitions.forget(entry)

    def _acknowledge(self, pipe: Any, entry: Entry) -> None:
        """Queue the entry's XACK by its vendor's group (counted off `queued` if it was still
        pending) and the removal of its retry state on `pipe`."""
        pipe.eval(ACK, 2, *entry.ack_args(self._ctx.k("queued")))
        pipe.delete(self._ctx.k("work", str(entry.work_id)))

    def _trace(self, pipe: Any, entry: Entry, fate: dict[str, Any],
               part: int | None = None) -> None:
        """Set this work's field in its message's trace (see `spool.redis.trace`; a part's
        field is `VENDOR#INDEX`), and count the fate for the vendor's health figures (see
        `spool.redis.trace.vendor_figures`)."""
        now = time.time()
        part = entry.part if part is None else part
        site, vendor = entry.site, entry.vendor
        kind = "retried" if fate["s"] == STATE_NAMES[PENDING] else fate["s"]
        minute = self._ctx.k("hc", str(int(now // 60)))
        pipe.hincrby(minute, f"{site}|{vendor}|{kind}", 1)
        pipe.expire(minute, int(FIGURE_HOUR * 2) + 60)
        if kind != STATE_NAMES[SKIPPED]:
            # The last minute's answers, one member per work row at its latest answer (as a
            # SQLite row's updated_at): exact to the second, trimmed here to that minute.
            answered = self._ctx.k("hm", site, vendor)
            pipe.zadd(answered, {str(entry.work_id) if part is None
                                 else f"{entry.work_id}#{part}": now})
            pipe.zremrangebyscore(answered, "-inf", f"({now - FIGURE_MINUTE}")
            pipe.expire(answered, int(FIGURE_MINUTE) + 60)
        fate["rq"], fate["rs"] = trace_exchange(fate.get("rq") or "", fate.get("rs") or "")
        last = self._ctx.k("hl", site, vendor)
        if fate["s"] == STATE_NAMES[DELIVERED]:
            pipe.hset(last, "ok", repr(now))
        elif fate.get("e"):
            pipe.hset(last, mapping={"error": fate["e"], "error_at": repr(now)})
        if entry.event is None:
            return
        key = self._ctx.k("tr", entry.event.site, entry.event.message_id)
        field = vendor if part is None else f"{vendor}#{part}"
        pipe.hset(key, field, orjson.dumps({**fate, "t": now}))
        pipe.expire(key, self._ctx.event_ttl or 86400 * 30)

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None, request: str = "",
                        response: str = "") -> None:
        entries = self._partitions.entries(ids)
        if not entries:
            return
        counts = self._ctx.k("counts")
        state = STATE_NAMES[SKIPPED if skipped else DELIVERED]
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                self._acknowledge(pipe, entry)
                pipe.hincrby(counts, f"{entry.vendor}:{state}", 1)
                self._trace(pipe, entry, {"s": state, "a": entry.attempts + 1, "st": status,
                                          "rq": request, "rs": response})
            await pipe.execute()
        for entry in entries:
            self._partitions.forget(entry)

    async def mark_progress(self, row_id: int, sent: int) -> None:
        for entry in self._partitions.entries([row_id]):
            entry.sent = sent
            key = self._ctx.k("work", str(entry.work_id))
            async with self._ctx.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, "sent", sent)
                pipe.expire(key, self._ctx.event_ttl or 86400 * 30)
                await pipe.execute()

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str, request: str = "", response: str = "") -> None:
        entries = self._partitions.entries(ids)
        if not entries:
            return
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                entry.attempts += 1
                entry.next_at = next_at
                entry.error = error or ""
                key = self._ctx.k("work", str(entry.work_id))
                pipe.hset(key, mapping={"attempts": entry.attempts, "sent": entry.sent,
                                        "next_at": repr(next_at), "status": status or 0,
                                        "error": entry.error})
                pipe.expire(key, self._ctx.event_ttl or 86400 * 30)
                self._trace(pipe, entry, {"s": STATE_NAMES[PENDING], "a": entry.attempts,
                                          "n": next_at, "st": status, "e": entry.error,
                                          "rq": request, "rs": response})
            await pipe.execute()

    def _keep_dead(self, pipe: Any, entry: Entry, dead_id: int, part: int | None, now: float,
                   *, status: int | None, error: str, response: str, request: str) -> None:
        """Queue the dead-letter record of `entry` (or of its request `part`) on `pipe`: the
        format `deadletters` reads, the whole event with it, so a replay needs nothing else;
        with its count and its trace field."""
        keep_letter(pipe, self._ctx, dead_id=dead_id,
                    site=entry.event.site if entry.event else entry.site,
                    vendor=entry.vendor, visitor=entry.visitor,
                    attempts=entry.attempts + 1, status=status, error=error,
                    response=response, request=request, failed_at=now,
                    event_key=entry.event_key, event=entry.event, part=part)
        self._trace(pipe, entry, {"s": STATE_NAMES[DEAD], "a": entry.attempts + 1, "st": status,
                                  "e": error, "rq": request, "rs": response},
                    part=part)

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None:
        """Acknowledge the entries and keep each as a dead-letter record."""
        entries = self._partitions.entries(ids)
        if not entries:
            return
        now = time.time()
        await self._load_events(entries)
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                self._keep_dead(pipe, entry, entry.work_id, entry.part, now, status=status,
                                error=error, response=response, request=request)
                self._acknowledge(pipe, entry)
            await pipe.execute()
        for entry in entries:
            self._partitions.forget(entry)

    async def mark_part_dead(self, row_id: int, part: int, *, status: int | None, error: str,
                             response: str = "", request: str = "") -> None:
        """A dead-letter record of its own (a new work id, `part` set) for one request of the
        entry; the entry itself stays pending for its other requests. The entry's work hash
        notes the part's letter in the same transaction, so a second call for it (a restart
        between this and the caller's progress) leaves the first letter standing, as the
        `Spool` contract asks."""
        entries = self._partitions.entries([row_id])
        if not entries:
            return
        [entry] = entries
        await self._load_events(entries)
        redis = self._ctx.redis
        key, marker = self._ctx.k("work", str(entry.work_id)), f"dead:{part}"
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if await pipe.hexists(key, marker):
                        return
                    dead_id = int(await redis.incr(self._ctx.k("seq")))
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    pipe.hset(key, marker, dead_id)
                    pipe.expire(key, self._ctx.event_ttl or 86400 * 30)
                    self._keep_dead(pipe, entry, dead_id, part, time.time(), status=status,
                                    error=error, response=response, request=request)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # the hash changed under us: look again
