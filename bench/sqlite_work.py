"""The SQLite spool's rules stage alone, in process, and the bytes it stores per queued event
(issue 19, item 2: one work row per message). Not a test: run by hand, prints figures.

    PYTHONPATH=src .venv/bin/python bench/sqlite_work.py [--events 50000] [--vendors 5]
        [--sync full] [--repeat 3]

`--events` `Product Viewed` events (20 a request, 2,000 visitors, the shape of
bench/backlog_memory.py) are appended to the intake of a fresh spool file, 32 requests at a
time, while the rules stage (`route_intake`, in this process, on the writer thread) folds
them into stored events and their delivery work for `--vendors` vendors: timed from the
first append until the intake is empty (accepted -> routed and queued). Nothing is
delivered, so afterwards every event is queued for every vendor: the file and its WAL over
the events is the bytes per queued event. Also printed: the process's CPU time per event
(appends, the rules stage and the commits together), which a shared machine's other load
disturbs less than the wall clock. No HTTP, no forwarder: what the spool and the rules cost
per event, apart from the request path (bench/ingest.py --sustain measures the whole relay).
Run it with another checkout's src on PYTHONPATH to compare releases on the same machine, at
the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.rules import RequestContext
from shoprelay.spool.sqlite import SqliteSpool

VENDORS = ["goshops", "alana", "advisable", "retailrocket", "yespo"]
COOKIE = VisitorCookie("bench-secret-0123456789abcdef")
CONTEXT = RequestContext(ip="10.0.0.1", user_agent="Mozilla/5.0 (X11; Linux x86_64) bench")


def batch(n: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Product Viewed", "messageId": f"m{n}-{i}",
             "anonymousId": f"visitor-{(n * 20 + i) % 2000}",
             "properties": {"product_id": (n * 20 + i) % 5000, "price": 19.5,
                            "currency": "USD", "name": "Walking boots"},
             "context": {"page": {"url": "https://shop.example/p/1"}}} for i in range(20)]


async def run_once(folder: Path, events: int, vendors: list[str], sync: str
                   ) -> tuple[float, float, int]:
    path = str(folder / "spool.db")
    spool = SqliteSpool(path, router=lambda event: vendors, sync=sync,
                        alias_for=COOKIE.visitor_for_anonymous_id, new_id=new_visitor_id)
    spool.start()
    try:
        spool.route_intake()
        started, cpu = time.perf_counter(), time.process_time()
        requests = events // 20
        for first in range(0, requests, 32):
            await asyncio.gather(*(spool.append("bench", batch(n), CONTEXT)
                                   for n in range(first, min(first + 32, requests))))
        while (await spool.stats()).intake:
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stats = await spool.stats()
        assert stats.messages == events, stats.messages
        assert all(stats.counts[v].get("queued") == events for v in vendors), stats.counts
        return elapsed, cpu, spool.file_bytes()
    finally:
        await spool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--vendors", type=int, default=5)
    parser.add_argument("--sync", default="full", choices=("full", "normal"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    vendors = VENDORS[:args.vendors]
    for round_ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="shoprelay-sqlite-work-") as folder:
            elapsed, cpu, size = asyncio.run(run_once(Path(folder), args.events, vendors,
                                                      args.sync))
        print(f"round {round_ + 1}: {args.events} events for {len(vendors)} vendor(s): routed "
              f"and queued {args.events / elapsed:,.0f} events/s ({elapsed:.2f} s; "
              f"{args.events / cpu:,.0f} events per CPU second, {cpu / args.events * 1e6:.0f} "
              f"us CPU an event); spool "
              f"{size / 1e6:.1f} MB = {size / args.events:,.0f} bytes per queued event",
              flush=True)


if __name__ == "__main__":
    main()
