"""Profile of the rules stage alone (issue 19): what folding and storing costs per event. Not a
test: run by hand, prints figures.

    .venv/bin/python -m bench.rules_profile [--spool sqlite|redis] [--requests 1500] [--top 20]

In this process, no HTTP: the spool the settings name (five vendors configured, as
bench/ingest.py's relay) is filled with `--requests` intake entries of bench/ingest.py's
20-event batches, each parsed and checked as the request path does (`parse_body`,
`check_messages`, consent) with the context a cookie-less browser request gets. Then the
rules stage routes them all, twice from the same filled intake: once plain (the wall time per
event: `shoprelay.rules.fold` plus the spool's writes and commits) and once under cProfile
(the share of each function). SQLite's rules stage runs in the spool's writer thread, so the
profiler runs in that thread from its start (its idle wait for work is left out of the
shares); Redis' runs on the event loop, profiled there (time waiting for Redis' answers is
left out as idle). The intake is appended while nothing routes, so the figures are the rules
stage's alone, at its own pace.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ingest import LIMITS, REDIS_URL, UA, redis_cleanup, settings_file, twenty_events
from shoprelay.identity.consent import consent_of
from shoprelay.ingest.validation import check_messages, parse_body
from shoprelay.rules.context import RequestContext
from shoprelay.runtime import open_spool
from shoprelay.settings import Settings, load
from shoprelay.spool.base import Spool

#: Functions whose time is waiting, not work (the writer's queue, the event loop's select).
IDLE = ("<method 'get' of '_queue.SimpleQueue' objects>", "<method 'poll' of 'select.epoll'",
        "<method 'control' of 'select.kqueue'", "<method 'acquire' of '_thread.lock' objects>")


def requests(count: int) -> list[tuple[list[dict[str, Any]], RequestContext]]:
    out = []
    for n in range(count):
        raw = twenty_events(n, n % 32)
        body = parse_body(raw)
        checked = check_messages(body["batch"], batch_context=body.get("context"),
                                 received_at=time.time(), body_bytes=len(raw))
        accepted = checked.accepted
        out.append((accepted, RequestContext(
            source="browser", ip="127.0.0.1", user_agent=UA, bot=False,
            consent={i: consent_of(m, False) for i, m in enumerate(accepted)})))
    return out


async def fill(settings: Settings, batches: list[tuple[list[dict[str, Any]], RequestContext]]
               ) -> None:
    spool = open_spool(settings)
    spool.start()
    try:
        await asyncio.gather(*(spool.append("bench", m, c) for m, c in batches))
    finally:
        await spool.aclose()


async def pending(spool: Spool) -> int:
    return (await spool.stats()).intake


async def route_all(settings: Settings, profile: cProfile.Profile | None) -> float:
    """Route the whole intake; seconds from the start of routing to an empty intake."""
    spool = open_spool(settings)
    if profile is not None and hasattr(spool, "_write_loop"):
        # SQLite: the rules stage runs in the writer thread; profile that thread.
        loop = spool._write_loop

        def profiled(conn: Any) -> None:
            profile.enable()
            try:
                loop(conn)
            finally:
                profile.disable()

        spool._write_loop = profiled
        in_loop = None
    else:
        in_loop = profile
    spool.start()
    try:
        began = time.perf_counter()
        if in_loop is not None:
            in_loop.enable()
        spool.route_intake()
        while await pending(spool):
            await asyncio.sleep(0.25)
        took = time.perf_counter() - began
        if in_loop is not None:
            in_loop.disable()
    finally:
        await spool.aclose()
    return took


def report(profile: cProfile.Profile, events: int, top: int) -> None:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = sum(tt for (file, line, name), (_, _, tt, _, _) in raw.items()
               if any(pattern in name for pattern in IDLE))
    busy = sum(tt for (_, _, tt, _, _) in raw.values()) - idle

    def label(key: tuple[str, int, str]) -> str:
        file, line, name = key
        if file == "~":
            return name
        return f"{name} ({'/'.join(Path(file).parts[-2:])}:{line})"

    busy_rows = [(key, v) for key, v in raw.items()
                 if not any(pattern in key[2] for pattern in IDLE)]
    print(f"profiled: {busy:.2f} s busy (idle waits left out: {idle:.2f} s), "
          f"{1e6 * busy / events:.1f} us per event under the profiler")
    print("self (the function's own code), share of busy time, us per event:")
    for key, (_, _, tt, _, _) in sorted(busy_rows, key=lambda kv: -kv[1][2])[:top]:
        print(f"  {100 * tt / busy:5.1f} %  {1e6 * tt / events:6.1f} us  {label(key)}")
    print("total (with callees):")
    for key, (_, _, _, ct, _) in sorted(busy_rows, key=lambda kv: -kv[1][3])[:top]:
        print(f"  {100 * ct / busy:5.1f} %  {1e6 * ct / events:6.1f} us  {label(key)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spool", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--requests", type=int, default=1500, help="20-event intake entries")
    parser.add_argument("--sync", default="full", choices=("full", "normal"))
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shoprelay-rules-profile-"))
    events = args.requests * 20
    batches = requests(args.requests)
    redis = args.spool == "redis"
    prefixes = [f"rulesprof{os.getpid()}r{i}:" for i in range(2)]
    print(f"rules stage, {args.spool}: {args.requests:,} intake entries of 20 events "
          f"({events:,} events), five vendors; Python {sys.version.split()[0]}; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    try:
        filled: list[Settings] = []
        for run in range(2):
            directory = work / f"run{run}"
            directory.mkdir()
            if run and not redis:  # the same filled file for both runs
                for name in ("spool.db", "spool.db-wal"):
                    if (work / "run0" / name).exists():
                        shutil.copy(work / "run0" / name, directory / name)
            cfg = settings_file(directory, "http://127.0.0.1:9", sync=args.sync,
                                vendors=list(LIMITS), spool=REDIS_URL if redis else None,
                                redis_prefix=prefixes[run] if redis else "")
            filled.append(load(str(cfg)))
            if run == 0 or redis:
                asyncio.run(fill(filled[-1], batches))
        plain = asyncio.run(route_all(filled[0], None))
        print(f"plain: {events:,} events routed in {plain:.2f} s = {events / plain:,.0f} "
              f"events/s, {1e6 * plain / events:.1f} us per event (fold + spool write + "
              f"commit, one core)", flush=True)
        profile = cProfile.Profile()
        profiled = asyncio.run(route_all(filled[1], profile))
        print(f"under cProfile: {profiled:.2f} s ({events / profiled:,.0f} events/s)")
        report(profile, events, args.top)
    finally:
        if redis:
            for prefix in prefixes:
                redis_cleanup(prefix)
        print(f"files: {work}")


if __name__ == "__main__":
    main()
