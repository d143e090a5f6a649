"""Delivery latency benchmark (issue 11): from the ingest answer to the vendor's request.

    .venv/bin/python bench/latency.py [--events 200] [--spool sqlite|redis|both]

Not a test: run by hand, prints figures. All traffic stays on 127.0.0.1. A real
`shoprelay serve` (one process) delivers to the vendor sandboxes (their own uvicorn process);
this process sends single `Product Viewed` events and notes when each was acknowledged; the
sandbox notes when each vendor request arrived. Latency = arrival at the vendor − ack, per
event and vendor (Go Shops and Retail Rocket: one request per event, so each event is seen
on its own; both clocks are this machine's).

Two phases per spool:
1. idle: events at random spacing (uniform 20–300 ms), so each finds the relay idle;
2. steady load: a background stream of events at about half of the slowest vendor's limit
   (Go Shops: 20 requests/s, so ~10 events/s) while the measured events are sent.

Targets (issue 11): p50 ≤ 20 ms, max ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import PY, UA, WRITE_KEY, free_port, settings_file, start, stop  # noqa: E402

VENDORS = ["goshops", "retailrocket"]


def settings(directory: Path, sandbox_url: str, spool: str) -> Path:
    """bench/ingest.py's settings (durable SQLite), or the same on the machine's Redis."""
    path = settings_file(directory, sandbox_url, sync="full", vendors=VENDORS)
    if spool == "redis":
        text = path.read_text().replace(
            f'spool = "sqlite://{directory / "spool.db"}"',
            f'spool = "redis://127.0.0.1:6379/0"\nredis_prefix = "bench-latency-{time.time_ns()}:"')
        path.write_text(text)
    return path


def event(n: int) -> dict[str, Any]:
    return {"writeKey": WRITE_KEY, "type": "track", "event": "Product Viewed",
            "messageId": f"lat-{n}", "anonymousId": f"visitor-{n % 50}",
            "properties": {"product_id": str(n), "price": 9.5, "currency": "USD"}}


def product_of(record: dict[str, Any]) -> str | None:
    """The product id a one-event vendor request carries (Go Shops `item`, Retail Rocket
    `productId`), wherever it stands in the body."""
    stack = [record.get("body"), record.get("query")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("item", "item_id", "productId") and isinstance(value, str | int):
                    return str(value)
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return None


async def phase(relay_url: str, first: int, count: int, *, background: bool) -> dict[int, float]:
    """Send `count` measured events; returns messageId number → ack time."""
    acks: dict[int, float] = {}
    stop_load = asyncio.Event()
    async with httpx.AsyncClient(headers={"User-Agent": UA}) as client:
        async def steady() -> None:
            n = 10_000_000 + first
            while not stop_load.is_set():
                n += 1
                await client.post(f"{relay_url}/v1/t", json=event(n))
                await asyncio.sleep(0.1)  # ~10 events/s: half of Go Shops' 20 requests/s

        loader = asyncio.create_task(steady()) if background else None
        if loader is not None:
            await asyncio.sleep(1.0)
        for n in range(first, first + count):
            answer = await client.post(f"{relay_url}/v1/t", json=event(n))
            acks[n] = time.time()
            answer.raise_for_status()
            await asyncio.sleep(random.uniform(0.02, 0.3))
        stop_load.set()
        if loader is not None:
            await loader
    return acks


def latencies(sandbox_url: str, acks: dict[int, float]) -> dict[str, list[float]]:
    deadline = time.monotonic() + 30
    found: dict[str, list[float]] = {}
    while time.monotonic() < deadline:
        found = {v: [] for v in VENDORS}
        for vendor in VENDORS:
            for record in httpx.get(f"{sandbox_url}/_sandbox/{vendor}/requests?accepted=1",
                                    timeout=30).json():
                product = product_of(record)
                if product is not None and product.isdigit() and int(product) in acks:
                    found[vendor].append((record["at"] - acks[int(product)]) * 1000)
        if all(len(v) >= len(acks) for v in found.values()):
            break
        time.sleep(0.5)
    return found


def describe(values: list[float]) -> str:
    if not values:
        return "no requests seen"
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return (f"n={len(values)} p50={pct(0.5):.1f} ms p95={pct(0.95):.1f} ms "
            f"p99={pct(0.99):.1f} ms max={ordered[-1]:.1f} ms")


def run(spool: str, events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sandbox_port, port = free_port(), free_port()
        sandbox_url, relay_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{port}"
        sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                         "--port", str(sandbox_port), "--log-level", "warning",
                         "--lifespan", "off"], f"{sandbox_url}/_sandbox/requests",
                        work / "sandbox.log")
        cfg = settings(work, sandbox_url, spool)
        relay = start([PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port", str(port),
                       "--log-level", "warning"], f"{relay_url}/healthz", work / "relay.log")
        try:
            for name, background, first in (("idle", False, 0), ("steady load", True, 100_000)):
                acks = asyncio.run(phase(relay_url, first, events, background=background))
                for vendor, values in latencies(sandbox_url, acks).items():
                    print(f"  {spool:6} {name:11} {vendor:12} {describe(values)}")
        finally:
            stop(relay)
            stop(sandbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--spool", choices=["sqlite", "redis", "both"], default="both")
    args = parser.parse_args()
    print(f"ack → vendor request; {platform.python_version()}, {platform.machine()}, "
          f"{__import__('os').cpu_count()} CPUs")
    for spool in (["sqlite", "redis"] if args.spool == "both" else [args.spool]):
        run(spool, args.events)


if __name__ == "__main__":
    main()
