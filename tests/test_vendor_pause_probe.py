"""A refusal of one event is not a refusal of the vendor (issue 22, item 3). Real HTTP: the
relay, the vendor sandboxes with a firewall in front (the sandbox's "waf" fault: a 403 page for
every request whose body holds a string, as a WAF rule matching one product's content would
answer), `shoprelay vendors status` in its own process; batching on, as by default.

Before, such a 403 paused the vendor like a refused key, and every probe was that same oldest
event, so nothing else reached the vendor until it expired after 24 hours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import REDIS_URL
from servers import wait_for
from test_delivery_support import (
    clear_faults,
    dead_letters,
    delivered,
    fault,
    post,
    product_ids,
    records,
    relay,
    sandbox,
    view,
    wait_delivered,
    write_settings,
)
from test_delivery_support import (
    vendors_status as status_rows,
)

from shoprelay.delivery.forwarder import DeliveryOptions

OPTIONS = DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=1.0, timeout=5.0,
                          probe_first=0.2, probe_max=0.5)
TOKEN = "probe-admin-token-0123456789"
#: The poisoned event's product id: no other event's id, and nothing else in a vendor body,
#: holds these digits (the others are below 1,000).
POISON = 666013



def vendors_status(settings_file: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """`vendors status --json`, its rows by vendor."""
    code, rows = status_rows(settings_file)
    return code, {row["vendor"]: row for row in rows}


def ready(url: str) -> dict[str, Any]:
    """/readyz's whole picture: beyond ready or not it speaks only to the admin token."""
    answer: dict[str, Any] = httpx.get(f"{url}/readyz",
                                       headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return answer


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text


def settings_for(tmp_path: Path, sb: str, vendor: str, spool: str, prefix: str) -> Path:
    relay_table: dict[str, Any] = {"admin_token": TOKEN}
    if spool == "redis":
        relay_table |= {"spool": REDIS_URL, "redis_prefix": prefix}
    return write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                          vendors=[vendor], relay=relay_table)


def events_of(visitors: int, each: int) -> list[dict[str, Any]]:
    """`each` views for each of `visitors` visitors, interleaved as they would arrive; the
    product id tells the visitor (hundreds) and the order (units)."""
    return [view(k * 100 + seq, visitor=f"v{k}") for seq in range(1, each + 1)
            for k in range(1, visitors + 1)]


def assert_each_visitor_in_order(sb: str, vendor: str) -> None:
    seen: dict[int, list[int]] = {}
    for record in records(sb, vendor):
        for product in product_ids(record["body"]):
            seen.setdefault(product // 100, []).append(product)
    assert seen and all(ids == sorted(ids) for ids in seen.values()), seen


def assert_poison_dead_lettered(cfg: Path, vendor: str) -> None:
    [letter] = dead_letters(cfg)
    assert letter.event.message_id == f"m{POISON}" and letter.vendor == vendor
    assert letter.status == 403 and "refused alone" in letter.error
    assert "Request blocked" in letter.response  # the vendor's (firewall's) answer is kept
    assert "sandbox-key" not in letter.response + letter.error + letter.request


def assert_told_one_event(r_url: str, cfg: Path, vendor: str) -> None:
    state = ready(r_url)
    assert state["paused_vendors"] == {} and state["status"] == "ok"
    refused = state["refused_events"][f"shop/{vendor}"]
    assert refused["message_id"] == f"m{POISON}" and refused["status"] == 403
    assert refused["state"] == "dead-lettered" and refused["count"] == 1
    code, rows = vendors_status(cfg)
    assert code == 0, rows
    assert rows[vendor]["state"] == "delivering"
    assert rows[vendor]["reason"] == "one event refused, dead-lettered (HTTP 403)"
    assert rows[vendor]["refused_event"]["message_id"] == f"m{POISON}"
    text = metrics(r_url)
    assert (f'shoprelay_vendor_refused_alone_total{{site="shop",vendor="{vendor}"}} 1.0'
            in text)
    assert (f'shoprelay_vendor_refuses_everything{{site="shop",vendor="{vendor}"}} 0.0'
            in text)
    assert 'state="delivering",reason="one event refused, dead-lettered (HTTP 403)"' in text


@pytest.mark.parametrize(("vendor", "spool"), [("goshops", "sqlite"),
                                               ("retailrocket", "sqlite"),
                                               ("retailrocket", "redis")])
def test_a_firewall_refusing_the_oldest_event_stops_nothing_else(
        tmp_path: Path, prefix: str, vendor: str, spool: str) -> None:
    # The case: the one event the firewall blocks is the oldest queued one, and the
    # vendor pauses on its 403; the probe is another visitor's event, which passes.
    with sandbox() as sb:
        cfg = settings_for(tmp_path, sb, vendor, spool, prefix)
        fault(sb, vendor, kind="waf", status=403, matches=[str(POISON)])
        with relay(cfg, OPTIONS) as r:
            post(r.url, [view(POISON, visitor="v9")])
            paused = wait_for(lambda: ready(r.url)["paused_vendors"].get(f"shop/{vendor}"))
            # Many others, the poisoned visitor's later events among them.
            others = events_of(visitors=5, each=6) + [view(901, visitor="v9"),
                                                      view(902, visitor="v9")]
            post(r.url, others)
            expected = {int(m["properties"]["product_id"]) for m in others}
            counts = wait_delivered(sb, vendor, expected)
            wait_for(lambda: len(dead_letters(cfg)) == 1)
            assert set(counts) == expected and set(counts.values()) == {1}, counts
            assert_poison_dead_lettered(cfg, vendor)
            assert_each_visitor_in_order(sb, vendor)
            # While it was paused on the one event, it said it did not know yet.
            assert paused["refuses"] == "unknown" and "403" in paused["reason"]
            assert "checking with another event" in paused["reason"]
            assert_told_one_event(r.url, cfg, vendor)
        assert all(record["copies"] == 0 for record in records(sb, vendor))


@pytest.mark.parametrize("vendor", ["alana", "retailrocket"])
def test_a_batch_holding_the_poisoned_event_is_narrowed_to_it(tmp_path: Path, prefix: str,
                                                              vendor: str) -> None:
    # A backlog goes in batches (Alana: one batch of the whole round, Retail Rocket
    # `visitorEvents` per lane), so the 403 refuses a batch holding 40 good events. Nothing of
    # a refused request is stored (a 403 is no `{status: "ok"}` answer, and Retail Rocket's
    # 200 "Запрос принят" is the only acceptance), so its events may be sent again: halves,
    # until the one refused is alone.
    with sandbox() as sb:
        cfg = settings_for(tmp_path, sb, vendor, "sqlite", prefix)
        fault(sb, vendor, kind="waf", status=403, matches=[str(POISON)])
        backlog = events_of(visitors=4, each=5)
        backlog[7:7] = [view(POISON, visitor="v3")]
        backlog += events_of(visitors=4, each=10)[20:]
        with relay(cfg, OPTIONS, forward=False) as r:
            post(r.url, backlog)
        expected = {int(m["properties"]["product_id"]) for m in backlog} - {POISON}
        with relay(cfg, OPTIONS) as r:
            counts = wait_delivered(sb, vendor, expected)
            wait_for(lambda: len(dead_letters(cfg)) == 1)
            assert set(counts) == expected and set(counts.values()) == {1}, counts
            assert_poison_dead_lettered(cfg, vendor)
            assert_each_visitor_in_order(sb, vendor)
            assert_told_one_event(r.url, cfg, vendor)
            # Narrowed, not sent one by one: a handful of refused requests for 40 events.
            refused = records(sb, vendor, accepted=False)
            assert all(str(POISON) in orjson.dumps(rec["body"]).decode() for rec in refused)
            assert len(refused) <= 12, len(refused)
            assert any(len(product_ids(rec["body"])) > 1 for rec in records(sb, vendor))
        assert all(record["copies"] == 0 for record in records(sb, vendor))


@pytest.mark.parametrize(("vendor", "spool"), [("retailrocket", "sqlite"),
                                               ("retailrocket", "redis")])
def test_a_vendor_refusing_everything_stays_paused_and_nothing_is_dead_lettered(
        tmp_path: Path, prefix: str, vendor: str, spool: str) -> None:
    with sandbox() as sb:
        cfg = settings_for(tmp_path, sb, vendor, spool, prefix)
        fault(sb, vendor, kind="status", status=403)  # every request: the key is refused
        with relay(cfg, OPTIONS) as r:
            events = events_of(visitors=4, each=5)
            post(r.url, events)
            paused = wait_for(lambda: (p := ready(r.url)["paused_vendors"].get(
                f"shop/{vendor}")) and p["refuses"] == "everything" and p)
            assert paused["reason"].startswith("vendor refuses everything: HTTP 403")
            code, rows = vendors_status(cfg)
            assert code == 3 and rows[vendor]["state"] == "paused"
            assert rows[vendor]["reason"].startswith("vendor refuses everything")
            assert rows[vendor]["queued"] == 20 and rows[vendor]["dead"] == 0
            assert (f'shoprelay_vendor_refuses_everything{{site="shop",vendor="{vendor}"}} 1.0'
                    in metrics(r.url))
            # Probing with one event at a time, a different one each time.
            wait_for(lambda: len(records(sb, vendor, accepted=False)) >= 8)
            probes = records(sb, vendor, accepted=False)[-3:]
            assert all(len(product_ids(p["body"])) == 1 for p in probes)
            assert len({product_ids(p["body"])[0] for p in probes}) == 3
            assert dead_letters(cfg) == []
            clear_faults(sb, vendor)  # the key is fixed: everything goes, nothing is lost
            expected = {int(m["properties"]["product_id"]) for m in events}
            counts = wait_delivered(sb, vendor, expected)
            assert set(counts.values()) == {1}, counts
            state = wait_for(lambda: (s := ready(r.url)) and not s["paused_vendors"] and s)
            assert state["refused_events"] == {}
            assert_each_visitor_in_order(sb, vendor)
            code, rows = vendors_status(cfg)
            assert code == 0 and rows[vendor]["state"] == "delivering"
            assert rows[vendor]["reason"] is None
        assert dead_letters(cfg) == []
        assert delivered(sb, vendor) == counts


def test_an_order_line_the_firewall_refuses_is_dead_lettered_alone(tmp_path: Path,
                                                                    prefix: str) -> None:
    # Advisable takes an order's lines together ("/purchases/batch ... accepts an array as an
    # input"); the firewall refuses the one line naming the poisoned product. The order is the
    # only queued work, so the probe is its first line alone; the rest of the lines are then
    # narrowed, and only that line ends in the dead letter, as a part of the order.
    with sandbox() as sb:
        cfg = settings_for(tmp_path, sb, "advisable", "sqlite", prefix)
        fault(sb, "advisable", kind="waf", status=403, matches=[str(POISON)])
        lines = [11, 12, POISON, 14, 15, 16]
        order = {"type": "track", "event": "Order Completed", "messageId": "o1",
                 "anonymousId": "buyer", "userId": "u1",
                 "properties": {"order_id": "o-1", "total": 60, "currency": "USD",
                                "products": [{"product_id": p, "price": 10, "quantity": 1}
                                             for p in lines]}}
        with relay(cfg, OPTIONS) as r:
            post(r.url, [order])
            counts = wait_delivered(sb, "advisable", set(lines) - {POISON})
            [letter] = wait_for(lambda: dead_letters(cfg))
            assert set(counts) == set(lines) - {POISON} and set(counts.values()) == {1}
            assert letter.event.message_id == "o1" and letter.part == 2
            assert letter.status == 403 and "refused alone" in letter.error
            state = ready(r.url)
            assert state["paused_vendors"] == {}
            assert state["refused_events"]["shop/advisable"]["message_id"] == "o1"
        assert all(record["copies"] == 0 for record in records(sb, "advisable"))
