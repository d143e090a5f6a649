"""What every part of the Redis spool shares: the connection, the key names, this process's
identity, the lease time and the TTLs, and the new-work callback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from shoprelay.spool.base import Retention
from shoprelay.spool.redis.keys import KeySpace


@dataclass(slots=True)
class RedisContext:
    redis: aioredis.Redis
    keys: KeySpace
    #: This process's consumer name and lease value; new every start (a restarted process
    #: is a new consumer, and its predecessor's entries are claimed like anyone's).
    proc_id: str
    lease_ms: int
    #: Dedup keys live as long as SQLite keeps a message; events as long as their work may.
    dedup_ttl: int | None
    event_ttl: int | None
    state_ttl: int
    #: The policy the TTLs above come from (`Retention.dedup_ttl` etc.).
    retention: Retention = field(default_factory=Retention)
    #: Called after new work was committed (here or, via pub/sub, in another process).
    #: Looked up at each call: the forwarder sets it on the spool after the parts exist.
    on_new_work: Callable[[], None] = field(default=lambda: None)
    #: (stream, vendor) pairs whose consumer group this process made sure of.
    grouped: set[tuple[str, str]] = field(default_factory=set)

    def k(self, *parts: str) -> str:
        return self.keys.k(*parts)

    async def ensure_groups(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Create the vendors' consumer groups on these streams unless they exist, before an
        entry naming the vendor is written there: `prune` trims an entry only once every
        group is past it, so a group made later would find entries meant for it already gone.
        A new group starts at the stream's end ("$"): nothing before it names its vendor, so
        a vendor added to a running relay does not read the stream's history. Known pairs
        cost nothing (the streams are never deleted while the relay runs; `delete_all`
        forgets them)."""
        new = [pair for pair in dict.fromkeys(pairs) if pair not in self.grouped]
        if not new:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, vendor in new:
                pipe.xgroup_create(stream, vendor, id="$", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for outcome in results:
            if isinstance(outcome, Exception) and "BUSYGROUP" not in str(outcome):
                raise outcome
        self.grouped.update(new)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the spool's background tasks and wait until each has ended, cancelling again
    any still running a second later: a cancel can be swallowed under us (seen with a busy
    event loop: the rules stage went on to its next round), and a single cancel then left
    `aclose` waiting for ever."""
    pending = [task for task in tasks if not task.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)
        pending = [task for task in pending if not task.done()]
    for task in tasks:  # retrieve each outcome, so none is reported as never retrieved
        if not task.cancelled():
            task.exception()
