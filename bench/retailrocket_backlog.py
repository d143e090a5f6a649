"""How fast a Retail Rocket backlog drains at the documented 50 requests/s (issue 13).

A backlog is stored with forwarding off, then a relay forwards it to the Retail Rocket sandbox
(which answers 429 past 50 requests a second, as the limit reads). Printed: events delivered
per second from the first request to the last, requests sent and 429 answers, for
`visitor_events = true` (the default: batches across visitors) and `false` (one call each).

    .venv/bin/python bench/retailrocket_backlog.py [--events 10000] [--visitors 2000]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.sandbox import demo_vendor_settings
from shoprelay.settings import parse

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run(events: int, visitors: int, batching: bool, spool: Path) -> dict[str, float]:
    sandbox = create_sandbox_app(["retailrocket"])
    with serve(sandbox) as sb:
        vendor = demo_vendor_settings(sb, ["retailrocket"])["retailrocket"]
        vendor["visitor_events"] = batching
        table = {"relay": {"secret": "bench-secret-0123456789", "spool": f"sqlite://{spool}",
                           "ingest_per_ip_per_minute": 1_000_000},
                 "sites": {"shop": {"write_key": "pk_bench", "forward_bots": True,
                                    "vendors": {"retailrocket": vendor}}}}
        settings = parse(table, env={})
        options = DeliveryOptions(idle_poll=0.05)
        with serve(create_app(settings, delivery=options, forward=False)) as relay:
            for start in range(0, events, 250):
                batch = [{"type": "track", "event": "Product Viewed", "messageId": f"m{i}",
                          "anonymousId": f"v{i % visitors}",
                          "properties": {"product_id": i}}
                         for i in range(start, min(events, start + 250))]
                httpx.post(f"{relay}/v1/batch", json={"batch": batch, "writeKey": "pk_bench"},
                           headers={"User-Agent": UA}, timeout=60).raise_for_status()
        with serve(create_app(settings, delivery=options)):
            state = sandbox.state.sandboxes["retailrocket"]

            def delivered() -> int:
                total = 0
                for record in list(state.records):
                    if record.accepted:
                        total += len(record.body) if isinstance(record.body, list) else 1
                return total

            while delivered() < events:
                time.sleep(0.05)
            accepted = [r for r in state.records if r.accepted]
            first, last = state.records[0].at, accepted[-1].at
            refused = sum(1 for r in state.records if r.status == 429)
    seconds = max(1e-6, last - first)
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds,
            "requests": len(accepted), "429": refused}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--visitors", type=int, default=2_000)
    parser.add_argument("--unbatched-events", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for batching, count in ((True, args.events), (False, args.unbatched_events)):
            figures = run(count, args.visitors, batching, Path(tmp) / f"spool-{batching}.db")
            print(f"visitor_events={str(batching).lower():5}  {figures['events']:>6} events "
                  f"in {figures['seconds']:.2f} s = {figures['events_per_s']:,.0f} events/s, "
                  f"{figures['requests']} requests, {figures['429']} answered 429")


if __name__ == "__main__":
    main()
