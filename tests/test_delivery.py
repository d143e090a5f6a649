"""Relay → vendor sandboxes over real HTTP: forwarding, dedup, resume after restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from relay_fixtures import WRITE_KEY, relay_stack, track
from servers import free_port, wait_for


def one_call_each(table: dict) -> None:
    """Retail Rocket batches into visitorEvents by default; these tests count its calls one
    request each (the batching has its own tests below)."""
    for site in table["sites"].values():
        site["vendors"]["retailrocket"]["visitor_events"] = False


#: The same for the settings files of test_delivery_support.
ONE_CALL_EACH = {"retailrocket": {"visitor_events": False}}


def post(url: str, batch: list[dict], cookies: dict | None = None) -> httpx.Response:
    answer = httpx.post(f"{url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY},
                        cookies=cookies)
    assert answer.status_code == 200, answer.text
    return answer


def test_events_are_forwarded_once_even_when_resent(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"], adjust=one_call_each) as stack:
        batch = [track("Product Viewed", "view-1", product_id=11),
                 track("Product List Viewed", "cat-1", category_id=7),
                 track("Products Searched", "search-1", query="boots"),
                 track("Product Added", "add-1", product_id=11),
                 track("Order Completed", "order-1", order_id="o-1",
                       products=[{"product_id": 11, "price": 5, "quantity": 1},
                                 {"product_id": 12, "price": 2.5, "quantity": 2}])]
        first = post(stack.relay_url, batch)
        post(stack.relay_url, batch, cookies=dict(first.cookies))  # a client retry
        stack.wait_received("retailrocket", 6)
        time.sleep(1.0)  # a duplicate would have been sent by now
        records = stack.received("retailrocket")
        paths = [r["path"].rsplit("/", 1)[-1] for r in records]
        assert paths == ["view", "categoryView", "search", "addToBasket", "order", "order"]
        assert stack.refused("retailrocket") == []


def test_undelivered_work_resumes_after_restart(tmp_path: Path) -> None:
    sandbox_port = free_port()
    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     sandbox_port=sandbox_port, adjust=one_call_each) as stack:
        post(stack.relay_url, [track("Product Viewed", f"v{i}", product_id=i) for i in range(5)])
        assert stack.received("retailrocket") == []
    # Same spool file, now with delivery running.
    with relay_stack(tmp_path, vendors=["retailrocket"], sandbox_port=sandbox_port,
                     adjust=one_call_each) as stack:
        records = stack.wait_received("retailrocket", 5)
        assert sorted(r["body"]["productId"] for r in records) == [0, 1, 2, 3, 4]


def test_a_refused_request_goes_to_the_dead_letter_with_its_reason(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"]) as stack:
        post(stack.relay_url, [track("Product Viewed", "bad-id", product_id="sku-x"),
                               track("Product Viewed", "good", product_id=3)])
        stack.wait_received("retailrocket", 1)
        spool = stack.app.state.spool

        def dead() -> list:
            return asyncio.run(spool.dead_letters(vendor="retailrocket"))

        [letter] = wait_for(dead)
        assert letter.event.message_id == "bad-id"
        assert "product_id must be an integer" in letter.error


def test_one_bad_order_line_is_dead_lettered_alone(tmp_path: Path) -> None:
    # Issue 13: "One bad line of an order does not sink the other lines for vendors that take
    # one call per line (Retail Rocket, Go Shops); the bad line is dead-lettered alone, with
    # the reason." Retail Rocket cannot be sent line 1 (its product ids are integers); Go
    # Shops takes it but refuses line 2 with a 400.
    with relay_stack(tmp_path, vendors=["retailrocket", "goshops"],
                     adjust=one_call_each) as stack:
        httpx.post(f"{stack.sandbox_url}/_sandbox/goshops/faults", json={
            "kind": "status", "status": 400, "matches": ['"item":"3"']}).raise_for_status()
        post(stack.relay_url, [
            track("Order Completed", "order-1", order_id="o-1", products=[
                {"product_id": 1, "price": 5}, {"product_id": "sku-x", "price": 2},
                {"product_id": 3, "price": 1}]),
            track("Product Viewed", "after", product_id=4)])
        rr = stack.wait_received("retailrocket", 3)
        assert [(r["path"].rsplit("/", 1)[-1], r["body"]["productId"]) for r in rr] == [
            ("order", 1), ("order", 3), ("view", 4)]
        gs = stack.wait_received("goshops", 3)
        assert [r["body"]["data"]["item"] for r in gs] == ["1", "sku-x", "4"]
        spool = stack.app.state.spool

        def letters(vendor: str) -> list:
            return asyncio.run(spool.dead_letters(vendor=vendor))

        [rr_line] = wait_for(lambda: letters("retailrocket"))
        assert (rr_line.event.message_id, rr_line.part) == ("order-1", 1)
        assert "products[1]" in rr_line.error and "product_id" in rr_line.error
        [gs_line] = wait_for(lambda: letters("goshops"))
        assert (gs_line.event.message_id, gs_line.part, gs_line.status) == ("order-1", 2, 400)
        assert '"item":"3"' in gs_line.request.replace(" ", "")
        [record] = asyncio.run(spool.find_messages("demo", message_id="order-1"))
        assert record.work["goshops"].state == "delivered"
        assert record.work["goshops"].parts[2].state == "dead"

        # Replayed once the vendor takes it: that line alone is sent, nothing else again.
        httpx.delete(f"{stack.sandbox_url}/_sandbox/goshops/faults").raise_for_status()
        assert asyncio.run(spool.replay(vendor="goshops")) == 1
        gs = stack.wait_received("goshops", 4)
        time.sleep(0.5)
        assert [r["body"]["data"]["item"] for r in stack.received("goshops")] == [
            "1", "sku-x", "4", "3"]
        assert letters("goshops") == []
        # Retail Rocket's letter cannot be fixed by a replay: it comes back with its reason.
        assert asyncio.run(spool.replay(vendor="retailrocket")) == 1
        [again] = wait_for(lambda: letters("retailrocket"))
        assert again.part == 1 and "products[1]" in again.error
        assert len(stack.received("retailrocket")) == 3


# ---- batching, order, dead letters, limits, retention (issue 4) ------------------------------

def _support():  # imported late: keeps this module's original tests independent of it
    import test_delivery_support

    return test_delivery_support


def test_per_visitor_order_holds_under_retries(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["retailrocket"], overrides=ONE_CALL_EACH)
        s.fault(sb, "retailrocket", kind="status", status=503, count=12)
        with s.relay(cfg) as r:
            for start in range(0, 40, 8):
                s.post(r.url, [s.view(i, visitor=f"v{i % 4}") for i in range(start, start + 8)])
            s.wait_delivered(sb, "retailrocket", set(range(40)))
        by_visitor: dict[str, list[int]] = {}
        for record in s.records(sb, "retailrocket"):
            by_visitor.setdefault(record["body"]["sessionExternalId"], []).append(
                record["body"]["productId"])
        assert len(by_visitor) == 4
        for products in by_visitor.values():
            assert products == sorted(products) and len(products) == 10


def test_retail_rocket_visitor_events_batches_keep_the_visitors_order(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["retailrocket"],
                               overrides={"retailrocket": {"visitor_events": True,
                                                           "batch_size": 4}})
        # The first batch is slow: later events must wait behind it, not overtake it.
        s.fault(sb, "retailrocket", kind="delay", hang_seconds=1, count=1)
        order = {"type": "track", "event": "Order Completed", "messageId": "o1",
                 "anonymousId": "ann",
                 "properties": {"order_id": "o1", "products": [
                     {"product_id": 100, "price": 1, "quantity": 1},
                     {"product_id": 101, "price": 2, "quantity": 1}]}}
        login = {"type": "identify", "messageId": "id1", "anonymousId": "ann",
                 "userId": "u42", "traits": {"email": "a@example.com"}}
        with s.relay(cfg) as r:
            s.post(r.url, [s.view(i, visitor="ann") for i in range(3)])
            s.post(r.url, [order, login, s.view(3, visitor="ann")])
            s.post(r.url, [s.view(i, visitor="ann") for i in range(4, 9)])
            wait_for(lambda: len(s.delivered(sb, "retailrocket")) == 11, timeout=20)
        recs = s.records(sb, "retailrocket")
        assert s.records(sb, "retailrocket", accepted=False) == []
        sequence: list[str] = []
        for rec in recs:
            method = rec["path"].rsplit("/", 1)[-1]
            if method == "visitorEvents":
                assert 1 <= len(rec["body"]) <= 4
                for envelope in rec["body"]:
                    (kind, body), = envelope.items()
                    sequence.append(f"{kind}:{body.get('productId', '')}")
            else:
                sequence.append(f"{method}:{rec['body'].get('productId', '')}")
        assert sequence == ["view:0", "view:1", "view:2", "order:100", "order:101",
                            "setContact:", "view:3", "view:4", "view:5", "view:6", "view:7",
                            "view:8"]
        assert any(rec["path"].endswith("visitorEvents") for rec in recs)


def test_alana_batches_up_to_100_events_a_request(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["alana"])
        with s.relay(cfg, forward=False) as r:  # store only: the work piles up
            for start in range(0, 250, 50):
                s.post(r.url, [s.view(i, visitor=f"v{i % 9}") for i in range(start, start + 50)])
        with s.relay(cfg):
            counts = s.wait_delivered(sb, "alana", set(range(250)))
        assert sorted(counts.values()) == [1] * 250
        sizes = [len(rec["body"]["events"]) for rec in s.records(sb, "alana")]
        assert sizes == [100, 100, 50]


def test_advisable_sends_an_orders_lines_in_one_batch_request(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["advisable"])
        order = {"type": "track", "event": "Order Completed", "messageId": "o1",
                 "properties": {"order_id": "o1", "currency": "USD", "products": [
                     {"product_id": i, "price": 5, "quantity": 1} for i in range(3)]}}
        with s.relay(cfg) as r:
            s.post(r.url, [order])
            [rec] = s.wait_delivered(sb, "advisable", {0, 1, 2}) and s.records(sb, "advisable")
        assert rec["path"].endswith("/purchases/batch") and len(rec["body"]) == 3


def test_a_refused_batch_is_resent_one_by_one(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["alana"])
        with s.relay(cfg, forward=False) as r:
            s.post(r.url, [s.view(i, visitor=f"v{i}") for i in range(5)])
        s.fault(sb, "alana", kind="status", status=400, count=1)
        with s.relay(cfg):
            counts = s.wait_delivered(sb, "alana", set(range(5)))
        assert sorted(counts.values()) == [1] * 5
        assert [len(r["body"]["events"]) for r in s.records(sb, "alana", accepted=None)] == \
            [5, 1, 1, 1, 1, 1]


def test_a_4xx_goes_to_the_dead_letter_at_once_with_status_request_and_answer(
        tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["retailrocket"], overrides=ONE_CALL_EACH)
        s.fault(sb, "retailrocket", kind="status", status=422, count=1)
        with s.relay(cfg) as r:
            s.post(r.url, [s.view(1, visitor="a"), s.view(2, visitor="a")])
            s.wait_delivered(sb, "retailrocket", {2})
            spool = r.app.state.spool
            [letter] = wait_for(lambda: asyncio.run(spool.dead_letters()))
        assert letter.event.message_id == "m1" and letter.status == 422
        assert letter.attempts == 1 and "injected fault" in letter.response
        assert letter.request.startswith("POST ") and "apiKey=***" in letter.request
        assert "sandbox-key" not in letter.request


def test_work_older_than_the_max_age_goes_to_the_dead_letter(tmp_path: Path) -> None:
    from shoprelay.delivery.forwarder import DeliveryOptions

    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["goshops"])
        s.fault(sb, "goshops", kind="status", status=503)  # down until cleared
        options = DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=0.4, max_age=1.0)
        with s.relay(cfg, options) as r:
            s.post(r.url, [s.view(1, visitor="a")])
            spool = r.app.state.spool
            [letter] = wait_for(lambda: asyncio.run(spool.dead_letters()), timeout=10)
        assert "max age" in letter.error and "HTTP 503" in letter.error
        assert s.delivered(sb, "goshops") == {}


def test_finished_work_is_pruned_and_the_spool_size_reported(tmp_path: Path) -> None:
    s = _support()
    with s.sandbox() as sb:
        cfg = s.write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                               vendors=["goshops", "retailrocket"],
                               overrides={"retailrocket": {"base_url": "http://127.0.0.1:9/x"}})
        with s.relay(cfg) as r:
            s.post(r.url, [s.view(i, visitor="a") for i in range(5)])
            s.wait_delivered(sb, "goshops", set(range(5)))
            spool = r.app.state.spool
            wait_for(lambda: asyncio.run(spool.stats()).counts["goshops"].get("delivered") == 5)
            stats = asyncio.run(spool.stats())
            assert stats.file_bytes > 0 and stats.messages == 5
            assert stats.counts["retailrocket"]["queued"] == 5
            assert "retailrocket" in stats.oldest_queued
            # Retention now: delivered work goes; queued work and its messages stay.
            assert asyncio.run(spool.prune(time.time() + 1)) == 5
            stats = asyncio.run(spool.stats())
            assert "delivered" not in stats.counts.get("goshops", {})
            assert stats.messages == 5 and stats.counts["retailrocket"]["queued"] == 5
            summary = stats.summary(time.time())
            assert "retailrocket: 5 queued" in summary


def test_limiter_holds_any_window_whatever_the_latency() -> None:
    """N+1 requests never arrive within one window, even when a slow request is followed by
    fast ones (arrival = a random point between start and answer)."""
    import random

    from shoprelay.delivery.limits import SlidingWindowLimiter

    rng = random.Random(4)
    limiter = SlidingWindowLimiter(5, 0.3)
    arrivals: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        start = time.monotonic()
        latency = rng.choice([0.0, 0.001, 0.08])
        await asyncio.sleep(latency)
        arrivals.append(start + rng.random() * (time.monotonic() - start))
        limiter.release()

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(25)))

    asyncio.run(main())
    arrivals.sort()
    for i, t in enumerate(arrivals):
        assert sum(1 for u in arrivals[i:] if u < t + 0.3) <= 5


def test_a_backlog_is_paced_not_sent_in_bursts() -> None:
    """Issue 15: "each vendor's limit used at >= 95 %". A sliding log alone drains a backlog
    in bursts of N, then a window of nothing; a vendor counting its own windows then sees some
    half empty. Starts are paced one window/N apart after a small burst; never earlier."""
    from shoprelay.delivery.limits import SlidingWindowLimiter

    limiter = SlidingWindowLimiter(20, 0.4)          # 20 per 0.4 s: one start every 20 ms
    starts: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        starts.append(time.monotonic())
        limiter.release()

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(30)))

    asyncio.run(main())
    burst = round((limiter.tolerance + limiter.interval) / limiter.interval)
    assert burst == 2 and limiter.interval == 0.02
    for k, start in enumerate(starts):
        assert start >= starts[0] + (k - burst + 1) * limiter.interval - 0.002, k
    # ...and the log still holds: no window holds more than the limit.
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 0.4) <= 20


def test_two_sites_with_one_key_share_its_limits() -> None:
    from shoprelay.delivery.forwarder import Forwarder
    from shoprelay.vendors import VENDORS
    from shoprelay.vendors.alana import AlanaConfig

    class NoSpool:
        on_new_work = None

    alana = VENDORS["alana"]
    targets = [("a", alana, AlanaConfig(api_key="k1")), ("b", alana, AlanaConfig(api_key="k1")),
               ("c", alana, AlanaConfig(api_key="k2"))]
    forwarder = Forwarder(NoSpool(), targets)  # type: ignore[arg-type]
    a, b, c = (w.limiters for w in forwarder.workers)
    assert [x.requests for x in a] == [1000, 100]
    assert a[0] is b[0] and a[1] is b[1] and a[0] is not c[0]
    asyncio.run(forwarder.client.aclose())
