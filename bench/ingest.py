"""Ingest and forwarding benchmark (issue 4). Not a test: run by hand, prints figures.

    .venv/bin/python bench/ingest.py [--seconds 8] [--connections 32] [--repeat 3]
        [--spools sqlite,redis,sqlite-ingest-only] [--sync full] [--sustain 60] [--skip-alana]
        [--skip-forward]

All traffic stays on 127.0.0.1. Each server runs in its own process (uvicorn, one worker, as
`shoprelay serve` runs); the load generator is this process: a minimal asyncio HTTP/1.1 client
with keep-alive connections (far cheaper per request than httpx, so the generator takes as
little of the 2 cores as possible). The same generator, connections and duration measure:

1. the bare endpoint: Starlette under uvicorn, parses the JSON body with orjson, answers 204;
2. the relay (`shoprelay serve`, five vendors configured so every event gets its delivery
   work) on each spool of `--spools` (SQLite with `--sync`, Redis on 127.0.0.1:6379; the
   `-ingest-only` kinds run without a forwarder in the process, bench/ingest_only.py);

servers pinned to CPU 0 and the generator to CPU 1 (taskset), `--repeat` rounds (the bare
endpoint measured again in each, so every ratio is within one round),

for 1-event `POST /v1/t` requests (req/s, p50, p99) and 20-event `POST /v1/batch` requests
(events/s). Then forwarding: a backlog is delivered to the vendor sandboxes and each vendor's
request rate is compared with its limit (busiest window, whole-run average, 429 answers).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"
WRITE_KEY = "pk_bench"
#: The bench relays' admin token: `intake_pending` reads the intake from /readyz with it.
ADMIN_TOKEN = "bench-admin-token-0123456789"


def default_limits() -> dict[str, tuple[int, float]]:
    """vendor → (requests, window seconds) of its tightest default limit, from the adapter
    registry (a sixth vendor is measured with no edit here)."""
    sys.path.insert(0, str(ROOT / "src"))
    from shoprelay.sandbox import demo_vendor_settings
    from shoprelay.vendors import VENDORS

    tables = demo_vendor_settings("http://127.0.0.1", sorted(VENDORS))
    limits = {}
    for name, vendor in VENDORS.items():
        declared = vendor.rate_limits(vendor.config_class(**tables[name]))
        if declared:
            tight = min(declared, key=lambda r: r.requests / r.per_seconds)
            limits[name] = (tight.requests, tight.per_seconds)
    return limits


LIMITS = default_limits()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def start(args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    wait_up(url, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pin(cpu: int, pid: int | None = None) -> list[str]:
    """Pin to one CPU (the relay to 0, the load generator to 1, as the issue's figures were
    taken): the `taskset` prefix of a command, or, given a pid, pin that process now."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return []
    if pid is not None:
        os.sched_setaffinity(pid, {cpu})
        return []
    return ["taskset", "-c", str(cpu)]


def settings_file(directory: Path, sandbox_url: str, *, sync: str, vendors: list[str],
                  spool: str | None = None, redis_prefix: str = "",
                  extra: dict[str, dict[str, Any]] | None = None,
                  relay_lines: list[str] | None = None) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from shoprelay.sandbox import demo_vendor_settings

    url = spool or f"sqlite://{directory / 'spool.db'}"
    lines = ["[relay]", 'secret = "bench-secret-0123456789abcdef"',
             f'spool = "{url}"', f'spool_sync = "{sync}"',
             # One load generator on one address: the per-address ingest limit would refuse it.
             "ingest_per_ip_per_minute = 1000000000",
             # /readyz shows the intake's figures only to the admin (intake_pending reads them).
             f'admin_token = "{ADMIN_TOKEN}"', *(relay_lines or [])]
    if redis_prefix:
        lines.append(f'redis_prefix = "{redis_prefix}"')
    lines += ["", "[sites.bench]", f'write_key = "{WRITE_KEY}"']
    for name, table in demo_vendor_settings(sandbox_url, vendors).items():
        table = {**table, **(extra or {}).get(name, {})}
        lines += ["", f"[sites.bench.vendors.{name}]"]
        for key, value in table.items():
            shown = str(value).lower() if isinstance(value, bool) else value
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {shown}")
    path = directory / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the load generator -----------------------------------------------------------------------

def one_event(n: int, visitor: int) -> bytes:
    return (b'{"writeKey":"' + WRITE_KEY.encode() + b'","type":"track","event":"Product Viewed",'
            b'"messageId":"b' + str(n).encode() + b'","anonymousId":"visitor-'
            + str(visitor).encode() + b'","properties":{"product_id":' + str(n % 5000).encode()
            + b',"price":19.5,"currency":"USD","name":"Walking boots"},'
            b'"context":{"page":{"url":"https://shop.example/p/1","path":"/p/1"}}}')


def twenty_events(n: int, visitor: int) -> bytes:
    events = []
    for i in range(20):
        events.append(b'{"type":"track","event":"Product Viewed","messageId":"b'
                      + str(n).encode() + b"-" + str(i).encode()
                      + b'","anonymousId":"visitor-' + str(visitor).encode()
                      + b'","properties":{"product_id":' + str((n * 20 + i) % 5000).encode()
                      + b',"price":19.5,"currency":"USD","name":"Walking boots"},'
                        b'"context":{"page":{"url":"https://shop.example/p/1"}}}')
    return b'{"writeKey":"' + WRITE_KEY.encode() + b'","batch":[' + b",".join(events) + b"]}"


async def load(port: int, path: str, body_for: Any, *, seconds: float, connections: int,
               warmup: float = 1.0) -> tuple[int, list[float], int]:
    """Closed-loop load: each connection sends its next request when the last is answered.
    Returns (requests answered in the measured period, their latencies, non-2xx answers)."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def worker(visitor: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {UA}\r\n"
                f"Content-Type: application/json\r\n").encode()
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                body = body_for(next(counter), visitor)
                writer.write(head + b"Content-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
                t0 = time.perf_counter()
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                t1 = time.perf_counter()
                if t0 >= begin and t1 <= end:
                    latencies.append(t1 - t0)
                    if status_line[9:10] != b"2":
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(v) for v in range(connections)))
    return len(latencies), latencies, errors


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def measure(name: str, port: int, args: argparse.Namespace) -> dict[str, float]:
    count, lat, errors = asyncio.run(load(port, "/v1/t", one_event, seconds=args.seconds,
                                          connections=args.connections))
    single = {"rps": count / args.seconds, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
              "errors": errors}
    count, _, errors2 = asyncio.run(load(port, "/v1/batch", twenty_events,
                                         seconds=args.seconds, connections=args.connections))
    single["batch_rps"] = count / args.seconds
    single["events"] = count * 20 / args.seconds
    single["batch_errors"] = errors2
    print(f"  {name:<28} 1-event: {single['rps']:8.0f} req/s  p50 {single['p50']:6.2f} ms  "
          f"p99 {single['p99']:6.2f} ms  non-2xx {errors}   20-event: {single['events']:8.0f} "
          f"events/s ({single['batch_rps']:.0f} req/s, non-2xx {errors2})", flush=True)
    return single


def intake_pending(port: int) -> int:
    """Accepted requests the relay's rules stage has not routed yet (/readyz tells the admin:
    without the token it answers only its status, and this read 0 whatever was queued)."""
    answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30,
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    return int(answer.get("intake", {}).get("pending", 0))


def drain(port: int, timeout: float = 600.0) -> float:
    """Seconds until the intake is empty (every accepted request routed and queued)."""
    start = time.perf_counter()
    while intake_pending(port) and time.perf_counter() - start < timeout:
        time.sleep(0.05)
    return time.perf_counter() - start


def sustained(name: str, port: int, args: argparse.Namespace) -> dict[str, float]:
    """20-event batches for `--sustain` seconds, then until the rules stage has routed them
    all: accepted → routed and queued for every vendor, per second of the whole span."""
    drain(port)
    count, _, errors = asyncio.run(load(port, "/v1/batch", twenty_events,
                                        seconds=args.sustain, connections=args.connections,
                                        warmup=0.0))
    left = intake_pending(port)
    waited = drain(port)
    events = count * 20
    out = {"accepted": events / args.sustain, "routed": events / (args.sustain + waited),
           "drain": waited, "backlog": left}
    print(f"  {name:<28} sustained {args.sustain:g} s of 20-event batches: accepted "
          f"{out['accepted']:8.0f} events/s; routed and queued {out['routed']:8.0f} events/s "
          f"(intake {left} request(s) at the end, drained in {waited:.1f} s; non-2xx {errors})",
          flush=True)
    return out


# ---- forwarding ----------------------------------------------------------------------------

def busiest(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def post_backlog(url: str, total: int, offset: int = 0) -> None:
    with httpx.Client(headers={"User-Agent": UA}, timeout=30) as client:
        for start in range(0, total, 100):
            batch = [{"type": "track", "event": "Product Viewed",
                      "messageId": f"f{offset + i}", "anonymousId": f"fv{(offset + i) % 97}",
                      "properties": {"product_id": offset + i, "price": 3, "currency": "USD"}}
                     for i in range(start, min(total, start + 100))]
            answer = client.post(f"{url}/v1/batch", json={"writeKey": WRITE_KEY,
                                                          "batch": batch})
            answer.raise_for_status()


def forwarding(work: Path, vendors: list[str], events: int, wait_for: float) -> None:
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                     "--port", str(sandbox_port), "--log-level", "warning", "--lifespan", "off"],
                    f"{sandbox_url}/_sandbox/requests", work / "sandbox.log")
    directory = Path(tempfile.mkdtemp(dir=work))
    # Retail Rocket's own request limit is measured one call a request (its visitorEvents
    # batches would carry the whole backlog in a dozen requests).
    cfg = settings_file(directory, sandbox_url, sync="normal", vendors=vendors,
                        extra={"retailrocket": {"visitor_events": False}})
    port = free_port()
    relay = start([PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port", str(port),
                   "--log-level", "warning"], f"http://127.0.0.1:{port}/healthz",
                  work / "relay-forward.log")
    try:
        post_backlog(f"http://127.0.0.1:{port}", events)
        deadline = time.monotonic() + wait_for
        done: set[str] = set()
        while time.monotonic() < deadline and len(done) < len(vendors):
            time.sleep(0.5)
            got = httpx.get(f"{sandbox_url}/_sandbox/requests", timeout=30).json()
            for vendor in vendors:
                accepted = sum(len(r["body"]["events"]) if vendor == "alana" else 1
                               for r in got[vendor] if r["accepted"])
                if accepted >= events:
                    done.add(vendor)
        got = httpx.get(f"{sandbox_url}/_sandbox/requests", timeout=30).json()
        for vendor in vendors:
            limit, window = LIMITS[vendor]
            accepted = [r["at"] for r in got[vendor] if r["accepted"]]
            refused = [r for r in got[vendor] if r["status"] == 429]
            peak = busiest(accepted + [r["at"] for r in refused], window)
            if vendor == "alana":
                first = min(accepted)
                in_first = sum(1 for t in accepted if t < first + window)
                after = sorted(t for t in accepted if t >= first + window)
                nxt = f"next at +{after[0] - first:.2f} s" if after else "no request after it"
                print(f"  {vendor:<13} {len(accepted)} requests ({events} events); first "
                      f"{window:.0f} s window: {in_first} of {limit} ({100 * in_first / limit:.1f} "
                      f"%), {nxt}; busiest window {peak}/{limit}; 429s: {len(refused)}")
                continue
            span = max(accepted) - min(accepted)
            # Use of the limit: requests in each full window that starts at a request, averaged
            # (the last window of the run is not full, so it is left out).
            ordered = sorted(accepted)
            full = [sum(1 for u in ordered[i:] if u < t + window)
                    for i, t in enumerate(ordered) if t + window <= ordered[-1]]
            used = sum(full) / len(full) / limit if full else 0.0
            print(f"  {vendor:<13} {len(accepted)} requests in {span:.2f} s; mean per {window:g} s "
                  f"window {used * limit:.1f}/{limit} ({100 * used:.1f} % of the limit); busiest "
                  f"window {peak}/{limit}; 429s: {len(refused)}", flush=True)
    finally:
        stop(relay)
        stop(sandbox)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def ingest_runs(work: Path, args: argparse.Namespace) -> None:
    """The bare endpoint and the relay on each spool asked for, `--repeat` times, in one run
    (the machine is shared: the ratio is taken within a round)."""
    rows: dict[str, list[dict[str, float]]] = {}
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    # The vendors are up (sandboxes), so the relay forwards while it ingests, as it would in
    # production; forwarding is rate-limited and takes little CPU.
    sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                     "--port", str(sandbox_port), "--log-level", "warning",
                     "--lifespan", "off"], f"{sandbox_url}/_sandbox/requests",
                    work / "sandbox-ingest.log")
    try:
        for round_ in range(args.repeat):
            print(f"round {round_ + 1} of {args.repeat}", flush=True)
            port = free_port()
            bare = start(pin(0) + [PY, "-m", "uvicorn", "bench.bare:app", "--port", str(port),
                                   "--log-level", "warning", "--no-access-log"],
                         f"http://127.0.0.1:{port}/", work / "bare.log")
            try:
                rows.setdefault("bare", []).append(measure("bare Starlette + orjson", port,
                                                           args))
            finally:
                stop(bare)
            for spool in args.spools:
                directory = Path(tempfile.mkdtemp(dir=work))
                prefix = (f"bench{os.getpid()}r{round_}{spool}:" if spool.startswith("redis")
                          else "")
                cfg = settings_file(directory, sandbox_url, sync=args.sync,
                                    vendors=list(LIMITS),
                                    spool=REDIS_URL if spool.startswith("redis") else None,
                                    redis_prefix=prefix,
                                    relay_lines=(["delivery_process = true"]
                                                 if spool.endswith("-delivery-process")
                                                 else []))
                port = free_port()
                command = [PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port",
                           str(port), "--log-level", "warning"]
                if spool.endswith("-ingest-only"):  # no forwarder in the process
                    os.environ["SHOPRELAY_BENCH_CONFIG"] = str(cfg)
                    command = [PY, "-m", "uvicorn", "--factory", "bench.ingest_only:app",
                               "--port", str(port), "--log-level", "warning",
                               "--no-access-log"]
                relay = start(pin(0) + command, f"http://127.0.0.1:{port}/healthz",
                              work / f"relay-{spool}.log")
                if spool.endswith("-delivery-process"):
                    # Its delivery process goes to the other core (the load generator's):
                    # using the second core is the point of the setting.
                    for child in children(relay.pid):
                        pin(1, child)
                try:
                    result = measure(f"relay, {spool}", port, args)
                    if args.sustain:
                        result |= sustained(f"relay, {spool}", port, args)
                    result["rss"], result["rss_peak"] = rss_mb(relay.pid)
                    print(f"  {'':<28} relay RSS after the 20-event load {result['rss']:.0f} MB "
                          f"(peak {result['rss_peak']:.0f} MB)", flush=True)
                    rows.setdefault(spool, []).append(result)
                finally:
                    stop(relay)
                    if prefix:
                        redis_cleanup(prefix)
    finally:
        stop(sandbox)
    bare_rows = rows["bare"]
    for spool in args.spools:
        ratio = [r["rps"] / b["rps"] for r, b in zip(rows[spool], bare_rows, strict=True)]
        p99 = [r["p99"] / b["p99"] for r, b in zip(rows[spool], bare_rows, strict=True)]
        events = [r["events"] for r in rows[spool]]
        routed = [r["routed"] for r in rows[spool] if "routed" in r]
        sustain = (f"; sustained routed {min(routed):.0f}-{max(routed):.0f} events/s "
                   f"(target >= 25,000)" if routed else "")
        print(f"  relay/bare ({spool}): 1-event {min(ratio):.2f}-{max(ratio):.2f}x req/s "
              f"(target >= 0.6x), p99 {min(p99):.1f}-{max(p99):.1f}x (target <= 3x); 20-event "
              f"{min(events):.0f}-{max(events):.0f} events/s accepted (target >= 60,000)"
              f"{sustain}; RSS peak "
              f"{max(r['rss_peak'] for r in rows[spool]):.0f} MB (goal <= 150)", flush=True)


REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of bare + relays")
    parser.add_argument("--spools", default="sqlite,redis",
                        help="comma-separated: sqlite, redis (Redis on 127.0.0.1:6379), "
                             "sqlite-ingest-only, redis-ingest-only (no forwarder in the "
                             "process: bench/ingest_only.py), and sqlite-delivery-process, "
                             "redis-delivery-process (relay.delivery_process = true, its "
                             "delivery process on the other core)")
    parser.add_argument("--sync", default="full", choices=("full", "normal"),
                        help="spool_sync of the SQLite relay")
    parser.add_argument("--sustain", type=float, default=0.0,
                        help="also load 20-event batches this many seconds and wait until "
                             "the rules stage routed them (accepted -> routed events/s)")
    parser.add_argument("--forward-events", type=int, default=300)
    parser.add_argument("--skip-alana", action="store_true",
                        help="skip the 61 s Alana run (its window is one minute)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    args = parser.parse_args()
    args.spools = [s for s in args.spools.split(",") if s]
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, "
          f"Python {platform.python_version()}; {args.connections} connections, "
          f"{args.seconds:g} s per run after 1 s warm-up; servers pinned to CPU 0, the load "
          f"generator to CPU 1", flush=True)
    pin(1, os.getpid())
    work = Path(tempfile.mkdtemp(prefix="shoprelay-bench-"))
    try:
        if not args.skip_ingest:
            print("ingest", flush=True)
            ingest_runs(work, args)
        if args.skip_forward:
            return
        print("forwarding (limits as documented; the sandboxes answer 429 past them)",
              flush=True)
        # Per-second limits are measured together; a per-minute one (Alana: 100 a minute,
        # 100 events a request) needs a backlog past one window of full batches.
        per_second = [v for v, (_, window) in LIMITS.items() if window <= 1.0]
        forwarding(work, per_second, args.forward_events, wait_for=60)
        for vendor, (requests, _) in LIMITS.items():
            if vendor not in per_second and not args.skip_alana:
                forwarding(work, [vendor], (requests + 1) * 100, wait_for=75)
    finally:
        print(f"logs: {work}")


if __name__ == "__main__":
    main()
