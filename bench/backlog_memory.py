"""Memory and size with a backlog for a vendor that is down (issue 15). Not a test.

    .venv/bin/python bench/backlog_memory.py [--events 1000000] [--spools sqlite,redis]

One `shoprelay serve` per spool, one vendor configured (Go Shops, one request per event) whose
address is a closed port on 127.0.0.1: every delivery attempt is refused, so everything posted
stays queued. `--events` unique `Product Viewed` events (20 a request, 32 connections, 2,000
visitors) are posted with the ingest bench's load generator, then the relay idles for
`--settle` seconds while its forwarder keeps retrying the backlog in bounded rounds. Printed:
the relay's RSS (now and peak, from /proc) and the spool's bytes per queued event (SQLite: the
file and its WAL; Redis: `used_memory` grown, the prefix deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import (  # noqa: E402 - after the path is set
    PY,
    REDIS_URL,
    UA,
    WRITE_KEY,
    free_port,
    pin,
    redis_cleanup,
    rss_mb,
    settings_file,
    start,
    stop,
)


def batch(n: int, visitor: int) -> bytes:
    events = [b'{"type":"track","event":"Product Viewed","messageId":"m' + str(n).encode()
              + b"-" + str(i).encode() + b'","anonymousId":"visitor-'
              + str((n * 20 + i) % 2000).encode() + b'","properties":{"product_id":'
              + str((n * 20 + i) % 5000).encode()
              + b',"price":19.5,"currency":"USD","name":"Walking boots"},'
                b'"context":{"page":{"url":"https://shop.example/p/1"}}}' for i in range(20)]
    return b'{"writeKey":"' + WRITE_KEY.encode() + b'","batch":[' + b",".join(events) + b"]}"


async def post_all(port: int, requests: int, connections: int, first: int = 0) -> None:
    """`batch` requests numbered `first` to `first + requests - 1` (unique messageIds), over
    `connections` keep-alive connections sharing one count; any non-2xx answer stops it."""
    numbers = iter(range(first, first + requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {UA}\r\n"
                f"Content-Type: application/json\r\n").encode()
        try:
            for n in numbers:
                body = batch(n, 0)
                writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                             + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if status[9:10] != b"2":
                    raise SystemExit(f"refused: {status!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def redis_used() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--spools", default="sqlite,redis")
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, Python "
          f"{platform.python_version()}; {args.events:,} events, vendor down", flush=True)
    pin(1, os.getpid())
    work = Path(tempfile.mkdtemp(prefix="shoprelay-backlog-"))
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every attempt refused
    for spool in [s for s in args.spools.split(",") if s]:
        directory = Path(tempfile.mkdtemp(dir=work))
        prefix = f"backlog{os.getpid()}:" if spool == "redis" else ""
        cfg = settings_file(directory, down, sync="normal", vendors=["goshops"],
                            spool=REDIS_URL if spool == "redis" else None,
                            redis_prefix=prefix)
        before = redis_used() if spool == "redis" else 0
        port = free_port()
        relay = start(pin(0) + [PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port",
                                str(port), "--log-level", "warning"],
                      f"http://127.0.0.1:{port}/healthz", work / f"relay-{spool}.log")
        try:
            started = time.perf_counter()
            asyncio.run(post_all(port, args.events // 20, args.connections))
            took = time.perf_counter() - started
            loaded = rss_mb(relay.pid)
            time.sleep(args.settle)
            settled = rss_mb(relay.pid)
            stats = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
            if spool == "redis":
                size = redis_used() - before
            else:
                size = sum((directory / name).stat().st_size for name in
                           ("spool.db", "spool.db-wal") if (directory / name).exists())
            print(f"  {spool}: {args.events:,} events posted in {took:.0f} s "
                  f"({args.events / took:,.0f}/s); RSS after posting {loaded[0]:.0f} MB, after "
                  f"{args.settle:g} s of retries {settled[0]:.0f} MB, peak {settled[1]:.0f} MB "
                  f"(goal <= 150); spool {size / 1e6:.0f} MB = {size / args.events:.0f} bytes "
                  f"per queued event (goal <= 1,024)", flush=True)
            print(f"    healthz: {str(stats)[:300]}", flush=True)
        finally:
            stop(relay)
            if prefix:
                redis_cleanup(prefix)
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
