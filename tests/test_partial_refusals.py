"""Issue 20: partial refusals, over real HTTP between the relay and the vendor sandboxes, with
batching on as it runs by default.

One rule for all of them (shoprelay.delivery.forwarder `_refused`): nothing a vendor may have
stored is sent to it again; what it refused is in the dead letter with the reason, on its own
where that can be told (an order line, one event of a batch refused whole), else the request's
events together with the vendor's count; nothing raised out of a delivery round.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import wait_for
from test_delivery_support import (
    dead_letters,
    delivered,
    fault,
    post,
    records,
    relay,
    sandbox,
    view,
    write_settings,
)

from shoprelay.delivery.forwarder import DeliveryOptions

OPTIONS = DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=1.0, timeout=5.0,
                          probe_first=0.2, probe_max=0.5)



def order(message_id: str, lines: list[int], visitor: str = "buyer") -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "messageId": message_id,
            "anonymousId": visitor,
            "properties": {"order_id": f"o-{message_id}", "total": 30, "currency": "USD",
                           "products": [{"product_id": i, "price": 10, "quantity": 1}
                                        for i in lines]}}


def no_copies(sandbox_url: str, vendor: str) -> bool:
    """No request carried a second copy of an event the sandbox had stored."""
    return all(not r.get("copies") for r in records(sandbox_url, vendor, accepted=None))


# ---- Alana: {status, stored, errors} -------------------------------------------------------

def test_alana_stores_each_event_once_when_it_refuses_one_of_a_batch(tmp_path: Path) -> None:
    # The issue's batch: eight views, one of which Alana counts in `errors`. "stored | number |
    # Number of events successfully stored" says how many, not which, and the document
    # describes no de-duplication: sending any of them again would store it twice.
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["alana"])
        fault(sb, "alana", kind="refuse_events", matches=['"productId":"5"'])
        with relay(cfg, OPTIONS, forward=False) as r:
            post(r.url, [view(i, visitor=f"v{i % 3}") for i in range(1, 9)])
        with relay(cfg, OPTIONS) as r:  # the backlog in one round: one batch of eight
            letters = wait_for(lambda: len(d := dead_letters(cfg)) == 8 and d, timeout=30)
            worker = r.app.state.forwarder.workers[0]
            assert worker.counters.refused_in_batch == 1
        [sent] = records(sb, "alana")
        assert len(sent["body"]["events"]) == 8
        assert "events[4]: injected fault" in sent["error"]  # the sandbox knows which
        # Each of the seven Alana stored reached it exactly once; none was sent again.
        assert delivered(sb, "alana") == Counter(range(1, 9))
        assert no_copies(sb, "alana")
        # Which one failed cannot be told: the batch is in the dead letter with the count.
        assert {int(d.event.properties["product_id"]) for d in letters} == set(range(1, 9))
        for letter in letters:
            assert "stored 7" in letter.error and "refused 1" in letter.error
            assert "none is sent again" in letter.error
            assert '"errors":1' in letter.response.replace(" ", "")


def test_alana_refusing_a_batch_whole_leaves_only_the_bad_event_dead(tmp_path: Path) -> None:
    # A 400 refuses the request whole (nothing stored), so its events are sent again one by
    # one, and only the one at fault ends in the dead letter.
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["alana"])
        fault(sb, "alana", kind="status", status=400, matches=['"productId":"3"'])
        with relay(cfg, OPTIONS, forward=False) as r:
            post(r.url, [view(i, visitor=f"v{i % 2}") for i in range(1, 6)])
        with relay(cfg, OPTIONS):
            [letter] = wait_for(lambda: dead_letters(cfg), timeout=30)
            wait_for(lambda: set(delivered(sb, "alana")) == {1, 2, 4, 5})
        assert letter.event.properties["product_id"] == 3 and letter.status == 400
        assert delivered(sb, "alana") == Counter({1: 1, 2: 1, 4: 1, 5: 1})
        assert no_copies(sb, "alana")
        refused = records(sb, "alana", accepted=False)
        assert len(refused) == 2 and len(refused[0]["body"]["events"]) == 5


def test_alana_answer_without_status_ok_is_not_taken_for_delivered(tmp_path: Path) -> None:
    # "status | string | Always "ok" on success": a 200 without it is no success, yet the
    # events may be stored, so they are dead-lettered with the answer, not sent again.
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["alana"])
        fault(sb, "alana", kind="status", status=200, count=1)
        with relay(cfg, OPTIONS, forward=False) as r:
            post(r.url, [view(i) for i in range(1, 4)])
        with relay(cfg, OPTIONS) as r:
            letters = wait_for(lambda: len(d := dead_letters(cfg)) == 3 and d, timeout=30)
            post(r.url, [view(9)])  # the next request is answered as documented
            wait_for(lambda: 9 in delivered(sb, "alana"))
        assert all("status" in d.error and "ok" in d.error for d in letters)
        assert delivered(sb, "alana") == Counter({1: 1, 2: 1, 3: 1, 9: 1})


def test_alana_gets_only_the_fields_its_document_names(tmp_path: Path) -> None:
    # The sandbox now stores fields the document does not name (its table lists required
    # fields, not the only ones allowed), so it no longer catches a stray field: this does.
    common = {"eventType", "visitorId", "userId", "metadata"}
    required = {"home-page-view": set(), "search": {"query"}, "category-view": {"categoryPath"},
                "detail-page-view": {"productId"}, "add-to-cart": {"productId"},
                "shopping-cart-page-view": set(),
                "purchase-complete": {"productIds", "revenue", "currency"}}
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["alana"])
        session = [
            {"type": "page", "name": "Home", "messageId": "p1", "anonymousId": "a"},
            {"type": "track", "event": "Products Searched", "messageId": "s1",
             "anonymousId": "a", "properties": {"query": "boots", "results": 3}},
            {"type": "track", "event": "Product List Viewed", "messageId": "c1",
             "anonymousId": "a", "properties": {"category": "Shoes", "category_id": 7}},
            view(11, visitor="a"),
            {"type": "track", "event": "Product Added", "messageId": "add1", "anonymousId": "a",
             "properties": {"product_id": 11, "quantity": 2, "cart_id": "c-1"}},
            {"type": "track", "event": "Cart Viewed", "messageId": "cv1", "anonymousId": "a",
             "properties": {"cart_id": "c-1"}},
            order("o1", [11, 12], visitor="a"),
        ]
        with relay(cfg, OPTIONS) as r:
            post(r.url, session)
            events = wait_for(lambda: len(e := [ev for rec in records(sb, "alana")
                                                for ev in rec["body"]["events"]]) >= 7 and e)
        assert {e["eventType"] for e in events} == set(required)
        for event in events:
            assert set(event) <= common | required[event["eventType"]], event
            assert required[event["eventType"]] <= set(event)
            assert all(isinstance(event[k], str) for k in ("eventType", "visitorId"))
        assert all("ignored fields" not in rec["error"] for rec in records(sb, "alana"))
        assert dead_letters(cfg) == []


# ---- Retail Rocket visitorEvents and Advisable purchase batches: one bad line --------------

def test_retail_rocket_order_in_one_visitor_events_batch_loses_only_its_bad_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Every line of the order rides in one `visitorEvents` batch (batching on, the default);
    # Retail Rocket answers 400 ("Ошибка в запросе") while line 102 is in it.
    caplog.set_level(logging.INFO, logger="shoprelay.delivery")
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["retailrocket"])
        fault(sb, "retailrocket", kind="status", status=400, matches=['"productId":102'])
        with relay(cfg, OPTIONS, forward=False) as r:
            post(r.url, [order("order-1", [101, 102, 103])])
        with relay(cfg, OPTIONS):
            [letter] = wait_for(lambda: dead_letters(cfg), timeout=30)
            wait_for(lambda: set(delivered(sb, "retailrocket")) == {101, 103})
        assert (letter.event.message_id, letter.part, letter.status) == ("order-1", 1, 400)
        assert delivered(sb, "retailrocket") == Counter({101: 1, 103: 1})
        assert records(sb, "retailrocket", accepted=False)[0]["path"].endswith("/visitorEvents")
        assert len(records(sb, "retailrocket", accepted=False)) == 2  # the batch, the line
    assert not [r for r in caplog.records if "round failed" in r.getMessage()]


def test_advisable_purchase_batch_loses_only_its_bad_line(tmp_path: Path) -> None:
    # "[POST] /v1/purchases/batch ... accepts an array as an input": the order's lines go
    # together; Advisable answers 422 while line 202 is in the batch.
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["advisable"])
        fault(sb, "advisable", kind="status", status=422, matches=['"item_id":"202"'])
        with relay(cfg, OPTIONS) as r:
            post(r.url, [order("order-2", [201, 202, 203]), view(204, visitor="buyer")])
            [letter] = wait_for(lambda: dead_letters(cfg), timeout=30)
            wait_for(lambda: set(delivered(sb, "advisable")) == {201, 203, 204})
            post(r.url, [order("order-3", [301, 302, 303])])  # no bad line: one request
            wait_for(lambda: 303 in delivered(sb, "advisable"))
        assert (letter.event.message_id, letter.part, letter.status) == ("order-2", 1, 422)
        assert '"item_id":"202"' in letter.request.replace(" ", "")
        assert delivered(sb, "advisable") == Counter({201: 1, 203: 1, 204: 1, 301: 1, 302: 1,
                                                      303: 1})
        refused = records(sb, "advisable", accepted=False)
        assert [len(r["body"]) for r in refused] == [3, 1]
        batches = [r["body"] for r in records(sb, "advisable") if r["path"].endswith("/batch")]
        assert [[p["item_id"] for p in b] for b in batches] == [["201"], ["203"],
                                                                 ["301", "302", "303"]]


# ---- a paused vendor's work does not expire --------------------------------------------------

def test_work_held_by_a_pause_longer_than_the_max_age_is_still_delivered(
        tmp_path: Path) -> None:
    # The max age dead-letters work that could not be delivered; work a pause held on purpose
    # (a wrong key: "its work stays queued") must not expire at the next probe.
    options = DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=1.0, timeout=5.0,
                              probe_first=0.2, probe_max=0.3, max_age=1.0)
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["goshops"])
        fault(sb, "goshops", kind="status", status=401)  # until cleared: the rotated key
        with relay(cfg, options) as r:
            post(r.url, [view(i, visitor=f"v{i}") for i in range(1, 6)])
            health = r.app.state.forwarder.workers[0].health
            wait_for(lambda: health.paused)
            # Probes keep being refused well past the max age.
            wait_for(lambda: len(records(sb, "goshops", accepted=False)) >= 12, timeout=30)
            assert time.time() - health.since > options.max_age
            httpx.delete(f"{sb}/_sandbox/goshops/faults").raise_for_status()  # fixed
            wait_for(lambda: set(delivered(sb, "goshops")) == set(range(1, 6)), timeout=30)
        assert dead_letters(cfg) == []
        assert delivered(sb, "goshops") == Counter(range(1, 6))


def test_work_held_by_a_pause_does_not_expire_across_a_restart(tmp_path: Path) -> None:
    # The relay is stopped while Go Shops is paused, past the max age, and started again with
    # the key fixed: the pause it remembers (the vendor-state file beside the spool) still
    # does not count towards the age of the work it held.
    options = DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=1.0, timeout=5.0,
                              probe_first=0.2, probe_max=0.3, max_age=1.0)
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["goshops"])
        fault(sb, "goshops", kind="status", status=401)
        with relay(cfg, options) as r:
            post(r.url, [view(i, visitor=f"v{i}") for i in range(1, 4)])
            health = r.app.state.forwarder.workers[0].health
            wait_for(lambda: health.paused)
            wait_for(lambda: len(records(sb, "goshops", accepted=False)) >= 12, timeout=30)
            assert time.time() - health.since > options.max_age
        httpx.delete(f"{sb}/_sandbox/goshops/faults").raise_for_status()
        with relay(cfg, options):
            wait_for(lambda: set(delivered(sb, "goshops")) == {1, 2, 3}, timeout=30)
        assert dead_letters(cfg) == []


# ---- limits: live and backfill together, SQLite spool ----------------------------------------

def test_live_and_backfill_together_stay_within_the_limit_on_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A vendor added later is backfilled while live traffic flows; the vendor counts both
    # against one limit. Its sandbox answers 429 past 10 requests a second, the relay's
    # setting says 10: neither the relay nor `shoprelay backfill` may push the sum past it.
    # (50 requests at 10 a second still make both wait for the limit, for 5 s, not 12.)
    from shoprelay.sandbox import SANDBOXES

    limit = 10
    monkeypatch.setattr(SANDBOXES["goshops"], "per_second", limit)
    overrides = {"goshops": {"rate_limit_per_second": limit}}
    with sandbox() as sb:
        before = write_settings(tmp_path / "before.toml", spool=tmp_path / "spool.db",
                                sandbox_url=sb, vendors=["advisable"])
        with relay(before, OPTIONS) as r:
            post(r.url, [view(i, visitor=f"v{i % 5}") for i in range(1, 21)])
        after = write_settings(tmp_path / "after.toml", spool=tmp_path / "spool.db",
                               sandbox_url=sb, vendors=["advisable", "goshops"],
                               overrides=overrides)
        live = set(range(1001, 1031))
        with relay(after, OPTIONS) as r:
            post(r.url, [view(i, visitor=f"live{i}") for i in sorted(live)])  # a live backlog
            done = subprocess.run(
                [sys.executable, "-m", "shoprelay", "backfill", "--config", str(after),
                 "--vendor", "goshops", "--since", "2026-01-01T00:00:00Z", "--share", "0.5"],
                capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert "sent 20 event(s)" in done.stdout
            wait_for(lambda: live <= set(delivered(sb, "goshops")), timeout=60)
        assert delivered(sb, "goshops") == Counter([*range(1, 21), *live])
        # The vendor never had to refuse a request for the limit.
        assert records(sb, "goshops", accepted=False) == []
