"""Dead letters in Redis: listing them and queueing them again.

A dead letter is a JSON record in the `dead` hash (by work id, written by `Outbox.mark_dead`
with the whole event in it) and its failure time in the `dead:time` sorted set. Replay XADDs
the event to its visitor's partition again as new work (an entry naming the letter's vendor
alone) and removes the record.
"""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from shoprelay.events import StoredEvent
from shoprelay.spool.base import (
    PENDING,
    STATE_NAMES,
    DeadLetter,
    LetterFilter,
    letter_exchange,
)
from shoprelay.spool.redis.context import RedisContext
from shoprelay.spool.redis.keys import queued_field


def keep_letter(pipe: Any, ctx: RedisContext, *, dead_id: int, site: str, vendor: str,
                visitor: str, attempts: int, status: int | None, error: str, response: str,
                request: str, failed_at: float, event_key: str, event: StoredEvent | None,
                part: int | None) -> None:
    """Queue on `pipe` a dead-letter record in the format `DeadLetters` reads (the whole
    event in it, so a replay needs nothing else), its failure time and its count."""
    request, response = letter_exchange(request, response)
    record = {
        "id": dead_id, "site": site, "vendor": vendor, "visitor_id": visitor,
        "attempts": attempts, "status": status, "error": error, "response": response,
        "request": request, "failed_at": failed_at, "event_key": event_key,
        "event": event.to_dict() if event else None, "part": part,
    }
    pipe.hset(ctx.k("dead"), str(dead_id), orjson.dumps(record))
    pipe.zadd(ctx.k("dead", "time"), {str(dead_id): failed_at})
    pipe.hincrby(ctx.k("counts"), f"{vendor}:dead", 1)


def _matches(where: LetterFilter, record: dict[str, Any]) -> bool:
    return record.get("event") is not None and where.matches(
        site=record["site"], vendor=record["vendor"], dead_id=record["id"],
        failed_at=record["failed_at"], status=record["status"])


class DeadLetters:
    """`dead_letters` and `replay`."""

    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def _records(self, since: float | None) -> list[dict[str, Any]]:
        redis, k = self._ctx.redis, self._ctx.k
        ids = await redis.zrangebyscore(k("dead", "time"), "-inf" if since is None else since,
                                        "+inf")
        if not ids:
            return []
        # decode_responses=True: the members are str (redis-py types them more loosely).
        raw = await redis.hmget(k("dead"), cast(list[str], ids))
        return [orjson.loads(r) for r in raw if r]

    async def dead_letters(self, where: LetterFilter) -> list[DeadLetter]:
        letters = []
        for r in await self._records(where.since):
            if not _matches(where, r):
                continue
            letters.append(DeadLetter(
                id=r["id"], site=r["site"], vendor=r["vendor"], visitor_id=r["visitor_id"],
                attempts=r["attempts"], status=r["status"], error=r["error"] or "",
                response=r["response"] or "", failed_at=r["failed_at"],
                event=StoredEvent.from_dict(r["event"]), request=r["request"] or "",
                part=r.get("part")))
        return sorted(letters, key=lambda d: d.id)

    async def replay(self, where: LetterFilter) -> int:
        """Queue dead letters again: a new stream entry each (fresh attempts and max age)."""
        ctx, k = self._ctx, self._ctx.k
        count = 0
        dead_key, time_key = k("dead"), k("dead", "time")
        for record in await self._records(where.since):
            if not _matches(where, record):
                continue
            member = str(record["id"])
            async with ctx.redis.pipeline(transaction=True) as pipe:
                try:
                    # Two replays at once must not queue one letter twice.
                    await pipe.watch(dead_key)
                    if not await pipe.hexists(dead_key, member):
                        continue
                    work_id = int(await pipe.incr(k("seq")))
                    site, visitor, vendor = (record["site"], record["visitor_id"],
                                             record["vendor"])
                    stream = ctx.keys.stream_key(site, ctx.keys.partition_of(visitor))
                    await ctx.ensure_groups([(stream, vendor)])
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    pipe.set(record["event_key"], orjson.dumps(record["event"]),
                             ex=ctx.event_ttl)
                    # A part letter's entry carries its index: only that request is sent.
                    # An entry for the letter's vendor alone (see `keys`).
                    fields: dict[FieldT, EncodableT] = {
                        "w": work_id, "e": record["event_key"], "v": visitor,
                        "t": repr(time.time()), "d": vendor}
                    if record.get("part") is not None:
                        fields["p"] = int(record["part"])
                    pipe.xadd(stream, fields)
                    # The trace says queued again (as SQLite's row does), and the message is
                    # named by waiting work: retention keeps it until that work is done.
                    event = StoredEvent.from_dict(record["event"])
                    part = record.get("part")
                    trace = k("tr", site, event.message_id)
                    pipe.hset(trace, vendor if part is None else f"{vendor}#{part}",
                              orjson.dumps({"s": STATE_NAMES[PENDING], "a": 0,
                                            "t": time.time()}))
                    pipe.expire(trace, ctx.event_ttl or 86400 * 30)
                    pipe.hincrby(k("queued"), queued_field(site, vendor), 1)
                    pipe.hdel(dead_key, member)
                    pipe.zrem(time_key, member)
                    pipe.hincrby(k("counts"), f"{vendor}:dead", -1)
                    pipe.sadd(k("streams"), stream)
                    pipe.publish(k("wake"), site)
                    await pipe.execute()
                except WatchError:
                    continue
            count += 1
        if count:
            ctx.on_new_work()
        return count
