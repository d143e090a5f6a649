"""The Redis intake: accepted requests as stream entries, and the rules stage that folds them.

- **Append.** The request path adds one entry per request to the intake partition its
  visitor (its cookie's, else its first anonymousId's) hashes to, `in:pN`, and announces it
  on `wakein`: one round trip, no read, no fold.
- **Route.** A process running the rules stage holds the lease of some intake partitions
  (`inlease:pN`, a fair share of them among the live processes) and folds each held
  partition's entries in stream order through the same `Ingest` transaction a direct
  ingest uses; that transaction also acknowledges and deletes the entry (XACK, XDEL), so
  an entry is routed once or, after a crash, again — and then the
  WATCHed messageId keys make the second fold store nothing twice. A partition taken over
  from another process starts with the entries it had read and not acknowledged.
- **Leases on a busy relay.** The rules stage shares the event loop with the request path
  and delivery, so one round over its partitions can outlast the lease. The held leases are
  therefore renewed inside the round, all in one script call, whenever a quarter of the lease
  time has passed (checked before each entry), and a lease that lapsed while nobody took it is
  taken back rather than given up: only another holder means it is lost.
- An entry the fold fails on moves to `in:failed` (logged), so it never blocks the entries
  behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from shoprelay.rules import IngestResult, RequestContext, user_id_of
from shoprelay.spool.base import MessageRecord, in_intake
from shoprelay.spool.redis.context import RedisContext, stop_tasks
from shoprelay.spool.redis.ingest import Ingest
from shoprelay.spool.redis.keys import KEEP, RELEASE, id_time

log = logging.getLogger("shoprelay.spool")

_GROUP = "rules"
#: Entries folded per read of a partition.
_BATCH = 50
#: The held leases are renewed when this share of the lease time has passed since the last
#: renewal, checked before every entry folded: a round may take longer than the lease on a
#: busy relay (the request path and delivery share the event loop), so renewing only between
#: rounds let every lease lapse mid-round.
_RENEW_AFTER = 0.25
#: How long a waiting server request's answer is kept.
_ANSWER_TTL = 600


class Intake:
    """Append to the intake; with `start`, route it (the rules stage of this process)."""

    def __init__(self, ctx: RedisContext, ingest: Ingest) -> None:
        self._ctx = ctx
        self._ingest = ingest
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._held: dict[int, bool] = {}  # partition → its leftovers were claimed
        self._keep = ctx.redis.register_script(KEEP)  # EVALSHA, loaded on first use
        self._renewed = 0.0  # when the held leases were last renewed (monotonic)
        self.routing = False

    def _stream(self, number: int) -> str:
        return self._ctx.k("in", f"p{number}")

    # ---- the request path --------------------------------------------------------------------

    def _owner(self, message: dict[str, Any], index: int, context: RequestContext) -> str:
        """What a message's intake partition follows: whatever names its visitor before the
        fold (the cookie, the backend's hint, the anonymousId, the user id)."""
        # The user id as the fold compares it: " u-1" and "u-1" are one user, one partition.
        for value in (context.cookie_visitor, context.hint(index), message.get("anonymousId"),
                      user_id_of(message)):
            if isinstance(value, str) and value:
                return value
        return ""

    async def append(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext, wait: bool) -> str:
        """One entry per intake partition the request's messages belong to (most requests:
        one): a visitor's messages always go through the same partition, so they are folded
        in the order accepted even when one request carries several visitors'."""
        parts: dict[int, list[int]] = {}
        first = ""
        for index, message in enumerate(messages):
            owner = self._owner(message, index, context) or first
            first = first or owner
            parts.setdefault(self._ctx.keys.partition_of(owner), []).append(index)
        at = repr(time.time())
        async with self._ctx.redis.pipeline(transaction=len(parts) > 1) as pipe:
            for number, indexes in parts.items():
                whole = len(indexes) == len(messages)
                part_context = context if whole else RequestContext(
                    source=context.source, cookie_visitor=context.cookie_visitor,
                    ip=context.ip, user_agent=context.user_agent, bot=context.bot,
                    consent={new: context.consent.get(old) for new, old in enumerate(indexes)},
                    hints=None if context.hints is None else [context.hints[i] for i in indexes],
                    new_visitor=context.new_visitor if 0 in indexes else None)
                fields: dict[Any, Any] = {
                    "s": site, "t": at, "c": part_context.to_json(),
                    "m": orjson.dumps(messages if whole else [messages[i] for i in indexes]),
                    "w": "1" if wait else ""}
                if not whole:
                    fields["i"] = orjson.dumps(indexes)  # the answer's indexes are the request's
                pipe.xadd(self._stream(number), fields)
            pipe.publish(self._ctx.k("wakein"), "1")
            *entry_ids, _ = await pipe.execute()
        if self.routing:
            self._wake.set()
        return ",".join(f"{number}:{entry_id}"
                        for number, entry_id in zip(parts, entry_ids, strict=True))

    async def routed(self, ticket: str) -> IngestResult | None:
        """The request's answer once every one of its entries was folded (then forgotten)."""
        keys = [self._ctx.k("ires", part) for part in ticket.split(",")]
        raws = await self._ctx.redis.mget(keys)
        if any(raw is None for raw in raws):
            return None
        await self._ctx.redis.delete(*keys)
        results = [IngestResult.from_json(raw) for raw in raws if raw is not None]
        merged = results[0]
        for more in results[1:]:
            merged.stored += more.stored
            merged.duplicates += more.duplicates
            merged.dropped += more.dropped
        merged.dropped.sort()
        return merged

    # ---- the rules stage ---------------------------------------------------------------------

    def start(self) -> None:
        if self.routing:
            return
        self.routing = True
        self._tasks = [asyncio.create_task(self._route_loop(), name="redis-rules-stage"),
                       asyncio.create_task(self._listen(), name="redis-intake-wake")]

    def kick(self) -> None:
        self._wake.set()

    async def aclose(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []
        with contextlib.suppress(Exception):  # leases then just expire
            for number in list(self._held):
                await self._ctx.redis.eval(RELEASE, 1, self._ctx.k("inlease", f"p{number}"),
                                           self._ctx.proc_id)
        self._held.clear()
        self.routing = False

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _listen(self) -> None:
        while True:
            try:
                async with self._ctx.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._ctx.k("wakein"))
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis spool: intake wake-up channel failed", exc_info=True)
                await asyncio.sleep(1.0)

    async def _route_loop(self) -> None:
        interval = self._ctx.lease_ms / 3000.0
        next_balance = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_balance:
                    await self._balance()
                    next_balance = now + interval
                self._wake.clear()  # before looking: a wake-up during the round is kept
                folded = 0
                for number in list(self._held):
                    await self._renew_if_due()
                    if number in self._held:  # not lost just now
                        folded += await self._route_partition(number)
                if not folded:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis spool: rules stage round failed", exc_info=True)
                await asyncio.sleep(0.5)

    async def _renew(self) -> None:
        """Renew every held lease in one call (taking back any that lapsed unclaimed); drop
        those another process holds now."""
        self._renewed = time.monotonic()
        held = list(self._held)
        if not held:
            return
        ctx = self._ctx
        kept = await self._keep(keys=[ctx.k("inlease", f"p{n}") for n in held],
                                args=[ctx.proc_id, ctx.lease_ms])
        for number, outcome in zip(held, cast(list[int], kept), strict=True):
            if outcome == 0 and number in self._held:
                log.warning("redis spool: lost the intake lease of partition %d", number)
                del self._held[number]
            elif outcome == 2:
                log.info("redis spool: the intake lease of partition %d lapsed and was taken "
                         "back (nobody had taken it)", number)

    async def _renew_if_due(self) -> None:
        if time.monotonic() - self._renewed >= self._ctx.lease_ms * _RENEW_AFTER / 1000.0:
            await self._renew()

    async def _balance(self) -> None:
        """Renew the held leases, take free ones up to a fair share, give extra ones up."""
        ctx = self._ctx
        partitions = ctx.keys.partitions
        live = max(1, int(await ctx.redis.zcount(ctx.k("procs"), time.time(), "+inf")))
        share = math.ceil(partitions / live)
        await self._renew()
        for number in range(partitions):
            if number in self._held or len(self._held) >= share:
                continue
            if await ctx.redis.set(ctx.k("inlease", f"p{number}"), ctx.proc_id, nx=True,
                                   px=ctx.lease_ms):
                with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                    await ctx.redis.xgroup_create(self._stream(number), _GROUP, id="0",
                                                  mkstream=True)
                self._held[number] = False
        while len(self._held) > share:
            number = max(self._held)
            del self._held[number]
            await ctx.redis.eval(RELEASE, 1, ctx.k("inlease", f"p{number}"), ctx.proc_id)

    async def _route_partition(self, number: int) -> int:
        ctx, stream = self._ctx, self._stream(number)
        if not self._held[number]:
            # Entries a previous holder read and did not acknowledge come first.
            cursor = "0-0"
            while True:
                reply = await ctx.redis.xautoclaim(stream, _GROUP, ctx.proc_id,
                                                   min_idle_time=0, start_id=cursor,
                                                   count=500)
                cursor = reply[0]
                if cursor == "0-0":
                    break
            self._held[number] = True
        entries: list[tuple[str, dict[str, str]]] = []
        for start in ("0", ">"):  # this process's own unacknowledged entries, then new ones
            read: Any = await ctx.redis.xreadgroup(_GROUP, ctx.proc_id, {stream: start},
                                                   count=_BATCH)
            found = [e for _, got in read or [] for e in got]
            # An entry deleted while pending comes back without fields: acknowledge it.
            gone = [e[0] for e in found if not e[1]]
            if gone:
                await ctx.redis.xack(stream, _GROUP, *gone)
            entries = [e for e in found if e[1]]
            if entries:
                break
        folded = 0
        for entry_id, fields in entries:
            await self._renew_if_due()
            if number not in self._held:
                break  # the lease was lost meanwhile: the next holder goes on
            folded += await self._route_entry(number, stream, entry_id, fields)
        return folded

    async def _route_entry(self, number: int, stream: str, entry_id: str,
                           fields: dict[str, str]) -> int:
        ticket = f"{number}:{entry_id}"
        done: list[Any] = ["K", stream, _GROUP, entry_id, "D", stream, entry_id]

        def finish(result: IngestResult) -> list[Any]:
            if not fields.get("w"):
                return done
            if fields.get("i"):  # a part of a request: its indexes back to the request's
                indexes = orjson.loads(fields["i"])
                result.dropped = [(indexes[i], why) for i, why in result.dropped]
            return [*done, "S", self._ctx.k("ires", ticket), result.to_json(), _ANSWER_TTL]

        try:
            messages = orjson.loads(fields["m"])
            await self._ingest.ingest(fields["s"], messages,
                                      RequestContext.from_json(fields["c"]),
                                      float(fields["t"]), finish)
        except Exception as exc:
            log.exception("rules stage: intake entry %s could not be routed; moved to "
                          "in:failed", ticket)
            async with self._ctx.redis.pipeline(transaction=True) as pipe:
                kept: dict[Any, Any] = {**fields,
                                        "error": f"{type(exc).__name__}: {exc}"[:500]}
                pipe.xadd(self._ctx.k("in", "failed"), kept)
                pipe.xack(stream, _GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                if fields.get("w"):
                    pipe.set(self._ctx.k("ires", ticket), IngestResult("").to_json(),
                             ex=_ANSWER_TTL)
                await pipe.execute()
            return 0
        return len(messages)

    # ---- what stats and traces read ----------------------------------------------------------

    async def figures(self) -> tuple[int, float | None, int]:
        """Entries not yet routed, the oldest one's arrival, entries that failed."""
        streams = [self._stream(n) for n in range(self._ctx.keys.partitions)]
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
            pipe.xlen(self._ctx.k("in", "failed"))
            *replies, failed = await pipe.execute()
        pending, oldest = 0, None
        for length, first in zip(replies[::2], replies[1::2], strict=True):
            pending += int(length)
            if first:
                at = id_time(first[0][0])
                oldest = at if oldest is None else min(oldest, at)
        return pending, oldest, int(failed)

    async def find(self, site: str, message_id: str) -> list[MessageRecord]:
        """A message still in the intake (a scan: the intake holds only what is not routed)."""
        needle = message_id
        for number in range(self._ctx.keys.partitions):
            entries: list[Any] = cast(list[Any], await self._ctx.redis.xrange(
                self._stream(number), count=100_000))
            for _, fields in entries:
                if fields.get("s") != site or needle not in fields.get("m", ""):
                    continue
                for message in orjson.loads(fields["m"]):
                    if str(message.get("messageId")) == message_id:
                        return [in_intake(site, message_id, float(fields["t"]))]
        return []
