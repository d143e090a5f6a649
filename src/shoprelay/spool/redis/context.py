"""What every part of the Redis spool shares: the connection, the key names, this process's
identity, the lease time and the TTLs, and the new-work callback."""

from __future__ import annotations

from collections.abc import Callable
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

    def k(self, *parts: str) -> str:
        return self.keys.k(*parts)
