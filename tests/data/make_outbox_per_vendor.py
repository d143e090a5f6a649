"""Makes the spool file behind spool-outbox-per-vendor.sql with the release before work rows
(one outbox row per message and vendor). Run with that release's code, then dump:

    git archive rules-move | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/data/make_outbox_per_vendor.py /tmp/old.db
    sqlite3 /tmp/old.db "PRAGMA wal_checkpoint(TRUNCATE)" .dump \
        > tests/data/spool-outbox-per-vendor.sql

Queued, delivered, retried, half-sent and dead work, a part dead-lettered alone, a backfill
claim (see tests/test_sqlite_migration.py)."""
import asyncio
import sys
import time

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.rules import RequestContext
from shoprelay.spool.sqlite import SqliteSpool

COOKIE = VisitorCookie("contract-test-secret-0123456789")
CTX = RequestContext(ip="10.0.0.1", user_agent="UA")

def track(event, mid, anon, **props):
    return {"type": "track", "event": event, "messageId": mid, "anonymousId": anon,
            "properties": props}

async def main(path):
    spool = SqliteSpool(path, router=lambda e: ["goshops", "alana"], sync="normal",
                        alias_for=COOKIE.visitor_for_anonymous_id, new_id=new_visitor_id)
    spool.start()
    await spool.ingest("s", [track("Product Viewed", f"m{i}", "a" if i < 4 else "b",
                                   product_id=str(i)) for i in range(1, 7)], CTX)
    await spool.ingest("s", [track("Order Completed", "o1", "c", order_id="1",
                                   products=[{}, {}, {}])], CTX)
    g = {r.event.message_id: r for r in await spool.due("s", "goshops", time.time(), 100)}
    a = {r.event.message_id: r for r in await spool.due("s", "alana", time.time(), 100)}
    await spool.mark_done([g["m1"].id], status=200, request="POST /g", response="ok")
    await spool.mark_retry([g["m2"].id], next_at=time.time() + 3600, status=503, error="busy")
    await spool.mark_progress(a["m4"].id, 1)
    await spool.mark_dead([a["m5"].id], status=400, error="bad field", request="POST /a")
    await spool.mark_progress(g["o1"].id, 1)
    await spool.mark_part_dead(g["o1"].id, 1, status=400, error="line refused")
    await spool.mark_progress(g["o1"].id, 2)
    items, _ = await spool.history("s", since=0, until=time.time() + 1)
    await spool.claim_backfill("s", "yespo", [i for i in items if i.message_id == "m6"])
    await spool.aclose()

asyncio.run(main(sys.argv[1]))
