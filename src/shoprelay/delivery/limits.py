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
import collections
import contextlib
import hashlib
import heapq
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("shoprelay.delivery")

#: Longest single sleep while waiting for a shared slot (other processes free them unseen).
_SHARED_MAX_SLEEP = 0.05


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


class SharedLimiterBase:
    """What the limiters shared between processes (the file's and Redis') have alike: the
    vendor's wait kept locally too, and their shared-store writes run as background tasks,
    since `release()` and `block_for()` are synchronous in the limiter interface."""

    def __init__(self) -> None:
        self._blocked_until = 0.0
        #: Kept referenced until done, so a write is not collected mid-way.
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - time.monotonic())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A lost release keeps its slot only until the in-flight TTL runs out: the limit
            # still holds. Said once here instead of "exception never retrieved" noise.
            log.warning("shared limiter update failed: %s", task.exception())


class FileWindowLimiter(SharedLimiterBase):
    """The same sliding log, kept in a small SQLite file beside a SQLite spool, so a limit
    holds for every process on that spool together: the relay and a `shoprelay backfill`
    beside it (with the Redis spool, `shared_limits.RedisWindowLimiter` does this).

    One row per request: the moment its slot frees. A request in flight frees at its start +
    `in_flight_ttl` + the window (a process that died mid-request gives its slot back then),
    and at its end + the window once answered; at most N rows may be unfreed. Each decision
    is one `BEGIN IMMEDIATE` transaction, so two processes never both take the last slot. Time
    is the wall clock every process on the host shares. The file holds only a hash of the
    limit's key (which may name a credential), no secret. Calls run in a thread: the file
    lock of another process must not stall the event loop.
    """

    def __init__(self, path: str, key: str, requests: int, per_seconds: float, *,
                 in_flight_ttl: float = 60.0) -> None:
        self.path = path
        self.key = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.requests = max(1, requests)
        self.window = per_seconds
        self.in_flight_ttl = in_flight_ttl
        self._lock = asyncio.Lock()
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        #: Rows of our requests in flight, oldest first (freed in that order, as in Redis).
        self._held: collections.deque[int] = collections.deque()
        super().__init__()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # slots are worthless after a crash
            db.execute("CREATE TABLE IF NOT EXISTS slots (key TEXT NOT NULL, frees REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS slots_key ON slots (key, frees)")
            db.execute("CREATE TABLE IF NOT EXISTS blocks (key TEXT PRIMARY KEY, until REAL)")
            self._db = db
        return self._db

    def _take(self) -> tuple[int | None, float]:
        """(row of the slot taken, 0) or (None, seconds to wait)."""
        with self._db_lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                row = db.execute("SELECT until FROM blocks WHERE key = ?", (self.key,)).fetchone()
                if row is not None and row[0] > now:
                    return None, row[0] - now
                db.execute("DELETE FROM slots WHERE key = ? AND frees <= ?", (self.key, now))
                (held,) = db.execute("SELECT COUNT(*) FROM slots WHERE key = ?",
                                     (self.key,)).fetchone()
                if held < self.requests:
                    cursor = db.execute("INSERT INTO slots (key, frees) VALUES (?, ?)",
                                        (self.key, now + self.in_flight_ttl + self.window))
                    return int(cursor.lastrowid or 0), 0.0
                (first,) = db.execute("SELECT MIN(frees) FROM slots WHERE key = ?",
                                      (self.key,)).fetchone()
                return None, max(0.001, float(first) - now)
            finally:
                db.execute("COMMIT")

    def _free(self, row: int) -> None:
        with self._db_lock:
            self._connection().execute("UPDATE slots SET frees = ? WHERE rowid = ?",
                                       (time.time() + self.window, row))

    def _block(self, until: float) -> None:
        with self._db_lock:
            self._connection().execute(
                "INSERT INTO blocks (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET until = max(until, excluded.until)", (self.key, until))

    async def acquire(self) -> None:
        async with self._lock:  # this process's requests queue in order
            while True:
                row, wait = await asyncio.to_thread(self._take)
                if row is not None:
                    self._held.append(row)
                    return
                # Slots are freed by other processes too, which cannot tell this one.
                await asyncio.sleep(min(wait, _SHARED_MAX_SLEEP))

    def release(self) -> None:
        """The request is over: the oldest of ours in flight frees one window from now (no
        slot is ever freed before its own request's answer; see `limits.py`)."""
        if self._held:
            self._spawn(asyncio.to_thread(self._free, self._held.popleft()))

    def block_for(self, seconds: float) -> None:
        """The vendor said to wait: no process on this spool starts a request before."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
        self._spawn(asyncio.to_thread(self._block, time.time() + seconds))



def file_limiter_factory(spool: Any, in_flight_ttl: float) -> Callable[[int, float, str],
                                                                          Limiter] | None:
    """For a SQLite spool file: limiters kept in `<spool>.limits` beside it, shared by every
    process on the spool; None for any other spool (in memory, or Redis with its own)."""
    path = getattr(spool, "path", None)
    if not isinstance(path, str | os.PathLike) or str(path) in ("", ":memory:"):
        return None
    where = os.fspath(path) + ".limits"

    def make(requests: int, per_seconds: float, key: str) -> Limiter:
        return FileWindowLimiter(where, key, requests, per_seconds,
                                 in_flight_ttl=in_flight_ttl)

    return make
