"""Client-side rate limiting that never exceeds a vendor's documented limit.

A token bucket can burst to twice its rate across a window boundary, and vendors count requests
in windows, so the relay keeps one slot per request of the last window instead (a sliding log):
at most N requests may "occupy" a window of W seconds.

The vendor counts a request when it *arrives*, which is somewhere between the moment we started
sending it and the moment its answer came back. Counting from the start time alone is exact only
if every request takes the same time on the wire; a slow request followed by a fast one can land
closer together than they were sent. So a slot is held from the start of a request until W
seconds after its answer arrived (or it failed). Then any N+1 requests are at least W apart at the
vendor whatever the latencies were: request N+1 starts no earlier than W after request 1
finished, and request 1 arrived before it finished. The price is one latency per window (a few
milliseconds against a 1-second window on a nearby vendor).

Left alone, a sliding log drains a backlog in bursts: N requests at once, then a whole window of
nothing while their slots age. A vendor that counts in windows of its own sees some windows
full and the ones straddling a pause half empty (measured: 87-95 % of the limit used over a
backlog). So starts are also paced, GCRA-style: one every W/N, with a burst of `burst` (a
quarter of the limit) allowed after a quiet spell so single events are never delayed. The log
still decides what is allowed; pacing only spreads the starts it allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from typing import Protocol


class Limiter(Protocol):
    """What the forwarder needs of a rate limiter (in-process here, Redis-side when shared)."""

    async def acquire(self) -> None: ...

    def release(self) -> None: ...

    def block_for(self, seconds: float) -> None: ...

    @property
    def blocked_for(self) -> float: ...


class SlidingWindowLimiter:
    """At most `requests` requests in any `per_seconds` window, as the vendor sees them."""

    def __init__(self, requests: int, per_seconds: float, *, burst: float = 0.1) -> None:
        self.requests = max(1, requests)
        self.window = per_seconds
        #: Pacing: starts one `interval` apart, `tolerance` ahead of schedule at most (a burst
        #: of about `burst` × requests after a quiet spell).
        self.interval = per_seconds / self.requests
        self.tolerance = max(0.0, burst * per_seconds - self.interval)
        self._schedule = 0.0  # the theoretical start time of the next request (monotonic)
        #: Times (monotonic) at which held slots free up; a request in flight is +inf.
        self._frees: list[float] = []
        self._in_flight = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._blocked_until = 0.0

    def block_for(self, seconds: float) -> None:
        """The vendor said to wait (Retry-After, X-RateLimit-Reset): nothing starts before."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - time.monotonic())

    async def acquire(self) -> None:
        """Wait for a free slot and take it; call `release()` when the request is over."""
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                if now < self._blocked_until:
                    await asyncio.sleep(self._blocked_until - now)
                    continue
                early = self._schedule - self.tolerance - now
                if early > 0:
                    await asyncio.sleep(early)
                    continue
                while self._frees and self._frees[0] <= now:
                    heapq.heappop(self._frees)
                if len(self._frees) + self._in_flight < self.requests:
                    self._in_flight += 1
                    self._schedule = max(self._schedule, now) + self.interval
                    return
                # Full: wait for the earliest slot to free, or for a request in flight to end
                # (its slot then gets a finite free time we can sleep until).
                wait = self._frees[0] - now if self._frees else math.inf
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(),
                                           None if math.isinf(wait) else wait)

    def release(self) -> None:
        """The request taken by `acquire()` is over: its slot frees one window from now."""
        self._in_flight -= 1
        heapq.heappush(self._frees, time.monotonic() + self.window)
        self._changed.set()
