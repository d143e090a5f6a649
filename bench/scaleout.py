"""Scale-out benchmark (issue 7): ingest events/s for the SQLite and the Redis spool, with one
and two relay processes, beside the bare endpoint, in one run. Not a test: run by hand.

    .venv/bin/python bench/scaleout.py [--seconds 8] [--connections 32]

Uses bench/ingest.py's load generator (minimal asyncio HTTP/1.1 client, closed loop,
keep-alive) and its bare endpoint. With two processes the connections are split over two
`shoprelay serve` processes on two ports (as a load balancer would), each request carrying
its own messageIds and visitors, so nothing is deduplicated away. Five vendors are configured
(every event gets its five units of work). By default they point at the vendor sandboxes (one
process), which take deliveries at the vendors' documented limits while ingest is measured, as
in production; `--vendors nowhere` points them at a closed port instead (deliveries refused and
retried with backoff, bench/ingest.py's set-up).

The Redis runs use the server at 127.0.0.1:6379 with a fresh key prefix, removed afterwards;
Redis's memory growth per stored event is printed for sizing. SQLite with two processes means
two relays on one file: ingest works (SQLite locks the file), but both would deliver the same
work, so it is measured for comparison only — SQLite is a one-process backend.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.ingest import (  # noqa: E402  (after the path set-up above)
    LIMITS,
    PY,
    WRITE_KEY,
    free_port,
    load,
    one_event,
    pct,
    start,
    stop,
    twenty_events,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(directory: Path, spool: str, extra: dict[str, Any], vendors_at: str) -> Path:
    from shoprelay.sandbox import demo_vendor_settings

    lines = ["[relay]", 'secret = "bench-secret-0123456789abcdef"', f'spool = "{spool}"',
             # One client address sends everything here: the per-address limit is off.
             "ingest_per_ip_per_minute = 0"]
    lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in extra.items()]
    lines += ["", "[sites.bench]", f'write_key = "{WRITE_KEY}"']
    for name, table in demo_vendor_settings(vendors_at, list(LIMITS)).items():
        lines += ["", f"[sites.bench.vendors.{name}]"]
        for key, value in table.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path = directory / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def shifted(body_for: Any, shard: int) -> Any:
    """The generator's bodies with ids and visitors of their own per process shard."""
    return lambda n, visitor: body_for(n + shard * 10_000_000, visitor + shard * 1000)


def measure(name: str, ports: list[int], seconds: float, connections: int) -> dict[str, float]:
    async def run(path: str, body_for: Any) -> tuple[int, list[float], int]:
        share = max(1, connections // len(ports))
        results = await asyncio.gather(*(
            load(port, path, shifted(body_for, shard), seconds=seconds, connections=share)
            for shard, port in enumerate(ports)))
        latencies = [x for _, lat, _ in results for x in lat]
        return (sum(r[0] for r in results), latencies, sum(r[2] for r in results))

    count, lat, errors = asyncio.run(run("/v1/t", one_event))
    out = {"rps": count / seconds, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}
    count2, _, errors2 = asyncio.run(run("/v1/batch", twenty_events))
    out["events"] = count2 * 20 / seconds
    print(f"  {name:<34} 20-event batches: {out['events']:8.0f} events/s (non-2xx {errors2})"
          f"   1-event: {out['rps']:6.0f} req/s  p50 {out['p50']:6.2f} ms  p99 "
          f"{out['p99']:6.2f} ms (non-2xx {errors})", flush=True)
    return out


def relays(cfg: Path, count: int, work: Path, label: str) -> tuple[list[subprocess.Popen[bytes]],
                                                                     list[int]]:
    procs, ports = [], []
    for n in range(count):
        port = free_port()
        procs.append(start([PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port",
                            str(port), "--log-level", "warning"],
                           f"http://127.0.0.1:{port}/healthz", work / f"{label}-{n}.log"))
        ports.append(port)
    return procs, ports


def redis_memory() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def stored_events(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.hget(prefix + "counts", "messages") or 0)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--vendors", choices=["sandbox", "nowhere"], default="sandbox",
                        help="sandbox: the vendor sandboxes run and take deliveries at their "
                        "limits while ingest is measured; nowhere: deliveries are refused and "
                        "retried (bench/ingest.py's set-up)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, "
          f"Python {platform.python_version()}; {args.connections} connections in all, "
          f"{args.seconds:g} s per run after 1 s warm-up", flush=True)
    work = Path(tempfile.mkdtemp(prefix="shoprelay-scaleout-"))
    results: dict[str, dict[str, float]] = {}
    sandbox = None
    vendors_at = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if args.vendors == "sandbox":
        sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                         "--port", vendors_at.rsplit(":", 1)[1], "--log-level", "warning",
                         "--lifespan", "off"], f"{vendors_at}/_sandbox/requests",
                        work / "sandbox.log")
    print(f"vendors: {args.vendors}", flush=True)
    try:
        for workers in (1, 2):
            port = free_port()
            bare = start([PY, "-m", "uvicorn", "bench.bare:app", "--port", str(port),
                          "--workers", str(workers), "--log-level", "warning",
                          "--no-access-log"], f"http://127.0.0.1:{port}/", work / "bare.log")
            try:
                results[f"bare x{workers}"] = measure(
                    f"bare endpoint, {workers} process(es)", [port], args.seconds,
                    args.connections)
            finally:
                stop(bare)
        for count in (1, 2):
            directory = Path(tempfile.mkdtemp(dir=work))
            cfg = settings(directory, f"sqlite://{directory / 'spool.db'}",
                           {"spool_sync": "full"}, vendors_at)
            procs, ports = relays(cfg, count, work, f"sqlite{count}")
            try:
                results[f"sqlite x{count}"] = measure(
                    f"relay, SQLite, {count} process(es)", ports, args.seconds,
                    args.connections)
            finally:
                for proc in procs:
                    stop(proc)
        for count in (1, 2):
            prefix = f"shoprelay-bench:{uuid.uuid4().hex[:8]}:"
            directory = Path(tempfile.mkdtemp(dir=work))
            cfg = settings(directory, REDIS_URL, {"redis_prefix": prefix}, vendors_at)
            before = redis_memory()
            procs, ports = relays(cfg, count, work, f"redis{count}")
            try:
                results[f"redis x{count}"] = measure(
                    f"relay, Redis, {count} process(es)", ports, args.seconds,
                    args.connections)
                time.sleep(0.5)
                stored = stored_events(prefix)
                grown = redis_memory() - before
                if stored:
                    print(f"    Redis memory: +{grown / 1e6:.1f} MB for {stored} events "
                          f"(5 vendors each) = {grown / stored:.0f} bytes/event", flush=True)
            finally:
                for proc in procs:
                    stop(proc)
                redis_cleanup(prefix)
        bare = results["bare x1"]["events"]
        print("summary (20-event batches, events/s; bare = the bare endpoint, 1 process):")
        for name, r in results.items():
            print(f"  {name:<10} {r['events']:8.0f}  ({r['events'] / bare:.2f}x bare)")
    finally:
        if sandbox is not None:
            stop(sandbox)
        print(f"logs: {work}")


if __name__ == "__main__":
    main()
