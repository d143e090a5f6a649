"""A vendor rate limit kept in Redis, so it holds for every relay process together.

Same rule and interface as `limits.SlidingWindowLimiter` (`acquire()`, `release()`,
`block_for()`, `blocked_for`): a request holds a slot from its start until one window after its
answer, and at most N slots may be held, so any N+1 requests are at least a window apart as the
vendor sees them — now counted across all processes. The log is a sorted set per credential:
one member per request, scored with the time its slot frees (a request in flight is scored
start + `in_flight_ttl`, so a process that dies mid-request frees its slot after that). One Lua
script decides atomically (ZREMRANGEBYSCORE + ZCARD + ZADD) and answers 0 or how long to wait.
Time is Redis's clock (TIME), so hosts with skewed clocks still agree on the window.

A vendor's Retry-After blocks the credential for everyone: the block is a key with a TTL.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
import uuid
from typing import Any

from shoprelay.delivery.limits import SharedLimiterBase

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then
  return tostring(blocked / 1000)
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + window + tonumber(ARGV[4]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil((window * 2 + tonumber(ARGV[4])) * 1000))
  return '0'
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(first[2]) + window - now
if wait < 0.001 then wait = 0.001 end
return tostring(wait)
"""

#: The request is over: its slot frees one window from now (Redis time).
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
return 1
"""

_BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
"""

#: Longest single sleep while waiting for a slot: slots are freed by other processes too,
#: which this one cannot be told about, so it looks again at least this often.
_MAX_SLEEP = 0.05


log = logging.getLogger("shoprelay.delivery")

class RedisWindowLimiter(SharedLimiterBase):
    """At most `requests` requests in any `per_seconds` window across every process."""

    def __init__(self, redis: Any, key: str, requests: int, per_seconds: float, *,
                 in_flight_ttl: float = 60.0) -> None:
        self.redis = redis
        self.key = key
        self.block_key = key + ":block"
        self.requests = max(1, requests)
        self.window = per_seconds
        self.in_flight_ttl = in_flight_ttl
        self._lock = asyncio.Lock()
        self._names = (f"{uuid.uuid4().hex[:12]}:{n}" for n in itertools.count())
        #: Members of our requests in flight, oldest first (see `release`).
        self._held: collections.deque[str] = collections.deque()
        super().__init__()

    async def acquire(self) -> None:
        async with self._lock:  # this process's requests queue in order, one asks at a time
            member = next(self._names)
            while True:
                wait = float(await self.redis.eval(
                    _ACQUIRE, 2, self.key, self.block_key, self.requests, self.window, member,
                    self.in_flight_ttl))
                if wait <= 0:
                    self._held.append(member)
                    return
                await asyncio.sleep(min(wait, _MAX_SLEEP))

    def release(self) -> None:
        """The request is over. Members are freed oldest first: whichever request ended, the
        ones still in flight keep members started no earlier than themselves, so no slot is
        ever freed before its request's answer (`limits.py` explains why that makes it exact).
        """
        if not self._held:
            return
        member = self._held.popleft()
        self._spawn(self.redis.eval(_RELEASE, 1, self.key, member))

    def block_for(self, seconds: float) -> None:
        """The vendor said to wait: no process starts a request with this credential before."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
        self._spawn(self.redis.eval(_BLOCK, 1, self.block_key, max(1, int(seconds * 1000))))

