"""The scale-out spool: Redis Streams shared by any number of relay processes and hosts.

Selected by `spool = "redis://host:port/db"`. Every process ingests and delivers; Redis holds
everything that must be shared:

- **Ingest.** A request's messages are folded into their visitors' state (the same pure
  `identity.state.apply` as SQLite) inside one optimistic transaction: WATCH the visitors'
  state keys and the messageId / order_id dedup keys, read them, fold, then MULTI/EXEC the new
  states, the stored events, the dedup keys and one XADD per (event, vendor). Two processes
  ingesting for one visitor at once cannot lose a state update: the later EXEC fails
  (WatchError) and is folded again on the fresh state. The answer waits for EXEC.
- **Work.** Per (site, vendor) a fixed number of partition streams; a visitor always hashes to
  the same partition, so its events are in one stream in the order they were accepted. Each
  stream has a consumer group named after the vendor; entries carry the work id (an INCR
  counter, the `OutboxRow.id`), the event key and the visitor. Retry state lives in a small
  hash per work id, written only when a row is retried or half-sent.
- **Order across processes.** A process delivers from a partition only while it holds the
  partition's lease (SET NX PX, renewed in the background). Each process aims at a fair share
  (ceil(partitions / live processes), live ones known from a heartbeat sorted set), so the work
  spreads and one visitor's events are always sent by one process, one after another.
  On taking a partition the process first claims every entry the previous holder read and did
  not acknowledge (XAUTOCLAIM, min idle time = the lease time) and reads nothing new until the
  group has no entry pending at another consumer — so a crashed process's in-flight work is
  sent again first (at-least-once; duplicates only for requests in flight), never after a
  later event of the same visitor. A process giving a partition up (rebalance, SIGTERM) marks
  its pending entries long idle (XCLAIM IDLE) so the next holder takes them at once.
- **Fates.** Delivered: XACK. Retry: stays pending, with next_at in its hash. Dead: XACK plus
  a dead-letter record (hash by id + time-sorted zset); replay XADDs it again.
- **Retention.** `prune` trims each stream by MINID (never past an unacknowledged or unread
  entry) and drops old dead letters; events, dedup keys and work hashes carry TTLs.

Redis must keep what it acknowledged: see docs/deploy.md (appendonly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from shoprelay.events import StoredEvent
from shoprelay.identity.state import VisitorState
from shoprelay.ingest.rules import (
    IngestPlan,
    IngestRules,
    Keys,
    Missing,
    OrderRecord,
    RequestContext,
)
from shoprelay.spool.base import (
    DEAD,
    DELIVERED,
    PENDING,
    SKIPPED,
    DeadLetter,
    IngestResult,
    OutboxRow,
    Router,
    SpoolStats,
)

log = logging.getLogger("shoprelay.spool")

#: Compare-and-renew / compare-and-delete of a lease: only the holder may touch it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
#: An ingest's writes, as a flat list of operations (run inside MULTI, after the WATCH check):
#: S key value ttl (SET, ttl 0 = none) | X stream work event visitor time (XADD) |
#: H key field n (HINCRBY) | A key member (SADD) | P channel message (PUBLISH).
_COMMIT = """
local i, n = 1, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'S' then
    if ARGV[i + 3] ~= '0' then
      redis.call('SET', ARGV[i + 1], ARGV[i + 2], 'EX', ARGV[i + 3])
    else
      redis.call('SET', ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 4
  elseif op == 'X' then
    redis.call('XADD', ARGV[i + 1], '*', 'w', ARGV[i + 2], 'e', ARGV[i + 3], 'v', ARGV[i + 4],
               't', ARGV[i + 5])
    i = i + 6
  elseif op == 'H' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'A' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'P' then
    redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
"""
#: An ingest transaction that keeps failing on contention is tried this often before giving up.
_INGEST_TRIES = 100


@dataclass(slots=True)
class _Entry:
    """One stream entry (one event's work for one vendor) buffered by the partition holder."""

    work_id: int
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


@dataclass(slots=True)
class _Partition:
    number: int
    stream: str
    lease: str
    #: False until every entry pending at other consumers was claimed (then new ones are read).
    ready: bool = False
    next_claim: float = 0.0
    #: Buffered entries in stream order (entry id → entry).
    entries: dict[str, _Entry] = field(default_factory=dict)


@dataclass(slots=True)
class _Queue:
    site: str
    vendor: str
    held: dict[int, _Partition] = field(default_factory=dict)
    next_balance: float = 0.0


def _id_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _Snapshot:
    """The ingest rules' view of Redis: the values read (under WATCH) so far. A key not read
    yet raises `Missing`, and the spool reads it and folds again."""

    def __init__(self, spool: RedisSpool, site: str, known: dict[str, str | None]) -> None:
        self._k = spool._k
        self._site = site
        self._known = known

    def _get(self, kind: str, key: str) -> str | None:
        full = self._k(kind, self._site, key)
        if full not in self._known:
            raise Missing(kind, full)
        return self._known[full]

    def alias(self, anonymous_id: str) -> str | None:
        return self._get("alias", anonymous_id)

    def user(self, user_id: str) -> str | None:
        return self._get("user", user_id)

    def message_seen(self, message_id: str) -> bool:
        return self._get("msg", message_id) is not None

    def order(self, order_id: str) -> OrderRecord | None:
        raw = self._get("ord", order_id)
        return None if raw is None else OrderRecord.from_json(raw)

    def state(self, visitor_id: str) -> VisitorState:
        raw = self._get("st", visitor_id)
        # Parsed afresh on every fold: a fold that ran into `Missing` may have changed the
        # object it was given.
        return VisitorState.from_dict(orjson.loads(raw)) if raw else VisitorState()


class RedisSpool:
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
        retention: float = 168 * 3600.0,
        max_age: float = 24 * 3600.0,
        lease_seconds: float = 10.0,
        state_ttl: float = 730 * 86400.0,
        order_source: Callable[[str], str] | None = None,
    ) -> None:
        self.url = url
        self.path = url  # what the app logs as "spool"
        self._alias_for = alias_for
        self.rules = IngestRules(router=router, session_timeout=session_timeout,
                                 alias_for=alias_for, new_id=new_id, order_source=order_source)
        self.prefix = prefix
        self.partitions = max(1, partitions)
        # Dedup keys live as long as SQLite keeps a message; events as long as their work may.
        self._dedup_ttl = max(1, int(retention)) if retention > 0 else None
        self._event_ttl = max(1, int(retention + max_age)) if retention > 0 else None
        self._state_ttl = max(1, int(state_ttl))
        self._lease_ms = max(300, int(lease_seconds * 1000))
        #: This process's consumer name and lease value; new every start (a restarted process
        #: is a new consumer, and its predecessor's entries are claimed like anyone's).
        self.proc_id = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._rows: dict[int, _Entry] = {}
        self._live = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._delivering = False
        #: Called after new work was committed (here or, via pub/sub, in another process).
        self.on_new_work: Callable[[], None] = lambda: None

    # ---- keys ------------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def stream_key(self, site: str, vendor: str, partition: int) -> str:
        return self._k("q", site, vendor, f"p{partition}")

    def partition_of(self, visitor: str) -> int:
        # crc32 is stable across processes and releases (Python's hash() is salted).
        return zlib.crc32(visitor.encode()) % self.partitions

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to open: connections are made on first use (on the caller's loop)."""

    def close(self) -> None:
        """Synchronous close for callers without a loop; `aclose` also hands partitions on."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def claim_delivery(self) -> None:
        """Any number of processes deliver from one Redis (partition leases keep order)."""

    async def aclose(self) -> None:
        """Stop heartbeats, hand every held partition on (its pending entries marked idle so
        the next holder claims them at once) and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            for queue in self._queues.values():
                for number in list(queue.held):
                    await self._give_up(queue, number)
            if self._delivering:
                await self._redis.zrem(self._k("procs"), self.proc_id)
        except Exception:  # a gone Redis must not stop shutdown; leases then just expire
            log.warning("could not hand partitions on at close", exc_info=True)
        await self._redis.aclose()

    async def _ensure_background(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        # Count the live processes before taking any partition, so a process joining a
        # running cluster does not grab more than its share first.
        await self._heartbeat()
        self._tasks = [asyncio.create_task(self._keep_alive(), name="redis-spool-leases"),
                       asyncio.create_task(self._listen(), name="redis-spool-wake")]

    async def _keep_alive(self) -> None:
        """Heartbeat and lease renewal, independent of delivery rounds (a slow vendor's long
        round must not let this process's leases lapse while its requests are in flight)."""
        interval = self._lease_ms / 3000.0
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
        now = time.time()
        key = self._k("procs")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.proc_id: now + self._lease_ms / 1000.0})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            *_, live = await pipe.execute()
        if live != self._live:
            self._live = max(1, int(live))
            for queue in self._queues.values():
                queue.next_balance = 0.0  # rebalance on the next round
            self.on_new_work()

    async def _renew_leases(self) -> None:
        held = [(queue, number) for queue in self._queues.values() for number in queue.held]
        if not held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, number in held:
                pipe.eval(_RENEW, 1, queue.held[number].lease, self.proc_id, self._lease_ms)
            results = await pipe.execute()
        for (queue, number), ok in zip(held, results, strict=True):
            if not ok and number in queue.held:
                log.warning("redis spool: lost the lease of %s", queue.held[number].stream)
                self._drop(queue, number, in_flight=True)

    async def _listen(self) -> None:
        """Wake this process's workers when any process committed new work."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._k("wake"))
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.on_new_work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis spool: wake-up channel failed", exc_info=True)
                await asyncio.sleep(1.0)

    # ---- ingest ----------------------------------------------------------------------------

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext) -> IngestResult:
        """Store the messages as the ingest rules decide, in one Redis transaction."""
        received_at = time.time()
        for _ in range(_INGEST_TRIES):
            try:
                return await self._ingest_once(site, messages, context, received_at)
            except WatchError:
                # Another process changed one of these visitors (or stored one of these
                # messages) since we read it: fold again on what is there now.
                await asyncio.sleep(random.uniform(0, 0.002))
        raise RuntimeError("ingest: too much contention on the same visitors")

    async def _ingest_once(self, site: str, messages: list[dict[str, Any]],
                           context: RequestContext, received_at: float) -> IngestResult:
        keys = self.rules.keys(messages, context)
        k = self._k
        wanted = [*(k("alias", site, a) for a in keys.anonymous_ids),
                  *(k("user", site, u) for u in keys.user_ids),
                  *(k("msg", site, m) for m in keys.message_ids),
                  *(k("ord", site, o) for o in keys.order_ids),
                  *(k("st", site, v) for v in keys.visitors)]
        known: dict[str, str | None] = {}
        async with self._redis.pipeline(transaction=True) as pipe:
            await self._read(pipe, wanted, known)
            # Read ahead the states the aliases and bindings point to, and those new aliases
            # will make: most requests then fold in one pass.
            await self._read(pipe, [k("st", site, v)
                                    for v in self._likely_visitors(site, keys, known)], known)
            for _ in range(len(messages) * 3 + 1):
                try:
                    plan = self.rules.fold(site, messages, context, _Snapshot(self, site, known),
                                           received_at)
                    break
                except Missing as missing:
                    await self._read(pipe, [missing.key], known)
            else:  # pragma: no cover - the fold asks for at most a few keys per message
                raise RuntimeError("ingest: the fold kept asking for more keys")
            await self._commit(pipe, site, plan, received_at)
        if plan.work:
            self.on_new_work()
        return plan.result

    @staticmethod
    async def _read(pipe: Any, keys: list[str], known: dict[str, str | None]) -> None:
        """Read keys not read yet, WATCHing them: EXEC fails if any of them changes."""
        new = [key for key in dict.fromkeys(keys) if key not in known]
        if new:
            await pipe.watch(*new)
            known.update(zip(new, await pipe.mget(new), strict=True))

    def _likely_visitors(self, site: str, keys: Keys,
                         known: dict[str, str | None]) -> list[str]:
        found = [known.get(self._k("alias", site, a)) or self._alias_for(site, a)
                 for a in keys.anonymous_ids]
        found += [v for u in keys.user_ids if (v := known.get(self._k("user", site, u)))]
        return list(dict.fromkeys(found))

    async def _commit(self, pipe: Any, site: str, plan: IngestPlan, received_at: float) -> None:
        """Write the plan inside MULTI, as one script call: EXEC still runs it only if nothing
        WATCHed changed, and one command with one reply costs far less than ~10 a message
        (measured: the client's packing and reply parsing dominated)."""
        rows = plan.work
        last_id = 0
        if plan.stored:
            # Ids for the events and their work, reserved before MULTI (EXEC may still fail;
            # a failed try only leaves a gap in the numbering).
            last_id = int(await pipe.incrby(self._k("seq"), len(plan.stored) + rows))
        next_id = last_id - len(plan.stored) - rows + 1
        ops: list[Any] = []
        state_ttl, event_ttl = self._state_ttl, self._event_ttl or 0
        dedup_ttl = self._dedup_ttl or 0
        for anonymous_id, visitor in plan.aliases.items():
            ops += ("S", self._k("alias", site, anonymous_id), visitor, state_ttl)
        for user_id, visitor in plan.users.items():
            ops += ("S", self._k("user", site, user_id), visitor, state_ttl)
        for visitor, state in plan.states.items():
            ops += ("S", self._k("st", site, visitor), orjson.dumps(state.to_dict()), state_ttl)
        for order_id, record in plan.orders.items():
            ops += ("S", self._k("ord", site, order_id), record.to_json(), dedup_ttl)
        streams: set[str] = set()
        stamp = repr(received_at)
        for stored in plan.stored:
            event = stored.event
            event_id, next_id = next_id, next_id + 1
            event_key = self._k("ev", site, str(event_id))
            ops += ("S", event_key, orjson.dumps(event.to_dict()), event_ttl,
                    "S", self._k("msg", site, event.message_id), event_key, dedup_ttl)
            partition = self.partition_of(stored.visitor_id)
            for vendor in stored.vendors:
                work_id, next_id = next_id, next_id + 1
                stream = self.stream_key(site, vendor, partition)
                streams.add(stream)
                ops += ("X", stream, work_id, event_key, stored.visitor_id, stamp)
        if plan.stored:
            ops += ("H", self._k("counts"), "messages", len(plan.stored))
        for stream in streams:
            ops += ("A", self._k("queues"), stream)
        if streams:
            ops += ("P", self._k("wake"), site)
        pipe.multi()
        if ops:
            pipe.eval(_COMMIT, 0, *ops)
        await pipe.execute()

    # ---- partitions: leases, claiming, reading -----------------------------------------------

    async def _queue(self, site: str, vendor: str) -> _Queue:
        queue = self._queues.get((site, vendor))
        if queue is None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for n in range(self.partitions):
                    # From id 0: entries added before any process delivered are not skipped.
                    pipe.xgroup_create(self.stream_key(site, vendor, n), vendor, id="0",
                                       mkstream=True)
                results = await pipe.execute(raise_on_error=False)
            for outcome in results:
                if isinstance(outcome, Exception) and "BUSYGROUP" not in str(outcome):
                    raise outcome
            await self._redis.sadd(self._k("queues"),
                                   *(self.stream_key(site, vendor, n)
                                     for n in range(self.partitions)))
            queue = self._queues[(site, vendor)] = _Queue(site, vendor)
        return queue

    def _drop(self, queue: _Queue, number: int, *, in_flight: bool = False) -> None:
        """Stop delivering from a partition. After a lost lease (`in_flight`) its rows stay
        known, so a request still running can be acknowledged when it ends: if that comes
        before the new holder claims the entry, the entry is not sent twice."""
        part = queue.held.pop(number, None)
        if part is not None and not in_flight:
            for entry in part.entries.values():
                self._rows.pop(entry.work_id, None)

    async def _give_up(self, queue: _Queue, number: int) -> None:
        """Release a partition so another process can take it at once: our pending entries
        are marked long idle first, so its XAUTOCLAIM takes them without waiting."""
        part = queue.held[number]
        pending = await self._redis.xpending_range(part.stream, queue.vendor, min="-", max="+",
                                                   count=100_000, consumername=self.proc_id)
        ids = [p["message_id"] for p in pending]
        for start in range(0, len(ids), 1000):
            await self._redis.xclaim(part.stream, queue.vendor, self.proc_id, 0,
                                     ids[start:start + 1000], idle=self._lease_ms * 100,
                                     justid=True)
        await self._redis.eval(_RELEASE, 1, part.lease, self.proc_id)
        self._drop(queue, number)
        await self._redis.publish(self._k("wake"), queue.site)  # someone may take it now

    async def _balance(self, queue: _Queue, now: float) -> None:
        """Hold a fair share of the queue's partitions: give extras up, take free ones."""
        if now < queue.next_balance:
            return
        queue.next_balance = now + 0.5
        share = math.ceil(self.partitions / max(1, self._live))
        if len(queue.held) > share:
            # Give up the partitions with the least buffered work first.
            extras = sorted(queue.held, key=lambda n: len(queue.held[n].entries))
            for number in extras[:len(queue.held) - share]:
                await self._give_up(queue, number)
            return
        if len(queue.held) == share:
            return
        free = [n for n in range(self.partitions) if n not in queue.held]
        random.shuffle(free)
        for number in free:
            if len(queue.held) >= share:
                break
            lease = self._k("lease", queue.site, queue.vendor, f"p{number}")
            if await self._redis.set(lease, self.proc_id, nx=True, px=self._lease_ms):
                queue.held[number] = _Partition(
                    number, self.stream_key(queue.site, queue.vendor, number), lease)

    async def _claim(self, queue: _Queue, part: _Partition, now: float) -> None:
        """Take over what the previous holders left unacknowledged; ready when none is left."""
        if now < part.next_claim:
            return
        part.next_claim = now + 0.2
        claimed: list[tuple[str, dict[str, str]]] = []
        cursor = "0-0"
        while True:
            reply = await self._redis.xautoclaim(part.stream, queue.vendor, self.proc_id,
                                                 min_idle_time=self._lease_ms,
                                                 start_id=cursor, count=500)
            cursor, entries = reply[0], reply[1]
            claimed.extend(entries)
            if cursor == "0-0":
                break
        # Our own unacknowledged entries that are not buffered (the partition was lost and
        # taken back) are ours to send too, idle or not.
        mine = await self._redis.xpending_range(part.stream, queue.vendor, min="-", max="+",
                                                count=100_000, consumername=self.proc_id)
        taken = {entry_id for entry_id, _ in claimed}
        lost = [p["message_id"] for p in mine if p["message_id"] not in part.entries
                and p["message_id"] not in taken]
        for start in range(0, len(lost), 1000):
            claimed.extend(await self._redis.xclaim(part.stream, queue.vendor, self.proc_id, 0,
                                                    lost[start:start + 1000]))
        if claimed:
            await self._buffer(part, claimed, with_state=True)
            log.info("redis spool: took over %d unacknowledged entr(ies) of %s",
                     len(claimed), part.stream)
        summary = await self._redis.xpending(part.stream, queue.vendor)
        others = [c for c in (summary.get("consumers") or []) if c["name"] != self.proc_id
                  and int(c["pending"]) > 0]
        part.ready = not others

    async def _buffer(self, part: _Partition, entries: list[tuple[str, dict[str, str]]],
                      *, with_state: bool) -> None:
        new: list[_Entry] = []
        for entry_id, fields in entries:
            if entry_id in part.entries or not fields:
                continue
            entry = _Entry(work_id=int(fields["w"]), stream=part.stream, entry_id=entry_id,
                           visitor=fields.get("v", ""), event_key=fields["e"],
                           created_at=float(fields.get("t") or _id_time(entry_id)))
            new.append(entry)
        if with_state and new:
            # Claimed entries may have been tried before: their retry state is in Redis.
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in new:
                    pipe.hgetall(self._k("work", str(entry.work_id)))
                states = await pipe.execute()
            for entry, state in zip(new, states, strict=True):
                if state:
                    entry.attempts = int(state.get("attempts", 0))
                    entry.sent = int(state.get("sent", 0))
                    entry.next_at = float(state.get("next_at", 0))
                    entry.error = state.get("error", "")
        if with_state:
            # Claimed entries come before anything read new: keep the buffer in stream order.
            merged = list(part.entries.values()) + new
            merged.sort(key=lambda e: _id_key(e.entry_id))
            part.entries = {e.entry_id: e for e in merged}
        else:
            for entry in new:
                part.entries[entry.entry_id] = entry
        for entry in new:
            self._rows[entry.work_id] = entry

    # ---- delivery --------------------------------------------------------------------------

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]:
        """Due work from the partitions this process holds, oldest first, skipping any
        visitor whose earlier work waits for a retry (as SQLite's `due`)."""
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
            reply = await self._redis.xreadgroup(
                vendor, self.proc_id, {p.stream: ">" for p in ready}, count=limit)
            by_stream = {p.stream: p for p in ready}
            for stream, entries in reply or []:
                await self._buffer(by_stream[stream], entries, with_state=False)

        picked: list[_Entry] = []
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
        missing = [e for e in picked if e.event is None]
        if missing:
            bodies = await self._redis.mget([e.event_key for e in missing])
            for entry, body in zip(missing, bodies, strict=True):
                if body:
                    entry.event = StoredEvent.from_dict(orjson.loads(body))
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
                                  event=entry.event, error=entry.error))
        return rows

    async def next_due_at(self, site: str, vendor: str) -> float | None:
        """The earliest retry among buffered work; at the latest a lease period from now, so
        an idle worker still looks for partitions to take and for other processes' work."""
        queue = self._queues.get((site, vendor))
        soon = time.time() + self._lease_ms / 3000.0
        if queue is None:
            return soon
        times = [e.next_at for p in queue.held.values() for e in p.entries.values()]
        if any(not p.ready for p in queue.held.values()):
            times.append(time.time() + 0.2)
        return min([*times, soon])

    async def _ack(self, entry: _Entry) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(entry.stream, entry.stream.split(":")[-2], entry.entry_id)
            pipe.delete(self._k("work", str(entry.work_id)))
            await pipe.execute()
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        self._rows.pop(entry.work_id, None)
        for queue in self._queues.values():
            for part in queue.held.values():
                if part.stream == entry.stream:
                    part.entries.pop(entry.entry_id, None)
                    return

    def _entries(self, ids: list[int]) -> list[_Entry]:
        found = []
        for work_id in ids:
            entry = self._rows.get(work_id)
            if entry is None:
                # Its partition was lost (lease expired): the new holder delivers it.
                log.warning("redis spool: work %d is no longer held here", work_id)
                continue
            found.append(entry)
        return found

    @staticmethod
    def _vendor_of(entry: _Entry) -> str:
        return entry.stream.split(":")[-2]

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None) -> None:
        entries = self._entries(ids)
        if not entries:
            return
        counts = self._k("counts")
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xack(entry.stream, self._vendor_of(entry), entry.entry_id)
                pipe.delete(self._k("work", str(entry.work_id)))
                state = "skipped" if skipped else "delivered"
                pipe.hincrby(counts, f"{self._vendor_of(entry)}:{state}", 1)
            await pipe.execute()
        for entry in entries:
            self._forget(entry)

    async def mark_progress(self, row_id: int, sent: int) -> None:
        for entry in self._entries([row_id]):
            entry.sent = sent
            key = self._k("work", str(entry.work_id))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, "sent", sent)
                pipe.expire(key, self._event_ttl or 86400 * 30)
                await pipe.execute()

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str) -> None:
        entries = self._entries(ids)
        if not entries:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                entry.attempts += 1
                entry.next_at = next_at
                entry.error = error or ""
                key = self._k("work", str(entry.work_id))
                pipe.hset(key, mapping={"attempts": entry.attempts, "sent": entry.sent,
                                        "next_at": repr(next_at), "status": status or 0,
                                        "error": entry.error})
                pipe.expire(key, self._event_ttl or 86400 * 30)
            await pipe.execute()

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None:
        entries = self._entries(ids)
        if not entries:
            return
        now = time.time()
        missing = [e for e in entries if e.event is None]
        if missing:
            bodies = await self._redis.mget([e.event_key for e in missing])
            for entry, body in zip(missing, bodies, strict=True):
                if body:
                    entry.event = StoredEvent.from_dict(orjson.loads(body))
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                vendor = self._vendor_of(entry)
                site = entry.event.site if entry.event else entry.stream.split(":")[-3]
                record = {
                    "id": entry.work_id, "site": site, "vendor": vendor,
                    "visitor_id": entry.visitor, "attempts": entry.attempts + 1,
                    "status": status, "error": error, "response": response,
                    "request": request, "failed_at": now, "event_key": entry.event_key,
                    "event": entry.event.to_dict() if entry.event else None,
                }
                pipe.hset(self._k("dead"), str(entry.work_id), orjson.dumps(record))
                pipe.zadd(self._k("dead", "time"), {str(entry.work_id): now})
                pipe.hincrby(self._k("counts"), f"{vendor}:dead", 1)
                pipe.xack(entry.stream, vendor, entry.entry_id)
                pipe.delete(self._k("work", str(entry.work_id)))
            await pipe.execute()
        for entry in entries:
            self._forget(entry)

    # ---- dead letters, statistics, retention ------------------------------------------------

    async def _dead_records(self, since: float | None) -> list[dict[str, Any]]:
        ids = await self._redis.zrangebyscore(self._k("dead", "time"),
                                              "-inf" if since is None else since, "+inf")
        if not ids:
            return []
        raw = await self._redis.hmget(self._k("dead"), ids)
        return [orjson.loads(r) for r in raw if r]

    async def dead_letters(self, *, vendor: str | None = None, since: float | None = None,
                           dead_id: int | None = None) -> list[DeadLetter]:
        letters = []
        for r in await self._dead_records(since):
            if (vendor and r["vendor"] != vendor) or (dead_id is not None
                                                      and r["id"] != dead_id):
                continue
            if r.get("event") is None:
                continue
            letters.append(DeadLetter(
                id=r["id"], site=r["site"], vendor=r["vendor"], visitor_id=r["visitor_id"],
                attempts=r["attempts"], status=r["status"], error=r["error"] or "",
                response=r["response"] or "", failed_at=r["failed_at"],
                event=StoredEvent.from_dict(r["event"]), request=r["request"] or ""))
        return sorted(letters, key=lambda d: d.id)

    async def replay(self, *, vendor: str | None = None, dead_id: int | None = None) -> int:
        """Queue dead letters again: a new stream entry each (fresh attempts and max age)."""
        count = 0
        dead_key, time_key = self._k("dead"), self._k("dead", "time")
        for record in await self._dead_records(None):
            if (vendor and record["vendor"] != vendor) or (dead_id is not None
                                                           and record["id"] != dead_id):
                continue
            if record.get("event") is None:
                continue
            member = str(record["id"])
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    # Two replays at once must not queue one letter twice.
                    await pipe.watch(dead_key)
                    if not await pipe.hexists(dead_key, member):
                        continue
                    work_id = int(await pipe.incr(self._k("seq")))
                    site, visitor = record["site"], record["visitor_id"]
                    stream = self.stream_key(site, record["vendor"],
                                             self.partition_of(visitor))
                    pipe.multi()
                    pipe.set(record["event_key"], orjson.dumps(record["event"]),
                             ex=self._event_ttl)
                    pipe.xadd(stream, {"w": work_id, "e": record["event_key"], "v": visitor,
                                       "t": repr(time.time())})
                    pipe.hdel(dead_key, member)
                    pipe.zrem(time_key, member)
                    pipe.hincrby(self._k("counts"), f"{record['vendor']}:dead", -1)
                    pipe.sadd(self._k("queues"), stream)
                    pipe.publish(self._k("wake"), site)
                    await pipe.execute()
                except WatchError:
                    continue
            count += 1
        if count:
            self.on_new_work()
        return count

    async def _streams(self) -> list[str]:
        return sorted(await self._redis.smembers(self._k("queues")))

    async def _group(self, stream: str) -> dict[str, Any] | None:
        vendor = stream.split(":")[-2]
        try:
            groups = await self._redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return None
        for group in groups:
            if group["name"] == vendor:
                return group
        return None

    async def stats(self) -> SpoolStats:
        stats = SpoolStats()
        queued: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for stream in await self._streams():
            vendor = stream.split(":")[-2]
            group = await self._group(stream)
            first: str | None = None
            if group is None:
                waiting = int(await self._redis.xlen(stream))
                head = await self._redis.xrange(stream, count=1)
                first = head[0][0] if head else None
            else:
                lag = group.get("lag")
                last = group["last-delivered-id"]
                if lag is None:  # Redis cannot tell (after deletions): count what is unread
                    lag = len(await self._redis.xrange(stream, f"({last}", "+"))
                waiting = int(lag) + int(group["pending"])
                if int(group["pending"]):
                    summary = await self._redis.xpending(stream, vendor)
                    first = summary.get("min")
                elif lag:
                    after = await self._redis.xrange(stream, f"({last}", "+", count=1)
                    first = after[0][0] if after else None
            queued[vendor] = queued.get(vendor, 0) + waiting
            if waiting and first:
                oldest[vendor] = min(oldest.get(vendor, math.inf), _id_time(first))
        counts = await self._redis.hgetall(self._k("counts"))
        vendors = set(queued) | {k.split(":")[0] for k in counts if ":" in k}
        for vendor in vendors:
            stats.add(vendor, PENDING, queued.get(vendor, 0), oldest.get(vendor))
            for state, name in ((DELIVERED, "delivered"), (SKIPPED, "skipped"),
                                (DEAD, "dead")):
                value = int(counts.get(f"{vendor}:{name}", 0))
                if value:
                    stats.add(vendor, state, value, None)
        stats.messages = int(counts.get("messages", 0))
        memory = await self._redis.info("memory")
        stats.file_bytes = int(memory.get("used_memory", 0))
        return stats

    async def prune(self, older_than: float) -> int:
        """Trim every stream to what is newer than `older_than`, never past an entry that is
        unacknowledged or not yet read; forget dead letters that failed before it. Returns the
        finished stream entries removed."""
        cutoff = (int(older_than * 1000), 0)
        removed = 0
        for stream in await self._streams():
            vendor = stream.split(":")[-2]
            group = await self._group(stream)
            if group is None:
                continue  # never read: everything in it is still to deliver
            bound = cutoff
            last = _id_key(group["last-delivered-id"])
            bound = min(bound, (last[0], last[1] + 1))
            if int(group["pending"]):
                summary = await self._redis.xpending(stream, vendor)
                if summary.get("min"):
                    bound = min(bound, _id_key(summary["min"]))
            await self._forget_consumers(stream, vendor)
            if bound <= (0, 0):
                continue
            # Exact trimming: "~" would keep whole macro nodes, i.e. an unknown amount.
            removed += int(await self._redis.xtrim(stream, minid=f"{bound[0]}-{bound[1]}",
                                                   approximate=False))
        dead_key, time_key = self._k("dead"), self._k("dead", "time")
        old = await self._redis.zrangebyscore(time_key, "-inf", f"({older_than}")
        for start in range(0, len(old), 1000):
            chunk = old[start:start + 1000]
            records = [orjson.loads(r) for r in await self._redis.hmget(dead_key, chunk) if r]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(dead_key, *chunk)
                pipe.zrem(time_key, *chunk)
                for record in records:
                    pipe.hincrby(self._k("counts"), f"{record['vendor']}:dead", -1)
                await pipe.execute()
            removed += len(chunk)
        return removed

    async def _forget_consumers(self, stream: str, vendor: str) -> None:
        """Every process start is a new consumer name; drop the names of processes gone for
        a day that hold nothing (a consumer with pending entries is kept until they are
        claimed)."""
        with contextlib.suppress(ResponseError):
            for consumer in await self._redis.xinfo_consumers(stream, vendor):
                if (consumer["name"] != self.proc_id and int(consumer["pending"]) == 0
                        and int(consumer["idle"]) > 86_400_000):
                    await self._redis.xgroup_delconsumer(stream, vendor, consumer["name"])

    async def delete_all(self) -> int:
        """Remove every key under this spool's prefix (tests and tools; never the relay)."""
        removed = 0
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=1000):
            removed += int(await self._redis.delete(key))
        return removed
