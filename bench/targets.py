"""Issue 19's targets, each beside its figure and the bare endpoint of the same run. Not a test.

    .venv/bin/python -m bench.targets [--spools sqlite,redis] [--sustain 60] [--queued 1000000]
        [--quick]

One command for the table issue 19 asks for, on each spool (Redis on 127.0.0.1:6379):

1. the bare endpoint (bench/bare.py) under the same load generator, measured right before the
   relay of that spool, so every ratio is taken within minutes on the same machine;
2. a relay (`shoprelay serve`, five vendors configured and their sandboxes up, so it forwards
   while it ingests) pinned to CPU 0 with its delivery, this process (the load generator) on
   CPU 1, as bench/ingest.py runs them. On it, in this order: ack → vendor request latency
   while the relay is idle (bench/latency.py's idle phase, before any load), single events and
   20-event batches accepted (bench/ingest.py's closed loop), then `--sustain` seconds of
   20-event batches and the time until the rules stage has routed and queued all of them;
3. a second relay whose only vendor (Go Shops) is a closed port, so everything stays queued:
   `--queued` events posted and routed in two halves; bytes per queued event = the spool's
   growth over the second half (the fixed part, schema and first pages, left out; Redis: the
   `MEMORY USAGE` of this run's keys, not `used_memory`, which other users of the shared
   Redis move), and the relay's RSS. Below 1,000,000 the RSS is extrapolated linearly from
   its growth over the second half (said so in the table).

Prints one plain table: figure / measured / target / bare / met or missed by X %. Every wait
is bounded (a rules stage that does not catch up is reported with what it left), all traffic
goes to 127.0.0.1, and the Redis keys it wrote (its own prefix) are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from bench.backlog_memory import post_all, redis_used
from bench.ingest import (
    LIMITS,
    PY,
    REDIS_URL,
    ROOT,
    free_port,
    load,
    measure,
    pin,
    redis_cleanup,
    rss_mb,
    settings_file,
    start,
    stop,
    twenty_events,
)
from bench.latency import VENDORS as LATENCY_VENDORS
from bench.latency import latencies, phase

#: Issue 19's 1,000,000 queued events: the RSS target's backlog.
MILLION = 1_000_000


@dataclass
class Row:
    spool: str
    figure: str
    value: float
    unit: str
    #: ">=" or "<=" against `target`.
    sense: str
    target: float
    target_text: str
    bare: str = "-"
    note: str = ""

    def verdict(self) -> str:
        if self.sense == ">=":
            gap = (self.target - self.value) / self.target
        else:
            gap = (self.value - self.target) / self.target
        if gap <= 0:
            return f"met ({-100 * gap:.0f} % to spare)"
        return f"missed by {100 * gap:.0f} %"


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f} {unit}".rstrip()


async def post_range(port: int, first: int, requests: int, connections: int) -> None:
    """bench/backlog_memory.py's 20-event requests number `first` to `first + requests - 1`
    (unique messageIds, 2,000 visitors), over `connections` keep-alive connections."""
    await post_all(port, requests, connections, first=first)


def spool_figures(cfg: Path) -> dict[str, Any]:
    """`shoprelay spool stats --json` beside the running relay: what the spool holds."""
    out = subprocess.run([PY, "-m", "shoprelay", "spool", "stats", "--config", str(cfg),
                          "--json"], capture_output=True, check=True, cwd=ROOT, timeout=120)
    return cast(dict[str, Any], json.loads(out.stdout))


def intake_pending(cfg: Path) -> int:
    """Intake entries the rules stage has not routed yet, read from the spool. (Not from
    /readyz: without the admin token it answers only ok / not_ready, so that reading was
    always 0 and no wait below ever waited.)"""
    return int(spool_figures(cfg)["intake"]["pending"])


def wait_routed(cfg: Path, timeout: float) -> tuple[float, int]:
    """(seconds waited, intake entries still pending) once the intake is empty or `timeout`
    passed: the rules stage has routed and queued everything accepted, or not in time. (An
    entry is a request on SQLite; Redis splits a request by intake partition.) Polled twice
    a second: each look is a `spool stats` beside the relay being measured."""
    began = time.perf_counter()
    pending = intake_pending(cfg)
    while pending and time.perf_counter() - began < timeout:
        time.sleep(0.5)
        pending = intake_pending(cfg)
    return time.perf_counter() - began, pending


def prefix_bytes(prefix: str) -> int:
    """Bytes Redis holds under `prefix` (the sum of `MEMORY USAGE` of its keys): this run's
    share alone, where `used_memory` would count whatever else the shared Redis holds."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        total = 0
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 5000):
            with client.pipeline(transaction=False) as pipe:
                for key in keys[i:i + 5000]:
                    pipe.memory_usage(key)
                total += sum(int(n or 0) for n in pipe.execute())
        return total
    finally:
        client.close()


def stored(cfg: Path) -> int:
    """Messages the spool holds (routed by the rules stage), read by `shoprelay spool stats`
    beside the running relay."""
    return int(spool_figures(cfg)["messages"])


def fresh_twenty_events(n: int, visitor: int) -> bytes:
    """`twenty_events` with messageIds no earlier load of the run used."""
    return twenty_events(SUSTAINED_FIRST + n, visitor)


#: Where the sustained load's request numbers start (the loads before it send far fewer).
SUSTAINED_FIRST = 100_000_000


def sustained(port: int, cfg: Path, seconds: float, connections: int, drain_timeout: float
              ) -> dict[str, float]:
    """20-event batches for `seconds`, then until routed: the whole pipe's events/s, accepted
    → routed and queued for every vendor, over the load and the drain after it. Routed is
    counted in the spool (stored messages before and after), so a rules stage that has not
    caught up by `drain_timeout` is measured at what it did."""
    _, earlier = wait_routed(cfg, drain_timeout)  # what the earlier loads left behind
    first = stored(cfg)
    # Numbered past the earlier loads' requests: `load` numbers every load from 0, so the
    # same messageIds again would be folded as duplicates, neither stored nor queued, and
    # this figure would count only the few requests the earlier loads did not reach.
    count, _, errors = asyncio.run(load(port, "/v1/batch", fresh_twenty_events,
                                        seconds=seconds, connections=connections,
                                        warmup=0.0))
    left = intake_pending(cfg)
    waited, still = wait_routed(cfg, drain_timeout)
    routed = stored(cfg) - first
    return {"accepted": count * 20 / seconds, "routed": routed / (seconds + waited),
            "left_at_end": left, "drain": waited, "unrouted": still, "errors": errors,
            "earlier": earlier}


def idle_latency(relay_url: str, sandbox_url: str, events: int) -> dict[str, list[float]]:
    acks = asyncio.run(phase(relay_url, 0, events, background=False))
    return latencies(sandbox_url, acks)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def relay_command(cfg: Path, port: int) -> list[str]:
    return pin(0) + [PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port", str(port),
                     "--log-level", "warning"]


def one_spool(spool: str, work: Path, sandbox_url: str, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    redis = spool == "redis"
    tag = f"targets{os.getpid()}{spool}"

    # 1. the bare endpoint, just before this spool's relay
    port = free_port()
    bare_proc = start(pin(0) + [PY, "-m", "uvicorn", "bench.bare:app", "--port", str(port),
                                "--log-level", "warning", "--no-access-log"],
                      f"http://127.0.0.1:{port}/", work / f"bare-{spool}.log")
    try:
        bare = measure("bare Starlette + orjson", port, args)
    finally:
        stop(bare_proc)

    # 2. the relay forwarding to the sandboxes
    directory = Path(tempfile.mkdtemp(dir=work))
    prefix = f"{tag}:" if redis else ""
    cfg = settings_file(directory, sandbox_url, sync=args.sync, vendors=list(LIMITS),
                        spool=REDIS_URL if redis else None, redis_prefix=prefix)
    port = free_port()
    relay_url = f"http://127.0.0.1:{port}"
    relay = start(relay_command(cfg, port), f"{relay_url}/healthz", work / f"relay-{spool}.log")
    try:
        found = idle_latency(relay_url, sandbox_url, args.latency_events)
        every = [v for values in found.values() for v in values]
        seen = ", ".join(f"{v} {len(found[v])}/{args.latency_events}" for v in LATENCY_VENDORS)
        print(f"  {spool}: idle latency ({seen}): p50 {pct(every, 0.5):.1f} ms, max "
              f"{max(every, default=float('nan')):.1f} ms", flush=True)
        relay_fig = measure(f"relay, {spool}", port, args)
        sus = sustained(port, cfg, args.sustain, args.connections, args.drain_timeout)
        print(f"  {spool}: sustained {args.sustain:g} s: accepted {sus['accepted']:,.0f} "
              f"events/s, routed and queued {sus['routed']:,.0f} events/s (intake "
              f"{sus['earlier']:.0f} entries left from the loads before it, "
              f"{sus['left_at_end']:.0f} at the end of the load; waited {sus['drain']:.1f} s "
              f"after it, {sus['unrouted']:.0f} entries not routed then; non-2xx "
              f"{sus['errors']:.0f})", flush=True)
        load_rss = rss_mb(relay.pid)
    finally:
        stop(relay)
        if redis:
            redis_cleanup(prefix)

    errors = f"non-2xx {relay_fig['errors']:.0f}"
    rows += [
        Row(spool, "1-event req/s", relay_fig["rps"], "req/s", ">=", 0.6 * bare["rps"],
            f">= 0.6 x bare = {0.6 * bare['rps']:,.0f}", f"{bare['rps']:,.0f} req/s", errors),
        Row(spool, "1-event p99", relay_fig["p99"], "ms", "<=", 3 * bare["p99"],
            f"<= 3 x bare = {3 * bare['p99']:.1f} ms", f"{bare['p99']:.1f} ms",
            f"p50 {relay_fig['p50']:.1f} ms (bare {bare['p50']:.1f})"),
        Row(spool, "20-event events/s accepted", relay_fig["events"], "events/s", ">=", 60_000,
            ">= 60,000", f"{bare['events']:,.0f} events/s",
            f"non-2xx {relay_fig['batch_errors']:.0f}"),
        Row(spool, f"sustained {args.sustain:g} s, routed+queued x5", sus["routed"],
            "events/s", ">=", 25_000, ">= 25,000", f"{bare['events']:,.0f} events/s",
            f"accepted {sus['accepted']:,.0f}/s, drained in {sus['drain']:.0f} s"
            + (f"; NOT drained: {sus['unrouted']:.0f} intake entries left after "
               f"{args.drain_timeout:g} s" if sus["unrouted"] else "")
            + (f"; {sus['earlier']:.0f} entries of the loads before it still there at its "
               f"start" if sus["earlier"] else "")),
        Row(spool, "idle ack -> vendor p50", pct(every, 0.5), "ms", "<=", 20, "<= 20 ms",
            note=f"n={len(every)} ({'+'.join(LATENCY_VENDORS)})"),
        Row(spool, "idle ack -> vendor max", max(every, default=float("nan")), "ms", "<=", 250,
            "<= 250 ms"),
        Row(spool, "RSS peak under load (info)", load_rss[1], "MB", "<=", 150, "<= 150 MB",
            note="the forwarding relay after the loads above"),
    ]

    try:
        rows += backlog(spool, work, args)
    except Exception as exc:  # the figures above still count
        print(f"  {spool}: backlog failed: {type(exc).__name__}: {exc}", flush=True)
    return rows


def backlog(spool: str, work: Path, args: argparse.Namespace) -> list[Row]:
    """Bytes per queued event and RSS with a backlog: one vendor that is down, everything
    stays queued."""
    redis = spool == "redis"
    tag = f"targets{os.getpid()}{spool}"
    directory = Path(tempfile.mkdtemp(dir=work))
    prefix = f"{tag}q:" if redis else ""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = settings_file(directory, down, sync="normal", vendors=["goshops"],
                        spool=REDIS_URL if redis else None, redis_prefix=prefix)
    before = redis_used() if redis else 0  # the note's used_memory, for comparison
    port = free_port()
    relay = start(relay_command(cfg, port), f"http://127.0.0.1:{port}/healthz",
                  work / f"relay-{spool}-backlog.log")
    queued = args.redis_queued if redis and args.redis_queued else args.queued
    half = queued // 40  # requests of 20 events: half the backlog
    points: list[tuple[int, float, int, int]] = []  # (stored, RSS MB, spool bytes, unrouted)
    try:
        base = rss_mb(relay.pid)[0]
        began = time.perf_counter()
        left = 0
        for first in (0, half):
            # Bounded too: at least 200 events/s, or the run stops with what it has.
            asyncio.run(asyncio.wait_for(post_range(port, first, half, args.connections),
                                         timeout=120 + half * 20 / 200))
            waited, left = wait_routed(cfg, args.drain_timeout)
            time.sleep(args.settle)
            size = (prefix_bytes(prefix) if redis else
                    sum((directory / name).stat().st_size for name in
                        ("spool.db", "spool.db-wal") if (directory / name).exists()))
            points.append((stored(cfg), rss_mb(relay.pid)[0], size, left))
            grown = redis_used() - before if redis else 0
        took = time.perf_counter() - began
        peak = rss_mb(relay.pid)[1]
    finally:
        stop(relay)
        if redis:
            redis_cleanup(prefix)
    (n1, rss1, size1, left1), (n2, rss2, size2, left2) = points
    print(f"  {spool}: {n2:,} events routed and queued in {took:.0f} s (intake entries not "
          f"routed in time: {left1} at half, {left2} at the end); RSS {base:.0f} MB before, "
          f"{rss1:.0f} MB at {n1:,}, {rss2:.0f} MB at {n2:,} "
          f"(peak {peak:.0f}); spool {size1 / 1e6:,.0f} MB at {n1:,}, {size2 / 1e6:,.0f} MB at "
          f"{n2:,}", flush=True)
    # What one more queued event costs: the growth between the two halves, free of the fixed
    # part (the schema, caches, a Redis prefix's first keys) that the first half carries.
    per_event = (size2 - size1) / max(n2 - n1, 1)
    if n2 >= MILLION:
        rss_1m, how = max(rss2, peak), f"measured at {n2:,}"
    else:
        slope = max(rss2 - rss1, 0.0) / max(n2 - n1, 1)
        rss_1m = max(rss2 + slope * (MILLION - n2), peak)
        how = (f"extrapolated from {n2:,}: {rss2:.0f} MB + {slope * 1e5:.1f} MB per 100k "
               f"(growth {n1:,} -> {n2:,})")
    kind = ("file + WAL" if not redis else
            f"MEMORY USAGE of the prefix's keys (used_memory grew {grown / max(n2, 1):,.0f} B "
            f"an event, the shared Redis' other users included)")
    unrouted = (f"; NOT all routed: {left1}/{left2} intake entries still in the spool at the "
                f"two points, their bytes counted" if left1 or left2 else "")
    return [
        Row(spool, "spool bytes per queued event", per_event, "B", "<=", 1024,
            "<= 1 KB (1,024 B)",
            note=f"{kind} growth {n1:,} -> {n2:,} queued, 1 vendor (average over all "
                 f"{n2:,}: {size2 / max(n2, 1):,.0f} B){unrouted}"),
        Row(spool, "RSS with 1,000,000 queued", rss_1m, "MB", "<=", 150, "<= 150 MB",
            note=how + unrouted),
    ]


def table(rows: list[Row]) -> str:
    head = ("spool", "figure", "measured", "target", "bare (same run)", "met / missed", "note")
    lines = [(r.spool, r.figure, fmt(r.value, r.unit), r.target_text, r.bare, r.verdict(),
              r.note) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
            for line in lines]
    return "\n".join(x.rstrip() for x in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spools", default="sqlite,redis")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured seconds of each accept load (after 1 s warm-up)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sync", default="full", choices=("full", "normal"),
                        help="spool_sync of the forwarding SQLite relay (the backlog relay "
                             "runs normal, as bench/backlog_memory.py)")
    parser.add_argument("--sustain", type=float, default=60.0,
                        help="seconds of the sustained accepted -> routed load")
    parser.add_argument("--latency-events", type=int, default=100,
                        help="single events sent to the idle relay, 20-300 ms apart")
    parser.add_argument("--queued", type=int, default=MILLION,
                        help="events queued for the bytes and RSS figures; below 1,000,000 "
                             "the RSS is extrapolated (said so in the table)")
    parser.add_argument("--redis-queued", type=int, default=0,
                        help="--queued for the Redis spool only (default: the same)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of retries against the down vendor before the RSS")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="longest wait for the rules stage to route what was accepted")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 3 s loads, 10 s sustained, 30 latency events, "
                             "20,000 queued")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.sustain, args.latency_events = 3.0, 10.0, 30
        args.queued, args.settle, args.drain_timeout = 20_000, 2.0, 60.0
    spools = [s for s in args.spools.split(",") if s]
    started = time.time()
    load_before = os.getloadavg()
    print(f"issue 19 targets, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
          f"{os.cpu_count()} CPU(s), {platform.platform()}, Python "
          f"{platform.python_version()}; load average {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}; relays and bare pinned to CPU 0, the load generator to CPU 1; "
          f"{args.connections} connections, {args.seconds:g} s a load", flush=True)
    pin(1, os.getpid())
    work = Path(tempfile.mkdtemp(prefix="shoprelay-targets-"))
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                     "--port", str(sandbox_port), "--log-level", "warning", "--lifespan", "off"],
                    f"{sandbox_url}/_sandbox/requests", work / "sandbox.log")
    rows: list[Row] = []
    try:
        for spool in spools:
            print(spool, flush=True)
            httpx.delete(f"{sandbox_url}/_sandbox/requests", timeout=30)
            try:
                rows += one_spool(spool, work, sandbox_url, args)
            except Exception as exc:  # the other spool's figures still count
                print(f"  {spool}: failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        stop(sandbox)
    load_after = os.getloadavg()
    print()
    print(table(rows))
    print(f"\n{time.time() - started:.0f} s; load average at the end {load_after[0]:.2f} "
          f"{load_after[1]:.2f} {load_after[2]:.2f} (2 cores shared: read ranges, not points); "
          f"logs: {work}", flush=True)


if __name__ == "__main__":
    main()
