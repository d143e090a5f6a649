"""Looking after the Redis spool: statistics, retention, old consumer names, wiping a prefix.

- **Retention.** `prune` trims each stream by MINID (never past an unacknowledged or unread
  entry) and drops old dead letters; events, dedup keys and work hashes carry TTLs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from shoprelay.spool.base import FINISHED, PENDING, STATE_NAMES, PruneCut, SpoolStats
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.keys import id_key, id_time, site_of, vendor_of


class Maintenance:
    """`stats`, `prune` and `delete_all`."""

    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def _streams(self) -> list[str]:
        # decode_responses=True: the members are str (redis-py types them bytes | str).
        return sorted(cast(set[str], await self._ctx.redis.smembers(self._ctx.k("queues"))))

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
        """(site, vendor, queued, oldest queued time) per partition stream."""
        redis = self._ctx.redis
        out: list[tuple[str, str, int, float | None]] = []
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
        async for key in redis.scan_iter(match=self._ctx.keys.prefix + "*", count=1000):
            removed += int(await redis.delete(key))
        return removed
