"""Per-address ingest limits: a client that floods the relay gets 429 with Retry-After.

A fixed one-minute window per address is enough here (the point is to stop a runaway script,
not to meter fairly) and costs one dict lookup per request; stale windows are swept as they
age out so memory stays bounded by the addresses seen in the last minute.
"""

from __future__ import annotations

import time


class PerAddressLimit:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[int, int]] = {}
        self._swept = 0

    def hit(self, address: str | None, now: float | None = None) -> float | None:
        """Count a request; None if allowed, else the seconds until the window resets."""
        if self.per_minute <= 0 or not address:
            return None
        now = time.time() if now is None else now
        window = int(now // 60)
        if window != self._swept:
            self._windows = {a: w for a, w in self._windows.items() if w[0] == window}
            self._swept = window
        start, count = self._windows.get(address, (window, 0))
        if start != window:
            count = 0
        if count >= self.per_minute:
            return max(1.0, (window + 1) * 60 - now)
        self._windows[address] = (window, count + 1)
        return None
