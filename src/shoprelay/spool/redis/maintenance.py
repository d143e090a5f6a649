"""Looking after the Redis spool: statistics, retention, old consumer names, wiping a prefix.

- **Retention.** `prune` trims each stream by MINID (never past an entry some vendor's group
  has not acknowledged or not read) and drops old dead letters; events, dedup keys and work
  hashes carry TTLs.
- **Queue figures.** Per (site, vendor) the `queued` counter (see `keys`), and the oldest
  queued entry from the vendor's group on each partition stream: its first pending entry, or
  the first unread one naming the vendor among the next `_LOOK_AHEAD` (past them, the first
  unread entry's time: an upper bound on the age).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from shoprelay.spool.base import FINISHED, PENDING, STATE_NAMES, PruneCut, SpoolStats
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.keys import PRUNED, id_key, id_time, names, site_of, vendor_of

#: Unread entries looked at for a vendor's oldest queued one (most entries name most vendors).
_LOOK_AHEAD = 200


class Maintenance:
    """`stats`, `prune` and `delete_all`."""

    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def _streams(self, key: str = "queues") -> list[str]:
        """The streams of the layout before (`queues`) or the partition streams (`streams`)."""
        # decode_responses=True: the members are str (redis-py types them bytes | str).
        return sorted(cast(set[str], await self._ctx.redis.smembers(self._ctx.k(key))))

    async def _groups(self, stream: str) -> list[dict[str, Any]]:
        try:
            return await self._ctx.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return []

    async def _queued(self) -> dict[tuple[str, str], int]:
        """The `queued` counter per (site, vendor)."""
        raw = cast(dict[str, str], await self._ctx.redis.hgetall(self._ctx.k("queued")))
        out: dict[tuple[str, str], int] = {}
        for name, value in raw.items():
            site, _, vendor = name.rpartition("|")
            out[(site, vendor)] = max(0, int(value))
        return out

    async def _group(self, stream: str) -> dict[str, Any] | None:
        try:
            groups = await self._ctx.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return None
        vendor = vendor_of(stream)
        for group in groups:
            if group["name"] == vendor:
                return group
        return None

    async def queues(self) -> list[tuple[str, str, int, float | None]]:
        """(site, vendor, queued, oldest queued time): per (site, vendor) on the partition
        streams, and per stream of the layout before still there."""
        out = await self._shared_queues()
        redis = self._ctx.redis
        for stream in await self._streams():
            vendor = vendor_of(stream)
            group = await self._group(stream)
            first: str | None = None
            if group is None:
                waiting = int(await redis.xlen(stream))
                head = cast(list[tuple[str, Any]], await redis.xrange(stream, count=1))
                first = head[0][0] if head else None
            else:
                lag = group.get("lag")
                last = group["last-delivered-id"]
                if lag is None:  # Redis cannot tell (after deletions): count what is unread
                    lag = len(cast(list[Any], await redis.xrange(stream, f"({last}", "+")))
                waiting = int(lag) + int(group["pending"])
                if int(group["pending"]):
                    summary = await redis.xpending(stream, vendor)
                    first = cast(str | None, summary.get("min"))
                elif lag:
                    after = cast(list[tuple[str, Any]],
                                 await redis.xrange(stream, f"({last}", "+", count=1))
                    first = after[0][0] if after else None
            out.append((site_of(stream), vendor, waiting,
                        id_time(first) if waiting and first else None))
        return out

    async def _shared_queues(self) -> list[tuple[str, str, int, float | None]]:
        redis = self._ctx.redis
        queued = await self._queued()
        oldest: dict[tuple[str, str], float] = {}
        for stream in await self._streams("streams"):
            site = stream.split(":")[-2]
            for group in await self._groups(stream):
                vendor = str(group["name"])
                if not queued.get((site, vendor)):
                    continue
                first: str | None = None
                if int(group["pending"]):
                    summary = await redis.xpending(stream, vendor)
                    first = cast(str | None, summary.get("min"))
                after = cast(list[tuple[str, dict[str, str]]],
                             await redis.xrange(stream, f"({group['last-delivered-id']}", "+",
                                                count=_LOOK_AHEAD))
                unread = next((entry_id for entry_id, fields in after
                               if names(fields.get("d", ""), vendor) is not None),
                              after[-1][0] if len(after) == _LOOK_AHEAD else None)
                for entry_id in (first, unread):
                    if entry_id is not None:
                        at = id_time(entry_id)
                        oldest[(site, vendor)] = min(oldest.get((site, vendor), at), at)
        return [(site, vendor, count, oldest.get((site, vendor)) if count else None)
                for (site, vendor), count in sorted(queued.items())]

    async def stats(self) -> SpoolStats:
        redis = self._ctx.redis
        stats = SpoolStats()
        queued: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for _, vendor, waiting, first_at in await self.queues():
            queued[vendor] = queued.get(vendor, 0) + waiting
            if first_at is not None:
                oldest[vendor] = min(oldest.get(vendor, math.inf), first_at)
        counts = cast(dict[str, str], await redis.hgetall(self._ctx.k("counts")))
        vendors = set(queued) | {k.split(":")[0] for k in counts if ":" in k}
        for vendor in vendors:
            stats.add(vendor, PENDING, queued.get(vendor, 0), oldest.get(vendor))
            for state in FINISHED:
                value = int(counts.get(f"{vendor}:{STATE_NAMES[state]}", 0))
                if value:
                    stats.add(vendor, state, value, None)
        stats.messages = int(counts.get("messages", 0))
        memory = await redis.info("memory")
        stats.file_bytes = int(memory.get("used_memory", 0))
        return stats

    async def prune(self, cut: PruneCut) -> int:
        """Trim every stream to what is newer than `cut.finished`, never past an entry that is
        unacknowledged or not yet read; forget dead letters that failed before it. Returns the
        finished stream entries and dead letters removed."""
        redis, k = self._ctx.redis, self._ctx.k
        older_than = cut.finished
        cutoff = (int(older_than * 1000), 0)
        removed = 0
        for stream in await self._streams("streams"):
            removed += await self._trim_shared(stream, cutoff)
        for stream in await self._streams():
            vendor = vendor_of(stream)
            group = await self._group(stream)
            if group is None:
                continue  # never read: everything in it is still to deliver
            bound = cutoff
            last = id_key(group["last-delivered-id"])
            bound = min(bound, (last[0], last[1] + 1))
            if int(group["pending"]):
                summary = await redis.xpending(stream, vendor)
                if summary.get("min"):
                    bound = min(bound, id_key(summary["min"]))
            await self._forget_consumers(stream, vendor)
            if bound <= (0, 0):
                continue
            # Exact trimming: "~" would keep whole macro nodes, i.e. an unknown amount.
            removed += int(await redis.xtrim(stream, minid=f"{bound[0]}-{bound[1]}",
                                             approximate=False))
        dead_key, time_key = k("dead"), k("dead", "time")
        # decode_responses=True: the members are str (redis-py types them more loosely).
        old = cast(list[str], await redis.zrangebyscore(time_key, "-inf", f"({older_than}"))
        for start in range(0, len(old), 1000):
            chunk = old[start:start + 1000]
            records = [orjson.loads(r) for r in await redis.hmget(dead_key, chunk) if r]
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hdel(dead_key, *chunk)
                pipe.zrem(time_key, *chunk)
                for record in records:
                    pipe.hincrby(k("counts"), f"{record['vendor']}:dead", -1)
                await pipe.execute()
            removed += len(chunk)
        return removed

    async def _trim_shared(self, stream: str, cutoff: tuple[int, int]) -> int:
        """Forget each vendor's finished deliveries on a partition stream, then trim it up to
        the first entry some vendor's group still needs; returns the deliveries forgotten.

        A vendor's delivery of an entry is finished and forgotten once the entry is older
        than the cutoff and below everything that vendor's group has pending or not read (as
        a (site, vendor) stream was trimmed before); `PRUNED` counts them, once each, from the
        vendor's mark in `pruned`. The entry itself goes with the last of its vendors. A
        group with nothing pending whose vendor has nothing queued on the site (a vendor taken
        out of the configuration, say) holds nothing back: every entry naming it was
        acknowledged. The stream's last id is read before the counters, so an entry added
        meanwhile is above every bound."""
        redis = self._ctx.redis
        try:
            info = await redis.xinfo_stream(stream)
        except ResponseError:  # no such stream
            return 0
        last = id_key(str(info["last-generated-id"]))
        groups = await self._groups(stream)
        if not groups:
            return 0
        queued = await self._queued()
        site = stream.split(":")[-2]
        top = min(cutoff, (last[0], last[1] + 1))
        bound = top
        forgotten = 0
        for group in groups:
            vendor = str(group["name"])
            pending = int(group["pending"])
            await self._forget_consumers(stream, vendor)
            own = top
            delivered = id_key(str(group["last-delivered-id"]))
            own = min(own, (delivered[0], delivered[1] + 1))
            if pending:
                summary = await redis.xpending(stream, vendor)
                if summary.get("min"):
                    own = min(own, id_key(summary["min"]))
            if own > (0, 0):
                forgotten += await self._count_pruned(stream, vendor, own)
            if pending or queued.get((site, vendor)):
                bound = min(bound, own)
        if bound > (0, 0):
            # Exact trimming: "~" would keep whole macro nodes, i.e. an unknown amount.
            await redis.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False)
        return forgotten

    async def _count_pruned(self, stream: str, vendor: str, below: tuple[int, int]) -> int:
        """The vendor's entries on the stream from its mark up to `below`, in chunks (each
        moves the mark on, so no entry is counted twice)."""
        count = 0
        while True:
            found, seen = await self._ctx.redis.eval(
                PRUNED, 2, stream, self._ctx.k("pruned"), vendor, f"{below[0]}-{below[1]}",
                f"{stream}|{vendor}", 2000)
            count += int(found)
            if int(seen) < 2000:
                return count

    async def _forget_consumers(self, stream: str, vendor: str) -> None:
        """Every process start is a new consumer name; drop the names of processes gone for
        a day that hold nothing (a consumer with pending entries is kept until they are
        claimed)."""
        redis = self._ctx.redis
        with contextlib.suppress(ResponseError):
            for consumer in await redis.xinfo_consumers(stream, vendor):
                if (consumer["name"] != self._ctx.proc_id and int(consumer["pending"]) == 0
                        and int(consumer["idle"]) > 86_400_000):
                    await redis.xgroup_delconsumer(stream, vendor, consumer["name"])

    async def delete_all(self) -> int:
        """Remove every key under this spool's prefix (tests and tools; never the relay)."""
        removed = 0
        redis = self._ctx.redis
        self._ctx.grouped.clear()
        async for key in redis.scan_iter(match=self._ctx.keys.prefix + "*", count=1000):
            removed += int(await redis.delete(key))
        return removed
