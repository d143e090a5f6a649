"""When to try again: exponential backoff with full jitter, capped, honouring the vendor."""

from __future__ import annotations

import random

FIRST_DELAY = 1.0
MAX_DELAY = 300.0


def backoff(attempts: int, retry_after: float | None = None,
            rng: random.Random | None = None, *, first: float = FIRST_DELAY,
            cap: float = MAX_DELAY) -> float:
    """Seconds to wait after the `attempts`-th failure (1-based).

    The ceiling doubles from `first` up to `cap`; the delay is drawn uniformly below it (full
    jitter), which spreads the retries of many events over the whole interval, so a vendor
    coming back from an outage is not hit by a synchronised wave. The first retry is kept at
    half its ceiling or more so a blip does not cause an immediate second hit. A vendor's own
    Retry-After wins when it asks for longer (even beyond the cap: it is the vendor's call).
    """
    ceiling = min(cap, first * 2 ** max(0, attempts - 1))
    delay = (rng or random).uniform(0, ceiling)
    if attempts <= 1:
        delay = max(delay, first * 0.5)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
