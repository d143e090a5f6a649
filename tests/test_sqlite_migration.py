"""A SQLite spool file written before work rows (one `outbox` row per message and vendor) opens
with the current code, in place, and every piece of work in it goes on as it was: queued work
in each visitor's order, a retry still waiting, half-sent work resuming where it stopped, dead
letters (a part dead-lettered alone too) replayable, a backfill claim resumable, the trace of
what was delivered.

`data/spool-outbox-per-vendor.sql` is the `.dump` of a file the release before made
(`git archive rules-move`; `data/make_outbox_per_vendor.py` says how): messages m1–m6 and
the order o1, routed to goshops and alana, then m1 delivered to goshops (200, "POST /g"), m2
retried there for an hour, m4 half-sent to alana (1 request), m5 dead at alana, o1's line 1
dead-lettered alone at goshops (o1 sent 2), a backfill claim of m6 for yespo."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.spool.sqlite import SqliteSpool

DUMP = Path(__file__).parent / "data" / "spool-outbox-per-vendor.sql"
COOKIE = VisitorCookie("contract-test-secret-0123456789")


def old_file(tmp_path: Path) -> str:
    path = str(tmp_path / "spool.db")
    conn = sqlite3.connect(path)
    conn.executescript(DUMP.read_text())
    # The dump holds m2's retry as the time it was made plus an hour: moved to an hour from
    # now, so it still waits whenever the test runs (else m2 falls due an hour after the dump).
    with conn:
        conn.execute("UPDATE outbox SET next_at = ? WHERE next_at > 0", (time.time() + 3600,))
    conn.close()
    return path


def open_spool(path: str) -> SqliteSpool:
    spool = SqliteSpool(path, router=lambda event: ["goshops", "alana"], sync="normal",
                        alias_for=COOKIE.visitor_for_anonymous_id, new_id=new_visitor_id)
    spool.start()
    return spool


async def due(spool: SqliteSpool, vendor: str) -> list[tuple[str, int, int | None]]:
    return [(r.event.message_id, r.sent, r.part)
            for r in await spool.due("s", vendor, time.time(), 100)]


def test_an_older_file_opens_and_its_work_goes_on_as_it_was(tmp_path: Path) -> None:
    path = old_file(tmp_path)

    async def first_open() -> None:
        spool = open_spool(path)
        try:
            # m2 waits an hour at goshops: visitor a's m3 waits behind it; o1 resumes at 2.
            assert await due(spool, "goshops") == [
                ("m4", 0, None), ("m5", 0, None), ("m6", 0, None), ("o1", 2, None)]
            # m4 resumes after its first request; m5 is a dead letter, not queued.
            assert await due(spool, "alana") == [
                ("m1", 0, None), ("m2", 0, None), ("m3", 0, None), ("m4", 1, None),
                ("m6", 0, None), ("o1", 0, None)]
            stats = (await spool.stats()).to_dict(time.time())["vendors"]
            assert {k: stats["goshops"][k] for k in ("delivered", "queued", "dead")} == {
                "delivered": 1, "queued": 6, "dead": 1}
            assert {k: stats["alana"][k] for k in ("queued", "dead")} == {"queued": 6,
                                                                          "dead": 1}
            assert stats["yespo"]["backfill"] == 1
            [m1] = await spool.find_messages("s", message_id="m1")
            assert (m1.work["goshops"].state, m1.work["goshops"].status,
                    m1.work["goshops"].request) == ("delivered", 200, "POST /g")
            assert m1.work["alana"].state == "queued"
            [m2] = await spool.find_messages("s", message_id="m2")
            assert (m2.work["goshops"].state, m2.work["goshops"].error) == ("queued", "busy")
            letters = {(d.event.message_id, d.vendor, d.part): d
                       for d in await spool.dead_letters()}
            assert set(letters) == {("o1", "goshops", 1), ("m5", "alana", None)}
            # A backfill that stopped gets its claim back, once.
            items, _ = await spool.history("s", since=0, until=time.time() + 1)
            m6 = [i for i in items if i.message_id == "m6"]
            assert m6[0].vendors == {"goshops": "queued", "alana": "queued",
                                     "yespo": "backfill"}
            assert await spool.claim_backfill("s", "yespo", m6) == ["m6"]
            # ... and a vendor with live work is never claimed.
            assert await spool.claim_backfill("s", "alana", items) == []
            # Replay one letter by its id: m5 is queued again in visitor b's order.
            assert await spool.replay(dead_id=letters["m5", "alana", None].id) == 1
            assert [m for m, _, _ in await due(spool, "alana")] == [
                "m1", "m2", "m3", "m4", "m5", "m6", "o1"]
            rows = {r.event.message_id: r for r in
                    await spool.due("s", "goshops", time.time(), 100)}
            await spool.mark_done([rows["m4"].id], status=200)
        finally:
            await spool.aclose()

    async def second_open() -> None:
        spool = open_spool(path)  # migrated once: opening again changes nothing
        try:
            assert [m for m, _, _ in await due(spool, "goshops")] == ["m5", "m6", "o1"]
            assert len(await due(spool, "alana")) == 7
        finally:
            await spool.aclose()

    asyncio.run(first_open())
    conn = sqlite3.connect(path)
    try:
        # The never-tried work is one row per message now; the outbox keeps the rest.
        assert conn.execute("SELECT COUNT(*) FROM work").fetchone()[0] == 7
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 0 AND attempts = 0 "
                            "AND sent = 0 AND part IS NULL AND error IS NULL").fetchone()[0] == 1
    finally:
        conn.close()
    asyncio.run(second_open())
