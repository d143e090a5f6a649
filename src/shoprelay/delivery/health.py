"""Whether a vendor takes our requests at all: paused on credential and address failures.

A 401 or 403, or a 404 on the vendor's own endpoint, says nothing about the event and
everything about the settings (a rotated key, a wrong partner id, a base URL with a typo).
Dead-lettering the traffic would fill the dead letter with good events and leave the operator
to replay them; sending on would hammer the vendor with requests that cannot succeed. So the
worker *pauses*: its work stays queued, one probe (the oldest queued request, for real) goes
out with backoff, at most `probe_max` seconds apart, and the first accepted probe resumes
delivery. Each change of state is one log line, and the state is shown in /readyz, /metrics
and `shoprelay vendors status`, which reads it from a small store beside the spool (a JSON
file next to a SQLite spool, a Redis hash beside a Redis spool): the CLI runs in another
process than the relay.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("shoprelay.delivery")

ACTIVE = "active"
PAUSED = "paused"
#: Past pauses remembered (older ones no queued work can still be inside of, in practice).
_HELD_KEPT = 100


@dataclass(slots=True)
class VendorHealth:
    """The pause state of one (site, vendor) worker, in the relay's memory."""

    site: str
    vendor: str
    #: First probe delay after a pause, doubling up to `probe_max` (seconds).
    probe_first: float = 2.0
    probe_max: float = 30.0
    state: str = ACTIVE
    reason: str = ""
    status: int | None = None
    since: float = field(default_factory=time.time)
    next_probe: float = 0.0
    probes: int = 0
    #: Times this worker paused since start (a metric).
    pauses: int = 0
    #: Set by the store so every change of state is written where the CLI reads it.
    store: Any = None
    #: Past pauses as (start, end): work held by a pause does not age meanwhile (the max age
    #: counts time the vendor could be tried), so a key fixed after a day loses nothing.
    held: list[tuple[float, float]] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return self.state == PAUSED

    def pause(self, status: int | None, reason: str, now: float | None = None) -> None:
        """Record a settings failure: pause (logged once) or push the next probe back."""
        now = time.time() if now is None else now
        if not self.paused:
            self.state, self.since, self.probes = PAUSED, now, 0
            self.pauses += 1
            self.status, self.reason = status, reason
            self.next_probe = now + self.probe_first
            log.warning("vendor %s/%s paused: %s; its work stays queued, probing every "
                        "%g s at most", self.site, self.vendor, reason, self.probe_max)
            self.save()
            return
        self.probes += 1
        self.status, self.reason = status, reason
        delay = min(self.probe_max, self.probe_first * 2 ** self.probes)
        self.next_probe = now + delay
        self.save()

    def resume(self, now: float | None = None) -> None:
        if not self.paused:
            return
        now = time.time() if now is None else now
        log.warning("vendor %s/%s resumed after %.0f s paused (%s)", self.site, self.vendor,
                    now - self.since, self.reason)
        self.held = [*self.held, (self.since, now)][-_HELD_KEPT:]
        self.state, self.since, self.reason, self.status = ACTIVE, now, "", None
        self.next_probe = 0.0
        self.save()

    def probe_due(self, now: float | None = None) -> bool:
        return self.paused and (time.time() if now is None else now) >= self.next_probe

    def take_probe(self, now: float | None = None) -> bool:
        """Claim the one request a paused worker may send now (False: wait)."""
        now = time.time() if now is None else now
        if not self.probe_due(now):
            return False
        # Until the probe's answer comes, nobody else probes.
        self.next_probe = now + self.probe_max
        return True

    def paused_between(self, start: float, now: float) -> float:
        """Seconds of [start, now] this vendor was paused (its work held, not tried)."""
        spans = [*self.held, (self.since, now)] if self.paused else self.held
        return sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in spans)

    def restore(self, entry: dict[str, Any] | None) -> None:
        """Take the past pauses from the state a previous run left in the store (a pause
        still on when it stopped counts until its last write), so a restart does not age
        the work they held."""
        if not isinstance(entry, dict):
            return
        spans = []
        for span in entry.get("held") or []:
            if isinstance(span, list | tuple) and len(span) == 2:
                spans.append((float(span[0]), float(span[1])))
        if entry.get("state") == PAUSED and entry.get("since") and entry.get("updated_at"):
            spans.append((float(entry["since"]), float(entry["updated_at"])))
        self.held = spans[-_HELD_KEPT:]

    def wait(self, now: float | None = None) -> float:
        """Seconds until the next probe (0 when not paused)."""
        if not self.paused:
            return 0.0
        return max(0.0, self.next_probe - (time.time() if now is None else now))

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "vendor": self.vendor, "state": self.state,
                "reason": self.reason, "status": self.status, "since": self.since,
                "next_probe": self.next_probe if self.paused else None,
                "probes": self.probes, "pauses": self.pauses, "updated_at": time.time(),
                "pid": os.getpid(), "held": [list(span) for span in self.held]}

    def save(self) -> None:
        if self.store is not None:
            try:
                self.store.save(self)
            except Exception:  # the status display must never stop delivery
                log.exception("could not record the state of %s/%s", self.site, self.vendor)


class FileHealthStore:
    """Vendor states as one JSON file beside a SQLite spool (written atomically)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, health: VendorHealth) -> None:
        data = self._read()
        data[f"{health.site}/{health.vendor}"] = health.to_dict()
        temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, self.path)

    def read_all(self) -> dict[str, dict[str, Any]]:
        return self._read()


class RedisHealthStore:
    """Vendor states as a Redis hash beside a Redis spool (synchronous client: the writes are
    rare, one per change of state)."""

    def __init__(self, url: str, key: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.key = key

    def save(self, health: VendorHealth) -> None:
        self.client.hset(self.key, f"{health.site}/{health.vendor}",
                         json.dumps(health.to_dict()))

    def read_all(self) -> dict[str, dict[str, Any]]:
        stored: dict[str, str] = self.client.hgetall(self.key)  # type: ignore[assignment]
        return {k: json.loads(v) for k, v in stored.items()}


def store_beside(spool: str, redis_prefix: str) -> FileHealthStore | RedisHealthStore | None:
    """Where a relay on this spool keeps its vendor states, worked out here only (the relay
    writes them, `shoprelay vendors status` reads them from another process): `spool` is a
    Redis spool's URL (the hash `{redis_prefix}vendor-health`) or a SQLite spool's file (the
    file `<spool>.vendors.json`; None for an in-memory spool)."""
    if spool.startswith(("redis://", "rediss://")):
        return RedisHealthStore(spool, f"{redis_prefix}vendor-health")
    if spool in ("", ":memory:"):
        return None
    return FileHealthStore(spool + ".vendors.json")


def store_for(spool: Any) -> FileHealthStore | RedisHealthStore | None:
    """Where this spool's relay writes vendor states (None: a spool of unknown kind)."""
    url = getattr(spool, "url", None)
    prefix = getattr(spool, "prefix", None)
    if isinstance(url, str) and url.startswith(("redis://", "rediss://")) and prefix:
        return store_beside(url, prefix)
    path = getattr(spool, "path", None)
    if isinstance(path, str | os.PathLike):
        return store_beside(os.fspath(path), "")
    return None
