"""Which process delivers which partition: heartbeat, leases, balancing, claiming, buffering.

- **Order across processes.** A process delivers a vendor's work from a partition stream
  (read through the vendor's consumer group) only while it holds that (site, vendor,
  partition)'s lease (SET NX PX, renewed in the background). Each process aims at a fair share
  (ceil(partitions / live processes), live ones known from a heartbeat sorted set), so the work
  spreads and one visitor's events are always sent by one process, one after another.
  On taking a partition the process first claims every entry the previous holder read and did
  not acknowledge (XAUTOCLAIM, min idle time = the lease time) and reads nothing new until the
  group has no entry pending at another consumer — so a crashed process's in-flight work is
  sent again first (at-least-once; duplicates only for requests in flight), never after a
  later event of the same visitor. A process giving a partition up (rebalance, SIGTERM) marks
  its pending entries long idle (XCLAIM IDLE) so the next holder takes them at once.

- **One entry, many vendors.** Each vendor's group reads every entry of the stream; an entry
  that does not name the vendor is acknowledged as it is read (one XACK per read), an entry
  that does becomes that vendor's work `w + i` (see `keys`).

The entries read from the held partitions are buffered here (in stream order, with their retry
state) until the outbox acknowledges them; new work committed anywhere is announced on the
wake-up channel.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import cast

from redis.typing import StreamIdT

from shoprelay.events import StoredEvent
from shoprelay.spool.redis.context import RedisContext, stop_tasks
from shoprelay.spool.redis.keys import RELEASE, RENEW, id_key, id_time, names, queued_field

log = logging.getLogger("shoprelay.spool")

#: A stream entry as redis-py returns it with decode_responses=True: (entry id, fields).
StreamEntry = tuple[str, dict[str, str]]


@dataclass(slots=True)
class Entry:
    """One vendor's work on a stream entry (one event), buffered by the partition holder."""

    work_id: int
    site: str
    vendor: str
    stream: str
    entry_id: str
    visitor: str
    event_key: str
    created_at: float
    attempts: int = 0
    sent: int = 0
    next_at: float = 0.0
    error: str = ""
    event: StoredEvent | None = None
    #: One request of the event (a dead-lettered part, replayed): its index; None: whole.
    part: int | None = None
    #: From a (site, vendor) stream of the layout before: not counted in `queued`.
    legacy: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """Where it is in its partition's buffer (two streams may hold one entry id)."""
        return self.stream, self.entry_id

    def ack_args(self, queued: str) -> list[str]:
        """KEYS and ARGV of the `ACK` script for this entry."""
        return [self.stream, queued, self.vendor, self.entry_id,
                "" if self.legacy else queued_field(self.site, self.vendor)]


@dataclass(slots=True)
class Partition:
    number: int
    stream: str
    lease: str
    #: The (site, vendor) stream of the layout before, while it still has entries: read
    #: first (it is older; its entries come first in the buffer), deleted once drained.
    legacy: str | None = None
    legacy_unread: bool = True
    #: False until every entry pending at other consumers was claimed (then new ones are read).
    ready: bool = False
    next_claim: float = 0.0
    #: Buffered entries in stream order ((stream, entry id) → entry).
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)

    @property
    def streams(self) -> list[str]:
        return [self.stream] if self.legacy is None else [self.legacy, self.stream]


@dataclass(slots=True)
class Queue:
    site: str
    vendor: str
    held: dict[int, Partition] = field(default_factory=dict)
    next_balance: float = 0.0
    #: Partitions whose stream of the layout before may still hold entries.
    legacy: set[int] = field(default_factory=set)


class Partitions:
    """This process's share of the partitions and the entries it buffered from them."""

    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self.queues: dict[tuple[str, str], Queue] = {}
        #: Every buffered entry by work id (the `OutboxRow.id` the outbox is called with).
        self.rows: dict[int, Entry] = {}
        self.live = 1
        self.tasks: list[asyncio.Task[None]] = []
        self.delivering = False

    # ---- lifecycle: heartbeat, lease renewal, wake-up channel --------------------------------

    def cancel(self) -> None:
        """Stop the background tasks (synchronously: leases then just expire)."""
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    async def aclose(self) -> None:
        """Stop heartbeats and hand every held partition on (its pending entries marked idle
        so the next holder claims them at once)."""
        await stop_tasks(self.tasks)
        self.tasks = []
        try:
            for queue in self.queues.values():
                for number in list(queue.held):
                    await self._give_up(queue, number)
            if self.delivering:
                await self._ctx.redis.zrem(self._ctx.k("procs"), self._ctx.proc_id)
        except Exception:  # a gone Redis must not stop shutdown; leases then just expire
            log.warning("could not hand partitions on at close", exc_info=True)

    async def _ensure_background(self) -> None:
        if self.delivering:
            return
        self.delivering = True
        # Count the live processes before taking any partition, so a process joining a
        # running cluster does not grab more than its share first.
        await self._heartbeat()
        self.tasks = [asyncio.create_task(self._keep_alive(), name="redis-spool-leases"),
                      asyncio.create_task(self._listen(), name="redis-spool-wake")]

    async def _keep_alive(self) -> None:
        """Heartbeat and lease renewal, independent of delivery rounds (a slow vendor's long
        round must not let this process's leases lapse while its requests are in flight)."""
        interval = self._ctx.lease_ms / 3000.0
        while True:
            try:
                await self._heartbeat()
                await self._renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis spool: heartbeat failed", exc_info=True)
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> None:
        ctx = self._ctx
        now = time.time()
        key = ctx.k("procs")
        async with ctx.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {ctx.proc_id: now + ctx.lease_ms / 1000.0})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            *_, live = await pipe.execute()
        if live != self.live:
            self.live = max(1, int(live))
            for queue in self.queues.values():
                queue.next_balance = 0.0  # rebalance on the next round
            ctx.on_new_work()

    async def _renew_leases(self) -> None:
        held = [(queue, number) for queue in self.queues.values() for number in queue.held]
        if not held:
            return
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for queue, number in held:
                pipe.eval(RENEW, 1, queue.held[number].lease, self._ctx.proc_id,
                          self._ctx.lease_ms)
            results = await pipe.execute()
        for (queue, number), ok in zip(held, results, strict=True):
            if not ok and number in queue.held:
                log.warning("redis spool: lost the lease of %s", queue.held[number].stream)
                self._drop(queue, number, in_flight=True)

    async def _listen(self) -> None:
        """Wake this process's workers when any process committed new work."""
        while True:
            try:
                async with self._ctx.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._ctx.k("wake"))
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._ctx.on_new_work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis spool: wake-up channel failed", exc_info=True)
                await asyncio.sleep(1.0)

    # ---- leases, balancing, claiming, reading --------------------------------------------------

    async def take(self, site: str, vendor: str, limit: int) -> list[Partition]:
        """The (site, vendor) partitions this process may deliver from now, their buffers
        read ahead: balance the share, claim what previous holders left, read new entries."""
        await self._ensure_background()
        queue = await self._queue(site, vendor)
        await self._balance(queue, time.time())
        wall = time.time()
        for part in list(queue.held.values()):
            if not part.ready:
                await self._claim(queue, part, wall)
        ready = [p for p in queue.held.values() if p.ready]
        buffered = sum(len(p.entries) for p in ready)
        if ready and buffered < limit * 2:
            # A partition's stream of the layout before is read until empty, then its new one.
            by_stream = {(p.legacy if p.legacy and p.legacy_unread else p.stream): p
                         for p in ready}
            reply = await self._ctx.redis.xreadgroup(
                vendor, self._ctx.proc_id, dict.fromkeys(by_stream, ">"), count=limit)
            # decode_responses=True: ids and fields are str (redis-py types them bytes | str).
            read = cast(list[tuple[str, list[StreamEntry]]] | None, reply)
            got = set()
            for stream, entries in read or []:
                if entries:
                    got.add(stream)
                await self._buffer(queue, by_stream[stream], stream, entries,
                                   with_state=False)
            for stream, part in by_stream.items():
                if stream == part.legacy and stream not in got:
                    part.legacy_unread = False
        for part in ready:
            if part.legacy and not part.legacy_unread:
                await self._drained(queue, part)
        return ready

    async def _drained(self, queue: Queue, part: Partition) -> None:
        """A stream of the layout before with nothing unread (the new stream is read from
        then on): once nothing of it is pending either (all claimed here first, so: nothing
        of it buffered), it is deleted."""
        legacy = part.legacy
        if legacy is None or any(key[0] == legacy for key in part.entries):
            return
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            pipe.delete(legacy)
            pipe.srem(self._ctx.k("queues"), legacy)
            await pipe.execute()
        log.info("redis spool: %s (the layout before) is drained and deleted", legacy)
        part.legacy = None
        queue.legacy.discard(part.number)

    async def _queue(self, site: str, vendor: str) -> Queue:
        queue = self.queues.get((site, vendor))
        if queue is None:
            keys, redis = self._ctx.keys, self._ctx.redis
            streams = [keys.stream_key(site, n) for n in range(keys.partitions)]
            await self._ctx.ensure_groups((stream, vendor) for stream in streams)
            await redis.sadd(self._ctx.k("streams"), *streams)
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(keys.partitions):
                    pipe.exists(keys.legacy_key(site, vendor, n))
                old = await pipe.execute()
            queue = self.queues[(site, vendor)] = Queue(
                site, vendor, legacy={n for n, there in enumerate(old) if there})
        return queue

    def _drop(self, queue: Queue, number: int, *, in_flight: bool = False) -> None:
        """Stop delivering from a partition. After a lost lease (`in_flight`) its rows stay
        known, so a request still running can be acknowledged when it ends: if that comes
        before the new holder claims the entry, the entry is not sent twice."""
        part = queue.held.pop(number, None)
        if part is not None and not in_flight:
            for entry in part.entries.values():
                self.rows.pop(entry.work_id, None)

    async def _mine(self, stream: str, vendor: str) -> list[str]:
        """The ids of the stream's entries pending at this process's consumer of `vendor`."""
        pending = await self._ctx.redis.xpending_range(stream, vendor, min="-", max="+",
                                                       count=100_000,
                                                       consumername=self._ctx.proc_id)
        # decode_responses=True: the ids are str (redis-py types them bytes | str | int).
        return [cast(str, p["message_id"]) for p in pending]

    async def _give_up(self, queue: Queue, number: int) -> None:
        """Release a partition so another process can take it at once: our pending entries
        are marked long idle first, so its XAUTOCLAIM takes them without waiting."""
        ctx = self._ctx
        part = queue.held[number]
        for stream in part.streams:
            ids = await self._mine(stream, queue.vendor)
            for start in range(0, len(ids), 1000):
                batch: list[StreamIdT] = [*ids[start:start + 1000]]  # typed: list is invariant
                await ctx.redis.xclaim(stream, queue.vendor, ctx.proc_id, 0, batch,
                                       idle=ctx.lease_ms * 100, justid=True)
        await ctx.redis.eval(RELEASE, 1, part.lease, ctx.proc_id)
        self._drop(queue, number)
        await ctx.redis.publish(ctx.k("wake"), queue.site)  # someone may take it now

    async def _balance(self, queue: Queue, now: float) -> None:
        """Hold a fair share of the queue's partitions: give extras up, take free ones."""
        if now < queue.next_balance:
            return
        queue.next_balance = now + 0.5
        ctx = self._ctx
        partitions = ctx.keys.partitions
        share = math.ceil(partitions / max(1, self.live))
        if len(queue.held) > share:
            # Give up the partitions with the least buffered work first.
            extras = sorted(queue.held, key=lambda n: len(queue.held[n].entries))
            for number in extras[:len(queue.held) - share]:
                await self._give_up(queue, number)
            return
        if len(queue.held) == share:
            return
        free = [n for n in range(partitions) if n not in queue.held]
        random.shuffle(free)
        for number in free:
            if len(queue.held) >= share:
                break
            lease = ctx.k("lease", queue.site, queue.vendor, f"p{number}")
            if await ctx.redis.set(lease, ctx.proc_id, nx=True, px=ctx.lease_ms):
                legacy = (ctx.keys.legacy_key(queue.site, queue.vendor, number)
                          if number in queue.legacy else None)
                queue.held[number] = Partition(
                    number, ctx.keys.stream_key(queue.site, number), lease, legacy)

    async def _claim(self, queue: Queue, part: Partition, now: float) -> None:
        """Take over what the previous holders left unacknowledged; ready when none is left."""
        if now < part.next_claim:
            return
        part.next_claim = now + 0.2
        ctx = self._ctx
        others = False
        for stream in part.streams:
            claimed = await self._claim_stream(queue, part, stream)
            if claimed:
                await self._buffer(queue, part, stream, claimed, with_state=True)
                log.info("redis spool: took over %d unacknowledged entr(ies) of %s for %s",
                         len(claimed), stream, queue.vendor)
            summary = await ctx.redis.xpending(stream, queue.vendor)
            others = others or any(c["name"] != ctx.proc_id and int(c["pending"]) > 0
                                   for c in (summary.get("consumers") or []))
        part.ready = not others

    async def _claim_stream(self, queue: Queue, part: Partition,
                            stream: str) -> list[StreamEntry]:
        ctx = self._ctx
        claimed: list[StreamEntry] = []
        cursor = "0-0"
        while True:
            reply = await ctx.redis.xautoclaim(stream, queue.vendor, ctx.proc_id,
                                               min_idle_time=ctx.lease_ms,
                                               start_id=cursor, count=500)
            cursor, entries = reply[0], reply[1]
            claimed.extend(entries)
            if cursor == "0-0":
                break
        # Our own unacknowledged entries that are not buffered (the partition was lost and
        # taken back) are ours to send too, idle or not.
        mine = await self._mine(stream, queue.vendor)
        taken = {entry_id for entry_id, _ in claimed}
        lost = [entry_id for entry_id in mine if (stream, entry_id) not in part.entries
                and entry_id not in taken]
        for start in range(0, len(lost), 1000):
            batch: list[StreamIdT] = [*lost[start:start + 1000]]  # typed: list is invariant
            more = await ctx.redis.xclaim(stream, queue.vendor, ctx.proc_id, 0, batch)
            claimed.extend(cast(list[StreamEntry], more))  # decode_responses=True: str
        return claimed

    async def _buffer(self, queue: Queue, part: Partition, stream: str,
                      entries: list[StreamEntry], *, with_state: bool) -> None:
        new: list[Entry] = []
        others: list[StreamIdT] = []
        legacy = stream == part.legacy
        for entry_id, fields in entries:
            if (stream, entry_id) in part.entries or not fields:
                continue
            work_id = int(fields["w"])
            if not legacy:
                index = names(fields.get("d", ""), queue.vendor)
                if index is None:
                    others.append(entry_id)  # another vendor's event: nothing to do here
                    continue
                work_id += index
            entry = Entry(work_id=work_id, site=queue.site, vendor=queue.vendor, stream=stream,
                          entry_id=entry_id, visitor=fields.get("v", ""),
                          event_key=fields["e"],
                          created_at=float(fields.get("t") or id_time(entry_id)),
                          part=int(fields["p"]) if fields.get("p") else None, legacy=legacy)
            new.append(entry)
        if others:
            await self._ctx.redis.xack(stream, queue.vendor, *others)
        if with_state and new:
            # Claimed entries may have been tried before: their retry state is in Redis.
            async with self._ctx.redis.pipeline(transaction=False) as pipe:
                for entry in new:
                    pipe.hgetall(self._ctx.k("work", str(entry.work_id)))
                states = await pipe.execute()
            for entry, state in zip(new, states, strict=True):
                if state:
                    entry.attempts = int(state.get("attempts", 0))
                    entry.sent = int(state.get("sent", 0))
                    entry.next_at = float(state.get("next_at", 0))
                    entry.error = state.get("error", "")
        if with_state:
            # Claimed entries come before anything read new: keep the buffer in stream order.
            # (The stream of the layout before is older: its entries come first.)
            merged = list(part.entries.values()) + new
            merged.sort(key=lambda e: (not e.legacy, id_key(e.entry_id)))
            part.entries = {e.key: e for e in merged}
        else:
            for entry in new:
                part.entries[entry.key] = entry
        for entry in new:
            self.rows[entry.work_id] = entry

    # ---- the buffer, as the outbox sees it ---------------------------------------------------

    def entries(self, ids: list[int]) -> list[Entry]:
        """The buffered entries of these work ids (those still held here)."""
        found = []
        for work_id in ids:
            entry = self.rows.get(work_id)
            if entry is None:
                # Its partition was lost (lease expired): the new holder delivers it.
                log.warning("redis spool: work %d is no longer held here", work_id)
                continue
            found.append(entry)
        return found

    def forget(self, entry: Entry) -> None:
        """Unbuffer an entry whose fate was recorded (acknowledged)."""
        self.rows.pop(entry.work_id, None)
        queue = self.queues.get((entry.site, entry.vendor))
        for part in queue.held.values() if queue is not None else ():
            if entry.key in part.entries:
                del part.entries[entry.key]
                return
