"""What traces cost on the hot path (issue 16). Not a test: run by hand, prints figures.

    .venv/bin/python bench/trace_cost.py [--events 20000] [--runs 3]

On the SQLite spool, in one process (no HTTP: the spool's writer is what the trace adds to):

1. ingest: 20-event requests routed to five vendors, with the trace index (a message's
   work, unique per vendor) and without it (dropped after start, as before issue 16), plus
   the notes table (written only for resends and duplicate orders: none here);
2. delivery bookkeeping: `mark_done` for every row, with the last exchange kept (a 500-char
   masked request and a 300-char answer, the forwarder's caps) and without.

Each figure is the median of the runs, in microseconds per event (ingest) or per row (marks).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.rules import RequestContext
from shoprelay.spool.sqlite import SqliteSpool

VENDORS = ["retailrocket", "goshops", "advisable", "alana", "yespo"]
COOKIE = VisitorCookie("bench-secret-0123456789abcdef")
REQUEST = "POST https://api.example/v1/events?apiKey=***\n" + "x" * 450
ANSWER = '{"ok":true}' + " " * 289


def batch(start: int, size: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Product Viewed", "messageId": f"m{start + i}",
             "anonymousId": f"a{(start + i) % 32}", "properties": {"product_id": start + i}}
            for i in range(size)]


async def one_run(path: Path, events: int, *, indexes: bool, exchange: bool) -> tuple[float,
                                                                                     float]:
    spool = SqliteSpool(str(path), router=lambda e: VENDORS, sync="normal",
                        alias_for=COOKIE.visitor_for_anonymous_id, new_id=new_visitor_id)
    spool.start()
    if not indexes:
        def drop(conn: Any) -> None:
            conn.execute("DROP INDEX IF EXISTS outbox_message")
        await spool._write(drop)
    context = RequestContext(ip="10.0.0.1", user_agent="bench")
    started = time.perf_counter()
    await asyncio.gather(*(spool.ingest("s", batch(i, 20), context)
                           for i in range(0, events, 20)))
    ingest = (time.perf_counter() - started) / events * 1e6
    rows = []
    for vendor in VENDORS:
        while True:
            due = await spool.due("s", vendor, time.time(), 500)
            if not due:
                break
            rows += [r.id for r in due]
            await asyncio.gather(*(
                spool.mark_done([r.id], status=200, request=REQUEST if exchange else "",
                                response=ANSWER if exchange else "") for r in due))
    started = time.perf_counter()
    # The marks above warmed the queries; time a second pass over the same rows.
    await asyncio.gather(*(spool.mark_done([i], status=200, request=REQUEST if exchange else "",
                                           response=ANSWER if exchange else "")
                           for i in rows))
    marks = (time.perf_counter() - started) / max(1, len(rows)) * 1e6
    spool.close()
    return ingest, marks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    found: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    for run in range(args.runs):  # the variants interleaved: the machine's load drifts
        for traces in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                i, m = asyncio.run(one_run(Path(tmp) / f"s{run}.db", args.events,
                                           indexes=traces, exchange=traces))
                found[traces][0].append(i)
                found[traces][1].append(m)
    for traces, (ingests, marks) in found.items():
        label = "with traces   " if traces else "without traces"
        print(f"{label}: ingest {statistics.median(ingests):6.1f} µs/event "
              f"{sorted(round(x, 1) for x in ingests)}; mark_done "
              f"{statistics.median(marks):6.1f} µs/row {sorted(round(x, 1) for x in marks)}")


if __name__ == "__main__":
    main()
