"""Whether a vendor takes our requests at all: paused on credential and address failures.

A 401 or 403, or a 404 on the vendor's own endpoint, says nothing about the event and
everything about the settings (a rotated key, a wrong partner id, a base URL with a typo).
Dead-lettering the traffic would fill the dead letter with good events and leave the operator
to replay them; sending on would hammer the vendor with requests that cannot succeed. So the
worker *pauses*: its work stays queued, one probe goes out with backoff, at most `probe_max`
seconds apart, and the first accepted probe resumes delivery.

Usually, not always: a firewall in front of a vendor answers 403 to one event's content (a
product name it takes for an attack), and that 403 looks like a refused key. So a probe is
never an event the vendor already refused alone during the pause: it is another one (the
delivery layer picks it, `forwarder.VendorWorker._probe_job`). When that one passes, the
vendor takes our key, and the events it refused become *suspects*: each is sent once more,
and a suspect refused again the same way while the vendor accepts others is dead-lettered on
its own (a batch holding one is narrowed first). When the other event is refused too, two
different events were refused: the vendor refuses everything, and it stays paused.

Each change of state is one log line, and the state is shown in /readyz, /metrics and
`shoprelay vendors status`, which reads it from a small store beside the spool (a JSON file
next to a SQLite spool, a Redis hash beside a Redis spool): the CLI runs in another process
than the relay.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("shoprelay.delivery")

ACTIVE = "active"
PAUSED = "paused"
#: What a pause is known to be about: not yet told apart (one refusal so far, a probe with
#: another event will tell), or every event (two different events refused).
UNKNOWN, EVERYTHING = "unknown", "everything"
#: Past pauses remembered (older ones no queued work can still be inside of, in practice).
_HELD_KEPT = 100
#: Suspects remembered at most (each is one work row refused during a pause, settled at its
#: next send; more than this many means the vendor refused a great deal, and the oldest
#: suspects are simply paused on again).
_SUSPECTS_KEPT = 10_000
#: How long `vendors status` and /readyz show the last event refused alone (seconds: the
#: hour of the other health figures).
REFUSED_SHOWN = 3600.0


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
    #: UNKNOWN or EVERYTHING while paused (what the pause is about, see the module).
    refuses: str = UNKNOWN
    #: The work rows of each request refused on the settings during this pause (the one
    #: that paused first), and those refused in a request of their own, with the number of
    #: the refusal (a probe again only when every other candidate was refused more lately).
    refusals: list[frozenset[int]] = field(default_factory=list)
    refused_alone: dict[int, int] = field(default_factory=dict)
    #: Rows refused during a past pause while the vendor accepted other events since: each
    #: is sent once more, and dead-lettered alone if refused the same way again.
    suspects: set[int] = field(default_factory=set)
    #: Those of them refused in a request of their own: sent once more alone, not batched
    #: (a batch would only have to be narrowed down to them again).
    lone_suspects: set[int] = field(default_factory=set)
    #: The last event dead-lettered as refused alone ({message_id, status, reason, at}) and
    #: how many since start, for /readyz and `vendors status`.
    refused_event: dict[str, Any] | None = None
    events_refused: int = 0

    @property
    def paused(self) -> bool:
        return self.state == PAUSED

    def pause(self, status: int | None, reason: str, now: float | None = None, *,
              rows: Iterable[int] = (), alone: bool = False) -> None:
        """Record a settings failure: pause (logged once) or push the next probe back.

        `rows`: the work rows of the refused request (none for a failure that refuses
        nothing, a 5xx or a timeout while paused); `alone`: it carried one event only."""
        now = time.time() if now is None else now
        refused = frozenset(rows)
        if not self.paused:
            self.state, self.since, self.probes = PAUSED, now, 0
            self.pauses += 1
            self.status, self.reason = status, reason
            self.refuses, self.refusals, self.refused_alone = UNKNOWN, [], {}
            self._refused(refused, alone)
            self.next_probe = now + self.probe_first
            log.warning("vendor %s/%s paused: %s; its work stays queued, probing with another "
                        "event every %g s at most", self.site, self.vendor, reason,
                        self.probe_max)
            self.save()
            return
        self.probes += 1
        self.status, self.reason = status, reason
        if refused and self._refused(refused, alone):
            # At most one line a pause: what it is about is now known, the state is the same.
            log.warning("%s/%s refuses everything, not one event: %d different events "
                        "refused (%s); it stays paused", self.site, self.vendor,
                        len(self.refusals), reason)
        delay = min(self.probe_max, self.probe_first * 2 ** self.probes)
        self.next_probe = now + delay
        self.save()

    def _refused(self, rows: frozenset[int], alone: bool) -> bool:
        """Count one refused request; True when it is the one that shows the vendor refuses
        everything: a request sharing no event with the ones refused before it."""
        if not rows:
            return False
        if alone:
            self.refused_alone.update(dict.fromkeys(rows, len(self.refusals)))
        first = (self.refuses == UNKNOWN and bool(self.refusals)
                 and all(not (rows & earlier) for earlier in self.refusals))
        self.refusals.append(rows)
        if first:
            self.refuses = EVERYTHING
        return first

    def resume(self, now: float | None = None) -> None:
        """The vendor took a request (or answered about its event, not our settings): the
        events it refused during the pause become suspects, sent once more."""
        if not self.paused:
            return
        now = time.time() if now is None else now
        refused = set().union(*self.refusals) if self.refusals else set()
        log.warning("vendor %s/%s resumed after %.0f s paused (%s)%s", self.site, self.vendor,
                    now - self.since, self.reason,
                    f"; the {len(refused)} event(s) refused meanwhile are sent once more"
                    if refused else "")
        self.held = [*self.held, (self.since, now)][-_HELD_KEPT:]
        self.suspects |= refused
        self.lone_suspects |= set(self.refused_alone)
        if len(self.suspects) > _SUSPECTS_KEPT:
            self.suspects = set(sorted(self.suspects)[-_SUSPECTS_KEPT:])
            self.lone_suspects &= self.suspects
        self.state, self.since, self.reason, self.status = ACTIVE, now, "", None
        self.refuses, self.refusals, self.refused_alone = UNKNOWN, [], {}
        self.next_probe = 0.0
        self.save()

    def suspected(self, rows: Iterable[int]) -> bool:
        """Whether any of these rows was refused during a pause the vendor came out of."""
        return any(row in self.suspects for row in rows)

    def settled(self, rows: Iterable[int]) -> None:
        """These rows were delivered or dead-lettered: no longer suspects."""
        done = set(rows)
        self.suspects -= done
        self.lone_suspects -= done

    def refused_one(self, message_id: str, status: int | None, reason: str,
                    now: float | None = None) -> None:
        """An event was dead-lettered because the vendor refused it alone, on a settings
        status, while it accepts other events (a firewall on its content)."""
        now = time.time() if now is None else now
        self.events_refused += 1
        self.refused_event = {"message_id": message_id, "status": status,
                              "reason": reason[:300], "at": now}
        self.save()

    def shown_reason(self) -> str:
        """The pause as an operator reads it: whether the vendor refuses everything, or
        whether that is still being checked with another event."""
        detail = self.reason or "paused"
        if self.refuses == EVERYTHING:
            return f"vendor refuses everything: {detail}"
        return f"{detail}; checking with another event whether only that one is refused"

    def recent_refusal(self, now: float | None = None) -> dict[str, Any] | None:
        """The last event refused alone and dead-lettered, within the last hour."""
        return recent_refusal(self.refused_event, self.events_refused, now)

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
        # The last event refused alone stays shown for its hour across a restart.
        if isinstance(entry.get("refused_event"), dict):
            self.refused_event = entry["refused_event"]

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
                "pid": os.getpid(), "held": [list(span) for span in self.held],
                "refuses": self.refuses if self.paused else None,
                "shown_reason": self.shown_reason() if self.paused else None,
                "refused_event": self.refused_event, "events_refused": self.events_refused}

    def save(self) -> None:
        if self.store is not None:
            try:
                self.store.save(self)
            except Exception:  # the status display must never stop delivery
                log.exception("could not record the state of %s/%s", self.site, self.vendor)


def recent_refusal(event: Any, count: Any, now: float | None = None) -> dict[str, Any] | None:
    """`event` (a `VendorHealth.refused_event`, perhaps read from the store) when it is
    within the hour it is shown, with `count` (events refused alone since start)."""
    now = time.time() if now is None else now
    if not isinstance(event, dict) or now - float(event.get("at") or 0) > REFUSED_SHOWN:
        return None
    return {**event, "count": count if isinstance(count, int) and count > 0 else 1}


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
