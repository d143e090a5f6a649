"""Client-side rate limiting that never exceeds a vendor's documented limit.

A token bucket can burst to twice its rate across a window boundary; vendors count requests in
windows, so the relay keeps the send times of the last N requests and waits until the oldest
leaves the window. That is exact for any window position and still lets the relay use the whole
limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class SlidingWindowLimiter:
    def __init__(self, requests: int, per_seconds: float, margin: float = 0.02) -> None:
        self.requests = max(1, requests)
        # A small margin absorbs the clock difference between our send and their receive.
        self.window = per_seconds * (1 + margin)
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._blocked_until = 0.0

    def block_for(self, seconds: float) -> None:
        """The vendor said to wait (Retry-After): nothing is sent before then."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._blocked_until:
                    await asyncio.sleep(self._blocked_until - now)
                    continue
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self._sent[0] + self.window - now)
