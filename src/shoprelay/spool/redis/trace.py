"""Traces and backfill on Redis: what became of a message at each vendor, and a site's history.

- **Trace hash.** `tr:SITE:MESSAGE_ID` holds, per vendor the message was routed to, a small
  JSON record: `s` state (queued, delivered, dead, skipped, backfill), `a` attempts, `n` when a
  retry is due, `st` the vendor's status, `e` the error, `rq` the masked request and `rs` the
  answer (both cut to `EXCHANGE_CHARS`), `t` when. Ingest writes `queued`; each fate
  overwrites it (see `outbox`). It lives as long as the event (the event TTL).
- **Timelines.** `vm:SITE:VISITOR` (messageIds by arrival time) answers "by visitor";
  `hist:SITE` (event ids by arrival time) is a site's history for a backfill, trimmed by
  `prune`; `on:SITE:ORDER_ID` lists the order copies dropped as duplicates.
- **Backfill claims.** HSETNX of the vendor's field: a message the vendor has any work for is
  never claimed, and two backfills cannot both claim one message (which claims a backfill
  sends is `spool.base.backfill_owns`, the same rule as SQLite's). A settled claim is recorded
  as the live path records a fate: counted, and a DEAD one kept as a dead letter.

What a trace shows is put together above both spools (`spool.base.work_record`,
`gather_work`, `noted_only`, `newest_first`); this module reads the raw hashes and lists.
"""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from redis.exceptions import WatchError

from shoprelay.events import StoredEvent
from shoprelay.rules import OrderRecord
from shoprelay.spool.base import (
    BACKFILL,
    DEAD,
    DELIVERED,
    FIGURE_HOUR,
    FIGURE_MINUTE,
    PENDING,
    SKIPPED,
    STATE_NAMES,
    HistoryItem,
    MessageRecord,
    PruneCut,
    VendorFigures,
    WorkRecord,
    backfill_owns,
    gather_work,
    newest_first,
    noted_only,
    state_name,
    trace_exchange,
    work_record,
)
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.deadletters import keep_letter


def _state(raw: str) -> str:
    return str(orjson.loads(raw).get("s", STATE_NAMES[PENDING]))


def _work(field: str, raw: str) -> tuple[int | None, WorkRecord]:
    """A trace hash field (VENDOR, or VENDOR#INDEX for a part handled alone) as a raw row."""
    vendor, _, part = field.partition("#")
    data = orjson.loads(raw)
    return (int(part) if part else None,
            work_record(vendor, str(data.get("s", STATE_NAMES[PENDING])),
                        attempts=int(data.get("a") or 0), next_at=float(data.get("n") or 0.0),
                        status=data.get("st"), error=data.get("e") or "",
                        request=data.get("rq") or "", response=data.get("rs") or "",
                        updated_at=float(data.get("t") or 0.0)))


class Traces:
    """`find_messages`, `history`, `claim_backfill` and `settle_backfill`."""

    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def find_messages(self, site: str, *, message_id: str | None = None,
                            order_id: str | None = None, visitor_id: str | None = None,
                            limit: int = 20) -> list[MessageRecord]:
        redis, k = self._ctx.redis, self._ctx.k
        ids: list[str] = []
        if message_id is not None:
            ids = [message_id]
        elif order_id is not None:
            raw = await redis.get(k("ord", site, order_id))
            if raw:
                ids.append(OrderRecord.from_json(cast(str, raw)).message_id)
            ids += cast(list[str], await redis.lrange(k("on", site, order_id), 0, -1))
        elif visitor_id is not None:
            ids = cast(list[str], await redis.zrevrange(k("vm", site, visitor_id), 0,
                                                        limit - 1))
        records = [r for m in dict.fromkeys(ids) if (r := await self._record(site, m))]
        return newest_first(records, limit)

    async def _record(self, site: str, message_id: str) -> MessageRecord | None:
        redis, k = self._ctx.redis, self._ctx.k
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(k("msg", site, message_id))
            pipe.hgetall(k("tr", site, message_id))
            pipe.lrange(k("note", site, message_id), 0, -1)
            event_key, trace, raw_notes = await pipe.execute()
        notes = [(float(at), str(text)) for at, text in map(orjson.loads, raw_notes)]
        body = await redis.get(event_key) if event_key else None
        if body is None:
            return noted_only(site, message_id, notes)
        event = StoredEvent.from_dict(orjson.loads(body))
        work = gather_work(_work(field, raw) for field, raw in sorted(trace.items()))
        return MessageRecord(site, message_id, event.enrichment.visitor_id,
                             event.enrichment.received_at, event, work, notes)

    async def history(self, site: str, *, since: float, until: float, cursor: int = 0,
                      limit: int = 500) -> tuple[list[HistoryItem], int]:
        """Pages by position in `hist:SITE` (the cursor is an offset: later arrivals only add
        after `until`, so positions in the window stay put)."""
        redis, k = self._ctx.redis, self._ctx.k
        members = cast(list[str], await redis.zrangebyscore(
            k("hist", site), since, f"({until}", start=cursor, num=limit))
        if not members:
            return [], cursor
        # Event ids follow commit order per visitor (see `outbox.due`).
        members.sort(key=int)
        bodies = await redis.mget([k("ev", site, m) for m in members])
        events = [StoredEvent.from_dict(orjson.loads(b)) for b in bodies if b]
        async with redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.hgetall(k("tr", site, event.message_id))
            traces = await pipe.execute()
        items = [HistoryItem(e.message_id, e.enrichment.visitor_id, e.enrichment.received_at,
                             e, {v: _state(raw) for v, raw in trace.items() if "#" not in v})
                 for e, trace in zip(events, traces, strict=True)]
        return items, cursor + len(members)

    async def claim_backfill(self, site: str, vendor: str,
                             items: list[HistoryItem]) -> list[str]:
        redis, k = self._ctx.redis, self._ctx.k
        claim = orjson.dumps({"s": STATE_NAMES[BACKFILL]})
        ttl = self._ctx.event_ttl or 86400 * 30
        async with redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.hsetnx(k("tr", item.event.site, item.message_id), vendor, claim)
                pipe.hget(k("tr", item.event.site, item.message_id), vendor)
                pipe.expire(k("tr", item.event.site, item.message_id), ttl)
            answers = await pipe.execute()
        mine = []
        for index, item in enumerate(items):
            created, current = answers[index * 3], answers[index * 3 + 1]
            if backfill_owns(bool(created), _state(current) if current else None):
                mine.append(item.message_id)
        return mine

    async def settle_backfill(self, site: str, vendor: str, message_id: str, *, state: int,
                              status: int | None = None, error: str = "", request: str = "",
                              response: str = "") -> None:
        ctx, redis, k = self._ctx, self._ctx.redis, self._ctx.k
        now = time.time()
        name = state_name(state)
        cut_request, cut_response = trace_exchange(request, response)
        record: dict[str, Any] = {"s": name, "a": 1, "st": status, "e": error,
                                  "rq": cut_request, "rs": cut_response, "t": now, "b": 1}
        letter: tuple[int, str, StoredEvent] | None = None
        if state == DEAD:
            # A dead letter like the live path's, so `replay` queues it for the live path.
            event_key = cast(str | None, await redis.get(k("msg", site, message_id)))
            body = await redis.get(event_key) if event_key else None
            if event_key and body:
                letter = (int(await redis.incr(k("seq"))), event_key,
                          StoredEvent.from_dict(orjson.loads(body)))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(k("tr", site, message_id), vendor, orjson.dumps(record))
            if letter is None:
                pipe.hincrby(k("counts"), f"{vendor}:{name}", 1)
            else:
                dead_id, event_key, event = letter
                keep_letter(pipe, ctx, dead_id=dead_id, site=site, vendor=vendor,
                            visitor=event.enrichment.visitor_id, attempts=1, status=status,
                            error=error, response=response, request=request, failed_at=now,
                            event_key=event_key, event=event, part=None)
            await pipe.execute()

    async def vendor_figures(self, now: float,
                             queues: list[tuple[str, str, int, float | None]]
                             ) -> list[VendorFigures]:
        """The last hour from the per-minute counters `outbox` keeps (`hc:MINUTE`, field
        SITE|VENDOR|FATE: the minutes that end inside the window and the current one), the
        last minute's answered rows from `hm:SITE:VENDOR`, the last error and delivery from
        `hl:SITE:VENDOR`, and the queue per (site, vendor) as `Maintenance.queues` counted
        it."""
        redis, k = self._ctx.redis, self._ctx.k
        figures: dict[tuple[str, str], VendorFigures] = {}
        for site, vendor, queued, oldest in queues:
            row = figures.setdefault((site, vendor), VendorFigures(site, vendor))
            row.queued += queued
            if oldest is not None:
                row.oldest_queued_at = min(row.oldest_queued_at or oldest, oldest)
        minutes = range(int((now - FIGURE_HOUR) // 60) + 1, int(now // 60) + 1)
        async with redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(k("hc", str(minute)))
            buckets = await pipe.execute()
        for bucket in buckets:
            for field, value in bucket.items():
                site, vendor, kind = field.split("|")
                row = figures.setdefault((site, vendor), VendorFigures(site, vendor))
                count = int(value)
                if kind == "delivered":
                    row.delivered_hour += count
                elif kind == "retried":
                    row.retried_hour += count
                elif kind == "dead":
                    row.dead_hour += count
        async with redis.pipeline(transaction=False) as pipe:
            for row in figures.values():
                pipe.zcount(k("hm", row.site, row.vendor), now - FIGURE_MINUTE, "+inf")
            answered = await pipe.execute()
        for row, count in zip(figures.values(), answered, strict=True):
            row.sent_minute = int(count)
        for row in figures.values():
            last = cast(dict[str, str], await redis.hgetall(k("hl", row.site, row.vendor)))
            row.last_delivered_at = float(last["ok"]) if "ok" in last else None
            if "error_at" in last and float(last["error_at"]) >= now - FIGURE_HOUR:
                row.last_error, row.last_error_at = last["error"], float(last["error_at"])
        return sorted(figures.values(), key=lambda f: (f.site, f.vendor))

    async def prune(self, cut: PruneCut) -> None:
        """Forget the messages `cut` says, as SQLite's `prune` does: received before
        `cut.finished` with all their work finished before it. Each goes with its event, its
        dedup key, its trace and notes, and out of the site's history and its visitor's
        timeline; a message with work still queued (or claimed, or finished since) stays.
        (What is left expires by TTL.)"""
        redis, k = self._ctx.redis, self._ctx.k
        head = k("hist", "")
        async for key in redis.scan_iter(match=head + "*", count=500):
            site = str(key)[len(head):]
            members = cast(list[str], await redis.zrangebyscore(key, "-inf",
                                                                f"({cut.finished}"))
            for start in range(0, len(members), 500):
                await self._forget(site, members[start:start + 500], cut)

    async def _forget(self, site: str, members: list[str], cut: PruneCut) -> None:
        redis, k = self._ctx.redis, self._ctx.k
        bodies = await redis.mget([k("ev", site, m) for m in members])
        events = [StoredEvent.from_dict(orjson.loads(b)) if b else None for b in bodies]
        traced = [k("tr", site, e.message_id) for e in events if e is not None]
        waiting = (STATE_NAMES[PENDING], STATE_NAMES[BACKFILL])
        # Counted as kept work, as SQLite counts its rows (dead letters are uncounted where
        # they are pruned).
        counted = (STATE_NAMES[DELIVERED], STATE_NAMES[SKIPPED])
        async with redis.pipeline(transaction=True) as pipe:
            try:
                # A fate or a replay written meanwhile (the trace changes) cancels this chunk:
                # the next prune looks again, rather than forget what work names.
                if traced:
                    await pipe.watch(*traced)
                async with redis.pipeline(transaction=False) as read:
                    for key in traced:
                        read.hgetall(key)
                    traces = iter(await read.execute())
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                for member, event in zip(members, events, strict=True):
                    if event is not None:
                        records = {f: orjson.loads(raw) for f, raw in next(traces).items()}
                        if any(r.get("s", STATE_NAMES[PENDING]) in waiting
                               or float(r.get("t") or 0.0) >= cut.finished
                               for r in records.values()):
                            continue  # work still names it
                        for field, r in records.items():
                            if r.get("s") in counted:
                                pipe.hincrby(k("counts"),
                                             f"{field.partition('#')[0]}:{r['s']}", -1)
                        mid = event.message_id
                        pipe.delete(k("ev", site, member), k("msg", site, mid),
                                    k("tr", site, mid), k("note", site, mid))
                        pipe.zrem(k("vm", site, event.enrichment.visitor_id), mid)
                    pipe.zrem(k("hist", site), member)
                await pipe.execute()
            except WatchError:
                return
