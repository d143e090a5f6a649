"""`shoprelay backfill` over real HTTP: a vendor added after a shopper session gets the calls it
would have got live, in order and once; beside live traffic it keeps to its share of the limit.

The reference for "what it would have got live" is the same session sent to a second relay
that had the vendor from the start (same secret, so the same visitor ids), counted at the same
kind of sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from servers import wait_for
from test_delivery_support import (
    post,
    product_ids,
    records,
    relay,
    sandbox,
    view,
    write_settings,
)

TARGET = "retailrocket"
ONE_CALL_PER_EVENT = {TARGET: {"visitor_events": False}}


def shoprelay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoprelay", *args], capture_output=True,
                          text=True, timeout=timeout)


def session() -> list[list[dict[str, Any]]]:
    """A shopper's visit as the tracker would send it, in requests, with fixed timestamps:
    views, a cart, an identify, an order, and one view sent with marketing refused."""
    def at(second: int) -> str:
        return f"2026-12-01T10:00:{second:02d}.000Z"

    refused = view(5, visitor="anon-1")
    refused["context"] = {"consent": {"marketing": False}}
    return [
        [dict(view(1, visitor="anon-1"), timestamp=at(1)),
         dict(view(2, visitor="anon-1"), timestamp=at(2))],
        [{"type": "track", "event": "Product Added", "messageId": "add-3",
          "anonymousId": "anon-1", "timestamp": at(3),
          "properties": {"product_id": 3, "price": 20, "quantity": 2, "currency": "USD"}}],
        [dict(refused, timestamp=at(4))],
        [{"type": "identify", "messageId": "id-1", "anonymousId": "anon-1", "userId": "u-7",
          "timestamp": at(5), "traits": {"email": "ann@example.com"}}],
        [{"type": "track", "event": "Order Completed", "messageId": "order-1",
          "anonymousId": "anon-1", "userId": "u-7", "timestamp": at(6),
          "properties": {"order_id": "A-1", "total": 40, "currency": "USD",
                         "products": [{"product_id": 3, "price": 20, "quantity": 2}]}}],
        [dict(view(6, visitor="anon-2"), timestamp=at(7))],
    ]


def calls(sandbox_url: str) -> list[tuple[str, str, Any, Any]]:
    return [(r["method"], r["path"], r["query"], r["body"]) for r in records(sandbox_url, TARGET)]


def per_visitor(found: list[tuple[str, str, Any, Any]]) -> dict[str, list[Any]]:
    """Retail Rocket names the visitor in every call (`sessionExternalId`, or the batch's)."""
    out: dict[str, list[Any]] = {}
    for call in found:
        body = call[3] if isinstance(call[3], dict) else {}
        out.setdefault(str(body.get("sessionExternalId", body.get("session", ""))),
                       []).append(call)
    return out


def test_a_vendor_added_later_gets_by_backfill_what_it_would_have_got_live(
        tmp_path: Path) -> None:
    with sandbox() as live_sb:
        # One call per event: how Retail Rocket's visitorEvents batches fill depends on
        # timing (what a delivery round holds), live and in a backfill alike.
        reference_cfg = write_settings(tmp_path / "ref.toml", spool=tmp_path / "ref.db",
                                       sandbox_url=live_sb, vendors=["goshops", TARGET],
                                       overrides=ONE_CALL_PER_EVENT)
        with relay(reference_cfg) as r:
            for batch in session():
                post(r.url, batch)
            expected_count = 5  # views 1, 2, 6, the cart add and the order: not the refused
            wait_for(lambda: sum(len(product_ids(c[3])) or 1 for c in calls(live_sb))
                     >= expected_count, timeout=30)
            time.sleep(0.5)  # nothing more is coming: identify and the refused view are not
            expected = calls(live_sb)
    assert expected, "the reference relay sent the target nothing"

    with sandbox() as sb:
        before = write_settings(tmp_path / "before.toml", spool=tmp_path / "spool.db",
                                sandbox_url=sb, vendors=["goshops"])
        with relay(before) as r:
            for batch in session():
                post(r.url, batch)
            wait_for(lambda: len(records(sb, "goshops")) >= 1, timeout=30)
        assert calls(sb) == []
        after = write_settings(tmp_path / "after.toml", spool=tmp_path / "spool.db",
                               sandbox_url=sb, vendors=["goshops", TARGET],
                               overrides=ONE_CALL_PER_EVENT)

        dry = shoprelay("backfill", "--config", str(after), "--vendor", TARGET,
                        "--since", "2020-01-01T00:00:00Z", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "older than the retention window" in dry.stderr
        assert "Product Viewed: 3" in dry.stdout and "Order Completed: 1" in dry.stdout
        assert "sample request" in dry.stdout
        assert calls(sb) == []  # a dry run sends nothing

        since = "2026-01-01T00:00:00Z"
        first = shoprelay("backfill", "--config", str(after), "--vendor", TARGET,
                          "--since", since)
        assert first.returncode == 0, first.stderr
        assert "events" in first.stderr and "left" in first.stderr  # the progress bar
        got = calls(sb)
        # The same calls and bodies as live, each visitor's in the same order (visitors are
        # sent side by side, live and in a backfill alike).
        assert sorted(map(repr, got)) == sorted(map(repr, expected))
        assert per_visitor(got) == per_visitor(expected)
        again = shoprelay("backfill", "--config", str(after), "--vendor", TARGET,
                          "--since", since)
        assert again.returncode == 0, again.stderr
        assert "sent 0 event(s)" in again.stdout
        assert calls(sb) == got  # nothing new

        # The trace tells the backfilled delivery like a live one.
        traced = shoprelay("trace", "--config", str(after), "m1", "--json")
        [trace] = orjson.loads(traced.stdout)
        assert trace["vendors"][TARGET]["outcome"] == "sent"
        assert trace["vendors"][TARGET]["status"] == 200


def test_backfill_beside_live_traffic_keeps_its_share_and_live_keeps_flowing(
        tmp_path: Path) -> None:
    limit, share = 10, 0.5
    overrides = {"goshops": {"rate_limit_per_second": limit}}
    with sandbox() as sb:
        before = write_settings(tmp_path / "before.toml", spool=tmp_path / "spool.db",
                                sandbox_url=sb, vendors=["advisable"])
        with relay(before) as r:
            post(r.url, [view(i, visitor=f"v{i % 5}") for i in range(1, 31)])
        after = write_settings(tmp_path / "after.toml", spool=tmp_path / "spool.db",
                               sandbox_url=sb, vendors=["advisable", "goshops"],
                               overrides=overrides)
        with relay(after) as r:
            live_ids = list(range(1001, 1021))
            stop = threading.Event()

            def live() -> None:
                for i in live_ids:
                    if stop.is_set():
                        return
                    post(r.url, [view(i, visitor=f"live{i % 3}")])
                    time.sleep(0.1)

            thread = threading.Thread(target=live)
            thread.start()
            try:
                done = shoprelay("backfill", "--config", str(after), "--vendor", "goshops",
                                 "--since", "2026-01-01T00:00:00Z", "--share", str(share))
            finally:
                stop.set()
                thread.join(timeout=30)
            assert done.returncode == 0, done.stderr
            assert "sent 30 event(s)" in done.stdout
            wait_for(lambda: set(live_ids) <= {i for rec in records(sb, "goshops")
                                               for i in product_ids(rec["body"])}, timeout=30)
        got = records(sb, "goshops")
        backfill_times = sorted(rec["at"] for rec in got
                                if any(i < 1000 for i in product_ids(rec["body"])))
        assert sorted(i for rec in got for i in product_ids(rec["body"]) if i < 1000) == list(
            range(1, 31))
        # Never more than its share of the limit in any second (0.9 s: arrival jitter).
        allowed = int(limit * share)
        busiest = max(sum(1 for t in backfill_times if start <= t < start + 0.9)
                      for start in backfill_times)
        assert busiest <= allowed, (busiest, backfill_times)
        # The live events kept flowing: every one arrived, none twice.
        live_seen = [i for rec in got for i in product_ids(rec["body"]) if i > 1000]
        assert sorted(live_seen) == live_ids
