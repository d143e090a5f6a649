"""RedisSpool against the real Redis at 127.0.0.1:6379: ingest (dedup, order dedup, the state
fold under concurrent ingest from two tasks and two processes), due/park/retry/dead/replay,
takeover of a dead process's entries after its lease expired, retention, the shared limiter.

Each test uses its own key prefix and deletes only its own keys at the end."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shoprelay.delivery.shared_limits import RedisWindowLimiter
from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.rules import RequestContext
from shoprelay.spool.redis import RedisSpool

#: The Redis .ci/redis makes sure answers (SHOPRELAY_TEST_REDIS_PORT, default 6379).
URL = f"redis://127.0.0.1:{os.environ.get('SHOPRELAY_TEST_REDIS_PORT', '6379')}/0"
COOKIE = VisitorCookie("redis-test-secret-0123456789")


def route_all(event: Any) -> list[str]:
    return ["goshops", "alana"]


def make(prefix: str, **options: Any) -> RedisSpool:
    options.setdefault("router", route_all)
    options.setdefault("partitions", 4)
    options.setdefault("lease_seconds", 1.0)
    return RedisSpool(URL, prefix=prefix, alias_for=COOKIE.visitor_for_anonymous_id,
                      new_id=new_visitor_id, **options)


def run(make_coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make_coro())  # type: ignore[arg-type]


def view(i: int, visitor: str = "a", **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "messageId": f"m{i}",
            "anonymousId": visitor, "properties": {"product_id": i, **props}}


def added(i: int, visitor: str) -> dict[str, Any]:
    return {"type": "track", "event": "Product Added", "messageId": f"add{i}",
            "anonymousId": visitor,
            "properties": {"product_id": str(i), "price": 1, "quantity": 1}}


CTX = RequestContext(ip="10.0.0.1", user_agent="UA", source="browser")


def test_dedup_on_message_id_and_order_id(prefix: str) -> None:
    async def scenario() -> None:
        spool = make(prefix)
        try:
            first = await spool.ingest("s", [view(1), view(2), view(1)], CTX)
            assert (first.stored, first.duplicates) == (2, 1)
            again = await spool.ingest("s", [view(2), view(3)], CTX)
            assert (again.stored, again.duplicates) == (1, 1)
            assert again.visitor_id == first.visitor_id  # the anonymousId's alias
            order = {"type": "track", "event": "Order Completed", "messageId": "o-browser",
                     "anonymousId": "a", "properties": {"order_id": "42", "total": 5}}
            server = dict(order, messageId="o-server")
            one = await spool.ingest("s", [order], CTX)
            two = await spool.ingest("s", [server], CTX)
            assert (one.stored, two.stored, two.duplicates) == (1, 0, 1)
            # Another site has its own dedup.
            other = await spool.ingest("t", [view(1)], CTX)
            assert other.stored == 1
            rows = await spool.due("s", "goshops", time.time(), 100)
            assert [r.event.message_id for r in rows] == ["m1", "m2", "m3", "o-browser"]
            stats = await spool.stats()
            # Per vendor over all sites (as SQLite): 4 for s, 1 for t.
            assert stats.counts["goshops"]["queued"] == 5 and stats.messages == 5
        finally:
            await spool.aclose()

    run(scenario)


def test_state_fold_under_concurrent_ingest_from_two_tasks(prefix: str) -> None:
    """Two spools (two connections, as two processes) add 40 products to one visitor's cart
    at once: no cart line is lost."""
    async def scenario() -> None:
        a, b = make(prefix), make(prefix)
        try:
            async def feed(spool: RedisSpool, numbers: range) -> None:
                for i in numbers:
                    await spool.ingest("s", [added(i, "shopper")], CTX)

            await asyncio.gather(feed(a, range(0, 40, 2)), feed(b, range(1, 40, 2)),
                                 feed(a, range(40, 60)))
            rows = await a.due("s", "goshops", time.time(), 500)
            assert len(rows) == 60
            last = max(rows, key=lambda r: r.id)
            carts = [len(r.event.enrichment.cart) for r in rows]
            # Each event saw the cart as it was after the previous one: 1, 2, …, 60.
            assert sorted(carts) == list(range(1, 61))
            assert len(last.event.enrichment.cart) == 60 or max(carts) == 60
        finally:
            await a.aclose()
            await b.aclose()

    run(scenario)


def _ingest_in_process(prefix: str, numbers: list[int]) -> None:
    async def go() -> None:
        spool = make(prefix)
        for i in numbers:
            await spool.ingest("s", [added(i, "shopper")], CTX)
        await spool.aclose()

    asyncio.run(go())


def test_state_fold_under_concurrent_ingest_from_two_processes(prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_ingest_in_process, args=(prefix, list(range(k, 50, 2))))
             for k in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    async def check() -> None:
        spool = make(prefix)
        try:
            rows = await spool.due("s", "goshops", time.time(), 500)
            carts = sorted(len(r.event.enrichment.cart) for r in rows)
            assert carts == list(range(1, 51))
        finally:
            await spool.aclose()

    run(check)


def test_due_parks_a_visitor_behind_its_retry_then_dead_letter_and_replay(prefix: str) -> None:
    async def scenario() -> None:
        spool = make(prefix, router=lambda e: ["goshops"])
        try:
            await spool.ingest("s", [view(1, "a"), view(2, "a"), view(3, "b")], CTX)
            now = time.time()
            rows = await spool.due("s", "goshops", now, 10)
            assert [r.event.message_id for r in rows] == ["m1", "m2", "m3"]
            by = {r.event.message_id: r for r in rows}
            await spool.mark_retry([by["m1"].id], next_at=now + 60, status=503, error="down")
            await spool.mark_done([by["m3"].id])
            # a's later event waits behind its retry; b is done.
            assert await spool.due("s", "goshops", now + 1, 10) == []
            later = await spool.due("s", "goshops", now + 61, 10)
            assert [(r.event.message_id, r.attempts, r.error) for r in later] == [
                ("m1", 1, "down"), ("m2", 0, "")]
            await spool.mark_progress(later[0].id, 1)
            await spool.mark_dead([later[0].id], status=400, error="bad", response="no",
                                  request="POST /x")
            await spool.mark_done([later[1].id])
            letters = await spool.dead_letters()
            assert [(d.vendor, d.event.message_id, d.status, d.attempts, d.request)
                    for d in letters] == [("goshops", "m1", 400, 2, "POST /x")]
            assert await spool.dead_letters(vendor="alana") == []
            stats = await spool.stats()
            assert stats.counts["goshops"] == {"queued": 0, "delivered": 2, "dead": 1}
            assert await spool.replay(dead_id=letters[0].id) == 1
            assert await spool.dead_letters() == []
            again = await spool.due("s", "goshops", time.time(), 10)
            assert [(r.event.message_id, r.attempts, r.sent) for r in again] == [("m1", 0, 0)]
        finally:
            await spool.aclose()

    run(scenario)


def test_a_dead_processes_entries_are_taken_over_after_its_lease(prefix: str) -> None:
    """Process A reads work and dies (no close: its lease just expires). B takes the
    partitions after the lease time and gets A's unacknowledged entries first, in order,
    with their retry state; nothing A acknowledged comes back."""
    async def scenario() -> None:
        a = make(prefix, router=lambda e: ["goshops"], partitions=2)
        b = make(prefix, router=lambda e: ["goshops"], partitions=2)
        try:
            await a.ingest("s", [view(i, f"v{i % 3}") for i in range(6)], CTX)
            rows = await a.due("s", "goshops", time.time(), 100)
            assert len(rows) == 6
            done = [r for r in rows if r.event.message_id in ("m0", "m1")]
            await a.mark_done([r.id for r in done])
            retry = next(r for r in rows if r.event.message_id == "m2")
            await a.mark_retry([retry.id], next_at=0, status=503, error="boom")
            for task in a._tasks:  # "SIGKILL": heartbeats and lease renewals stop
                task.cancel()
            await b.ingest("s", [view(9, "v0")], CTX)
            assert await b.due("s", "goshops", time.time(), 100) == []  # A's leases hold
            deadline = time.monotonic() + 15
            got: list[Any] = []
            while time.monotonic() < deadline and len(got) < 5:
                await asyncio.sleep(0.2)
                got = await b.due("s", "goshops", time.time(), 100)
            ids = [r.event.message_id for r in got]
            assert sorted(ids) == ["m2", "m3", "m4", "m5", "m9"]
            assert ids.index("m3") < ids.index("m9")  # v0: m3 (A's) before m9 (new)
            assert next(r for r in got if r.event.message_id == "m2").attempts == 1
        finally:
            await a.redis.aclose()
            await b.aclose()

    run(scenario)


def test_two_live_processes_share_the_partitions(prefix: str) -> None:
    async def scenario() -> None:
        a = make(prefix, partitions=8)
        b = make(prefix, partitions=8)
        try:
            await a.ingest("s", [view(i, f"v{i}") for i in range(40)], CTX)
            first = await a.due("s", "goshops", time.time(), 500)
            assert len(first) == 40  # alone, A holds everything
            await b.due("s", "goshops", time.time(), 500)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                held_a = len(a._queues[("s", "goshops")].held)
                held_b = len(b._queues[("s", "goshops")].held)
                if (held_a, held_b) == (4, 4):
                    break
                await asyncio.sleep(0.2)
                await a.due("s", "goshops", time.time(), 500)
                await b.due("s", "goshops", time.time(), 500)
            assert (held_a, held_b) == (4, 4)
            # What A handed over (read, not acknowledged) went to B: together, still 40.
            rows_a = await a.due("s", "goshops", time.time(), 500)
            rows_b = await b.due("s", "goshops", time.time(), 500)
            assert sorted(r.id for r in rows_a + rows_b) == sorted(r.id for r in first)
        finally:
            await a.aclose()
            await b.aclose()

    run(scenario)


def test_retention_trims_only_finished_entries(prefix: str) -> None:
    async def scenario() -> None:
        spool = make(prefix, router=lambda e: ["goshops"], partitions=1)
        try:
            await spool.ingest("s", [view(i, "a") for i in range(5)], CTX)
            rows = await spool.due("s", "goshops", time.time(), 100)
            await spool.mark_done([rows[0].id, rows[1].id])
            await spool.mark_retry([rows[2].id], next_at=0, status=500, error="x")
            await spool.mark_dead([rows[3].id], status=400, error="bad")
            stream = spool.stream_key("s", "goshops", 0)
            assert await spool.redis.xlen(stream) == 5
            removed = await spool.prune(time.time() + 10)
            # m0 and m1 are gone; m2 is pending (a retry) so nothing from it on is trimmed
            # (m3 is finished but behind it); the dead letter older than the cutoff is dropped.
            assert await spool.redis.xlen(stream) == 3
            assert removed == 3 and await spool.dead_letters() == []
            left = await spool.due("s", "goshops", time.time(), 100)
            assert [r.event.message_id for r in left] == ["m2", "m4"]
            assert await spool.prune(time.time() - 3600) == 0  # nothing that old
        finally:
            await spool.aclose()

    run(scenario)


def test_a_stream_of_the_layout_before_drains_first_then_goes(prefix: str) -> None:
    """Work queued by a relay before one entry per message (a (site, vendor) stream, entries
    without a vendor list) is delivered before newer work of the same partition, and its
    stream is deleted once drained."""
    async def scenario() -> None:
        spool = make(prefix, router=lambda e: ["goshops"], partitions=1)
        redis = spool.redis
        try:
            await spool.ingest("s", [view(1)], CTX)
            # Rewrite m1's entry as the code before 2026-12-03 wrote it.
            stream = spool.stream_key("s", "goshops", 0)
            [(entry_id, fields)] = await redis.xrange(stream)
            old = f"{prefix}q:s:goshops:p0"
            await redis.xadd(old, {k: v for k, v in fields.items() if k != "d"})
            await redis.xgroup_create(old, "goshops", id="0")
            await redis.sadd(f"{prefix}queues", old)
            await redis.xdel(stream, entry_id)
            await redis.hincrby(f"{prefix}queued", "s|goshops", -1)
            await spool.ingest("s", [view(2)], CTX)
            assert (await spool.stats()).counts["goshops"]["queued"] == 2
            rows: list[Any] = []
            for _ in range(5):
                rows = await spool.due("s", "goshops", time.time(), 100)
                if len(rows) == 2:
                    break
            assert [r.event.message_id for r in rows] == ["m1", "m2"]
            await spool.mark_done([r.id for r in rows])
            for _ in range(3):
                assert await spool.due("s", "goshops", time.time(), 100) == []
            assert not await redis.exists(old)
            assert (await spool.stats()).counts["goshops"]["queued"] == 0
        finally:
            await spool.aclose()

    run(scenario)


def test_shared_limiter_holds_across_two_clients(prefix: str) -> None:
    """Two limiters on one key (two processes): at most 10 starts in any 0.5 s window."""
    async def scenario() -> None:
        import redis.asyncio as aioredis

        clients = [aioredis.Redis.from_url(URL), aioredis.Redis.from_url(URL)]
        limiters = [RedisWindowLimiter(c, prefix + "rl:test", 10, 0.5) for c in clients]
        starts: list[float] = []

        async def request(limiter: RedisWindowLimiter) -> None:
            await limiter.acquire()
            starts.append(time.monotonic())
            await asyncio.sleep(0.01)
            limiter.release()

        try:
            await asyncio.gather(*(request(limiters[i % 2]) for i in range(40)))
            await asyncio.sleep(0.05)
            starts.sort()
            worst = max(sum(1 for t in starts[i:] if t < s + 0.5) for i, s in
                        enumerate(starts))
            assert worst <= 10
            assert starts[-1] - starts[0] >= 1.5  # 40 requests need at least 3 more windows
            limiters[0].block_for(0.3)
            await asyncio.sleep(0.05)
            begin = time.monotonic()
            await request(limiters[1])  # the other "process" honours the block too
            assert time.monotonic() - begin >= 0.2
        finally:
            for client in clients:
                await client.aclose()

    run(scenario)


def test_settings_check_the_redis_keys() -> None:
    from shoprelay.settings import SettingsError, parse

    def relay(**extra: Any) -> dict[str, Any]:
        return {"relay": {"secret": "x" * 20, **extra},
                "sites": {"s": {"write_key": "pk_s"}}}

    ok = parse(relay(spool="redis://10.0.0.5:6379/2", redis_prefix="a:", redis_partitions=16),
               env={})
    assert (ok.relay.redis_prefix, ok.relay.redis_partitions) == ("a:", 16)
    with pytest.raises(SettingsError) as caught:
        parse(relay(spool="redis://:6379/zero", redis_partitions=0, redis_prefix="",
                    redis_lease_seconds=0.1), env={})
    keys = sorted(p.key for p in caught.value.problems)
    assert keys == ["relay.redis_lease_seconds", "relay.redis_partitions", "relay.redis_prefix",
                    "relay.spool"]


def test_a_redis_password_never_reaches_the_log() -> None:
    from shoprelay.runtime import redacted

    assert redacted("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert redacted("rediss://user:pw@host/1") == "rediss://user:***@host/1"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
