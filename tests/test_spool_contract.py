"""One contract for every spool backend: each case runs on SQLite (a real file) and on the real
Redis (127.0.0.1:6379 unless SHOPRELAY_TEST_REDIS_PORT says), as Starlette runs its tests on
each async backend. A rule of ingest lives once, in `shoprelay.rules`; these cases prove
that both backends store what the rules decide, atomically, and hand the work out in each
visitor's order."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.rules import RequestContext
from shoprelay.spool.base import (
    DEAD,
    DELIVERED,
    EXCHANGE_CHARS,
    FIGURE_HOUR,
    FIGURE_MINUTE,
    LETTER_ANSWER_CHARS,
    LetterFilter,
    Retention,
    Spool,
)
from shoprelay.spool.redis import RedisSpool
from shoprelay.spool.sqlite import SqliteSpool

#: The Redis .ci/redis makes sure answers (SHOPRELAY_TEST_REDIS_PORT, default 6379).
REDIS_PORT = int(os.environ.get("SHOPRELAY_TEST_REDIS_PORT", "6379"))
URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
COOKIE = VisitorCookie("contract-test-secret-0123456789")
BROWSER = RequestContext(ip="10.0.0.1", user_agent="UA")


def route_all(event: Any) -> list[str]:
    return ["goshops", "alana"]


class Backend:
    """Makes spools of one kind over one store, and looks at the store from outside."""

    def __init__(self, kind: str, tmp_path: Path, prefix: str) -> None:
        self.kind, self.path, self.prefix = kind, str(tmp_path / "spool.db"), prefix

    def make(self, **options: Any) -> Spool:
        options.setdefault("router", route_all)
        common = {"alias_for": COOKIE.visitor_for_anonymous_id, "new_id": new_visitor_id}
        if self.kind == "sqlite":
            spool: Spool = SqliteSpool(self.path, sync="normal", **common, **options)
        else:
            spool = RedisSpool(URL, prefix=self.prefix, partitions=2, lease_seconds=5.0,
                               **common, **options)
        spool.start()
        return spool

    def visible_work(self) -> int:
        """Queued work as a second, independent connection sees it right now."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                # Common-path work: one `work` row per message, a bit per vendor owed;
                # retried, half-sent or replayed work: its own `outbox` row.
                owed = sum(bin(r[0]).count("1") for r in conn.execute("SELECT owed FROM work"))
                return owed + int(conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 0")
                                  .fetchone()[0])
            finally:
                conn.close()
        client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, decode_responses=True)
        try:
            # The `queued` counter (per SITE|VENDOR, see `spool.redis.keys`), not a SCAN of
            # the streams: a SCAN walks the whole shared keyspace and blocks the event loop
            # that calls this from `on_new_work`.
            counts = client.hvals(f"{self.prefix}queued")
            return sum(max(0, int(n)) for n in counts)
        finally:
            client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[Backend]:
    yield Backend(request.param, tmp_path, prefix)


def run(backend: Backend, scenario: Callable[[Spool], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        spool = backend.make(**options)
        try:
            await scenario(spool)
        finally:
            await spool.aclose()

    asyncio.run(main())


def track(event: str, message_id: str, anonymous_id: str | None = "a",
          **props: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "messageId": message_id,
                               "properties": props}
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    return message


def view(i: int, anonymous_id: str = "a") -> dict[str, Any]:
    return track("Product Viewed", f"m{i}", anonymous_id, product_id=str(i))


async def due(spool: Spool, vendor: str = "goshops", now: float | None = None) -> list[Any]:
    return await spool.due("s", vendor, time.time() if now is None else now, 100)


def test_dedup_on_message_id_and_order_id(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        first = await spool.ingest("s", [view(1), view(2), view(1)], BROWSER)
        assert (first.stored, first.duplicates) == (2, 1)
        again = await spool.ingest("s", [view(2), view(3)], BROWSER)
        assert (again.stored, again.duplicates) == (1, 1)
        order = track("Order Completed", "o-browser", order_id="42", total=5)
        server = dict(order, messageId="o-server")
        one = await spool.ingest("s", [order], BROWSER)
        two = await spool.ingest("s", [server], BROWSER)
        assert (one.stored, two.stored, two.duplicates) == (1, 0, 1)
        other_site = await spool.ingest("t", [view(1)], BROWSER)
        assert other_site.stored == 1
        assert [r.event.message_id for r in await due(spool)] == ["m1", "m2", "m3",
                                                                 "o-browser"]

    run(backend, scenario)


def test_alias_keeps_a_cookieless_client_one_visitor_and_a_cookie_moves_it(
        backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        one = await spool.ingest("s", [view(1, "anon-1")], BROWSER)
        two = await spool.ingest("s", [view(2, "anon-1")], BROWSER)
        assert one.visitor_id == two.visitor_id == COOKIE.visitor_for_anonymous_id("s", "anon-1")
        cookie = "c" * 32
        three = await spool.ingest("s", [view(3, "anon-1")],
                                   RequestContext(cookie_visitor=cookie))
        assert three.visitor_id == cookie
        four = await spool.ingest("s", [view(4, "anon-1")], BROWSER)
        # An existing alias is never moved by a cookie (an anonymousId is no credential).
        assert four.visitor_id == one.visitor_id
        # Messages without any id take the request's first visitor, or a new one.
        bare = await spool.ingest("s", [view(5, None), view(6, None)], BROWSER)  # type: ignore[arg-type]
        assert bare.stored == 2 and len(bare.visitor_id) == 32
        rows = await due(spool)
        assert {r.event.message_id: r.visitor_id for r in rows}["m6"] == bare.visitor_id

    run(backend, scenario)


def test_server_messages_find_the_visitor_a_user_is_bound_to(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        cookie = "d" * 32
        identify = {"type": "identify", "messageId": "id-1", "userId": "user-7",
                    "anonymousId": "a", "traits": {"email": "u7@example.com"}}
        await spool.ingest("s", [identify], RequestContext(cookie_visitor=cookie))
        server = RequestContext(source="server", hints=[""])
        order = track("Order Completed", "o-1", None, order_id="9", total=3)
        order["userId"] = "user-7"
        result = await spool.ingest("s", [order], server)
        assert result.visitor_id == cookie
        # A binding made earlier in the same request counts for its later messages.
        bind = {"type": "identify", "messageId": "id-2", "userId": "user-8",
                "context": {}}
        later = track("Order Completed", "o-2", None, order_id="10", total=3)
        later["userId"] = "user-8"
        other = "e" * 32
        both = await spool.ingest("s", [bind, later],
                                  RequestContext(source="server", hints=[other, ""]))
        assert both.stored == 2
        rows = {r.event.message_id: r for r in await due(spool)}
        assert rows["o-1"].event.enrichment.user_id == "user-7"
        assert rows["o-1"].event.enrichment.email == "u7@example.com"
        assert rows["o-2"].visitor_id == other
        assert rows["o-2"].event.enrichment.source == "server"

    run(backend, scenario)


def test_a_server_order_naming_no_visitor_is_linked_by_token_then_email(
        backend: Backend) -> None:
    """An order webhook names no visitor: its customer's binding wins, then the visitor that
    first carried its checkout or cart token, then the user bound under its email; with none
    a new visitor, which its tokens then name (docs/platforms.md, "Which visitor")."""
    async def scenario(spool: Spool) -> None:
        server = RequestContext(source="server", hints=[""])
        shopper, other, mailer = "a" * 32, "b" * 32, "c" * 32
        checkout = track("Checkout Started", "cs-1", None, checkout_id="tok-1")
        await spool.ingest("s", [checkout], RequestContext(cookie_visitor=shopper))
        # A later visitor carrying the same token does not take it over.
        await spool.ingest("s", [dict(checkout, messageId="cs-2")],
                           RequestContext(cookie_visitor=other))
        order = track("Order Completed", "wh-1", None, order_id="1", total=3,
                      checkout_id="tok-1", cart_id="cart-9")
        order["userId"] = "cust-1"
        assert (await spool.ingest("s", [order], server)).visitor_id == shopper
        # The customer is now bound to the shopper: their next order finds them by it.
        again = track("Order Completed", "wh-2", None, order_id="2", total=3)
        again["userId"] = "cust-1"
        assert (await spool.ingest("s", [again], server)).visitor_id == shopper
        # The binding wins over a token another visitor carried.
        await spool.ingest("s", [track("Cart Viewed", "cv-1", None, cart_id="cart-o")],
                           RequestContext(cookie_visitor=other))
        third = track("Order Completed", "wh-3", None, order_id="3", total=3,
                      cart_id="cart-o")
        third["userId"] = "cust-1"
        assert (await spool.ingest("s", [third], server)).visitor_id == shopper
        # A guest order without token: the user bound under its email (as compared).
        identify = {"type": "identify", "messageId": "id-m", "userId": "m@example.com"}
        await spool.ingest("s", [identify], RequestContext(cookie_visitor=mailer))
        guest = track("Order Completed", "wh-4", None, order_id="4", total=3,
                      email=" M@Example.com")
        assert (await spool.ingest("s", [guest], server)).visitor_id == mailer
        # Nothing known: a new visitor, and its token names it for the next delivery.
        lone = track("Order Completed", "wh-5", None, order_id="5", total=3,
                     checkout_id="tok-new")
        first = await spool.ingest("s", [lone], server)
        assert first.visitor_id not in (shopper, other, mailer)
        update = track("Order Completed", "wh-6", None, order_id="6", total=3,
                       checkout_id="tok-new")
        assert (await spool.ingest("s", [update], server)).visitor_id == first.visitor_id

    run(backend, scenario)


def test_visitor_state_folds_in_arrival_order_across_requests(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        add = track("Product Added", "add-1", product_id="p1", price=5, quantity=1)
        add2 = track("Product Added", "add-2", product_id="p2", price=7, quantity=2)
        await spool.ingest("s", [add], BROWSER)
        await spool.ingest("s", [add2, track("Product Removed", "rm-1", product_id="p1")],
                           BROWSER)
        rows = {r.event.message_id: r.event.enrichment for r in await due(spool)}
        assert [line.product_id for line in rows["add-1"].cart or []] == ["p1"]
        assert [line.product_id for line in rows["add-2"].cart or []] == ["p1", "p2"]
        assert [line.product_id for line in rows["rm-1"].cart or []] == ["p2"]
        assert rows["add-1"].cart_id == rows["rm-1"].cart_id
        assert rows["add-1"].session_id == rows["rm-1"].session_id != ""
        assert rows["add-1"].ip == "10.0.0.1" and rows["add-1"].user_agent == "UA"

    run(backend, scenario)


def test_a_retry_holds_back_that_visitors_later_work_only(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1, "a"), view(2, "a"), view(3, "b")], BROWSER)
        first = await due(spool)
        assert [r.event.message_id for r in first] == ["m1", "m2", "m3"]
        retry_at = time.time() + 60
        await spool.mark_retry([first[0].id], next_at=retry_at, status=503, error="busy")
        await spool.mark_done([first[2].id])
        held = await due(spool)
        assert [r.event.message_id for r in held] == []  # m2 waits behind m1's retry
        later = await due(spool, now=retry_at + 1)
        assert [r.event.message_id for r in later] == ["m1", "m2"]
        assert later[0].attempts == 1 and later[0].error == "busy"
        await spool.mark_progress(later[0].id, 2)
        again = await due(spool, now=retry_at + 2)
        assert again[0].sent == 2

    run(backend, scenario)


def test_dead_letters_replay_and_stats(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1), view(2)], BROWSER)
        rows = await due(spool)
        await spool.mark_dead([rows[0].id], status=400, error="bad field", response="{}",
                              request="POST /x")
        await spool.mark_done([rows[1].id])
        letters = await spool.dead_letters(vendor="goshops")
        assert [(d.event.message_id, d.status, d.error, d.request) for d in letters] == [
            ("m1", 400, "bad field", "POST /x")]
        stats = await spool.stats()
        assert stats.counts["goshops"]["dead"] == 1
        assert stats.counts["alana"]["queued"] == 2 and stats.messages == 2
        assert await spool.replay(vendor="goshops") == 1
        assert [r.event.message_id for r in await due(spool)] == ["m1"]
        assert await spool.dead_letters(vendor="goshops") == []

    run(backend, scenario)


def test_work_is_announced_only_once_another_connection_can_see_it(backend: Backend) -> None:
    """No lost wake-up: a worker woken by `on_new_work` must find the work. The callback looks
    from a second connection at the moment it is called; seeing nothing there fails."""
    seen: list[int] = []

    async def scenario(spool: Spool) -> None:
        spool.on_new_work = lambda: seen.append(backend.visible_work())
        await spool.ingest("s", [view(1)], BROWSER)
        assert seen and seen[0] >= 1, seen
        rows = await due(spool)
        goshops = [r for r in rows if r.vendor == "goshops"]
        await spool.mark_dead([goshops[0].id], status=400, error="x")
        seen.clear()
        assert await spool.replay(vendor="goshops") == 1
        # The replayed letter is queued work again when the wake-up is seen.
        assert seen and seen[-1] >= 1, seen

    run(backend, scenario)


def test_one_request_of_an_event_is_dead_lettered_alone_and_replayed_alone(
        backend: Backend) -> None:
    # Issue 13: "One bad line of an order does not sink the other lines ...; the bad line is
    # dead-lettered alone, with the reason."
    async def scenario(spool: Spool) -> None:
        order = track("Order Completed", "o1", order_id="1", products=[{}, {}, {}])
        await spool.ingest("s", [order, view(2)], BROWSER)
        [row, later] = await due(spool)
        assert row.part is None
        await spool.mark_progress(row.id, 1)
        await spool.mark_part_dead(row.id, 1, status=400, error="line refused",
                                   response="{}", request="POST /feedback")
        await spool.mark_progress(row.id, 2)
        # The event's own work goes on past the part; nothing waits behind it.
        [again, _] = await due(spool)
        assert (again.id, again.sent, again.part) == (row.id, 2, None)
        await spool.mark_done([row.id, later.id], status=200)
        [letter] = await spool.dead_letters(vendor="goshops")
        assert (letter.event.message_id, letter.part, letter.status, letter.error,
                letter.request) == ("o1", 1, 400, "line refused", "POST /feedback")
        assert letter.to_dict()["part"] == 1
        assert (await spool.stats()).counts["goshops"]["dead"] == 1
        [record] = await spool.find_messages("s", message_id="o1")
        work = record.work["goshops"]
        assert work.state == "delivered" and set(work.parts) == {1}
        assert (work.parts[1].state, work.parts[1].error) == ("dead", "line refused")
        # A replay queues that request alone.
        assert await spool.replay(vendor="goshops") == 1
        [replayed] = await due(spool)
        assert (replayed.event.message_id, replayed.part, replayed.sent) == ("o1", 1, 0)
        await spool.mark_done([replayed.id], status=200)
        [record] = await spool.find_messages("s", message_id="o1")
        assert record.work["goshops"].state == "delivered"
        assert record.work["goshops"].parts[1].state == "delivered"
        assert await spool.dead_letters(vendor="goshops") == []
        assert await due(spool) == []

    run(backend, scenario)


def test_prune_keeps_the_message_of_a_replayed_part(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        order = track("Order Completed", "o1", order_id="1", products=[{}, {}])
        await spool.ingest("s", [order], BROWSER)
        await spool.ingest("s", [view(3)], BROWSER)           # stays queued
        [row, _] = await due(spool)
        await spool.mark_part_dead(row.id, 0, status=400, error="line refused")
        await spool.mark_done([row.id])
        [alana_o1, _] = await due(spool, "alana")
        await spool.mark_done([alana_o1.id])
        await asyncio.sleep(0.02)
        cut = time.time()
        assert await spool.replay(vendor="goshops") == 1
        await spool.prune(cut)
        assert [(r.event.message_id, r.part) for r in await due(spool)] == [
            ("m3", None), ("o1", 0)]

    run(backend, scenario)


def test_prune_forgets_finished_work_and_keeps_queued(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1), view(2)], BROWSER)
        rows = await due(spool)
        await spool.mark_done([rows[0].id])
        await asyncio.sleep(0.01)
        removed = await spool.prune(time.time())
        assert removed >= 1
        assert [r.event.message_id for r in await due(spool)] == ["m2"]
        assert (await spool.stats()).counts["alana"]["queued"] == 2

    run(backend, scenario)


def test_each_vendors_progress_on_one_event_is_its_own(backend: Backend) -> None:
    """One stored event for two vendors: a retry at one holds back neither the other's copy
    nor its later work, and the other finishing (and being pruned) loses nothing of the
    first's."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1), view(2)], BROWSER)
        first = await due(spool)
        assert [r.event.message_id for r in first] == ["m1", "m2"]
        later = time.time() + 3600
        await spool.mark_retry([first[0].id], next_at=later, status=503, error="busy")
        assert await due(spool) == []  # m2 waits behind m1's retry at Go Shops
        others = await due(spool, "alana")
        assert [r.event.message_id for r in others] == ["m1", "m2"]
        assert {r.id for r in others}.isdisjoint(r.id for r in first)
        await spool.mark_done([r.id for r in others])
        await asyncio.sleep(0.01)
        await spool.prune(time.time())
        stats = await spool.stats()
        assert stats.counts["goshops"]["queued"] == 2
        assert stats.counts.get("alana", {}).get("queued", 0) == 0
        assert await due(spool, "alana") == []
        again = await due(spool, now=later + 1)
        assert [(r.event.message_id, r.attempts) for r in again] == [("m1", 1), ("m2", 0)]

    run(backend, scenario)


def test_prune_forgets_visitors_not_seen_within_retention(backend: Backend) -> None:
    """A visitor not seen for longer than the retention is forgotten with its alias and user
    binding (queued work carries its own enrichment), so the store stays bounded."""
    async def scenario(spool: Spool) -> None:
        identify = {"type": "identify", "messageId": "id-1", "userId": "u-1",
                    "anonymousId": "old"}
        await spool.ingest("s", [identify, view(1, "old")], BROWSER)
        cutoff = time.time() + 0.01
        await asyncio.sleep(0.02)
        await spool.ingest("s", [view(2, "new")], BROWSER)
        await spool.prune(cutoff)
        server = RequestContext(source="server", hints=[""])
        order = track("Order Completed", "o-1", None, order_id="1", total=1)
        order["userId"] = "u-1"
        found = await spool.ingest("s", [order], server)
        old = COOKIE.visitor_for_anonymous_id("s", "old")
        assert found.visitor_id != old  # the binding went with the visitor
        again = {r.event.message_id: r.event.enrichment for r in await due(spool)}
        # Still its user: the order's own userId names it (issue 20), on the new visitor.
        assert again["o-1"].user_id == "u-1" and again["o-1"].visitor_id == found.visitor_id
        assert "m1" in again  # its queued work is still there

    if backend.kind == "redis":
        # Redis forgets by TTL: a retention of one second stands for the cut-off.
        async def expiring(spool: Spool) -> None:
            identify = {"type": "identify", "messageId": "id-1", "userId": "u-1",
                        "anonymousId": "old"}
            await spool.ingest("s", [identify], BROWSER)
            await asyncio.sleep(2.2)
            server = RequestContext(source="server", hints=[""])
            order = track("Order Completed", "o-1", None, order_id="1", total=1)
            order["userId"] = "u-1"
            found = await spool.ingest("s", [order], server)
            assert found.visitor_id != COOKIE.visitor_for_anonymous_id("s", "old")

        run(backend, expiring, retention=Retention(visitors=1.0))
        return
    run(backend, scenario)


def test_a_second_delivering_process_is_refused_where_the_backend_cannot_share(
        backend: Backend) -> None:
    """SQLite delivers from one process only (`due` hands work out per process); Redis shares
    delivery between any number of processes."""
    other_process = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_spool_contract import Backend
from pathlib import Path
folder = Path({str(Path(backend.path).parent)!r})
spool = Backend({backend.kind!r}, folder, {backend.prefix!r}).make()
try:
    spool.claim_delivery()
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("claimed")
spool.close()
"""

    async def scenario(spool: Spool) -> None:
        spool.claim_delivery()
        spool.claim_delivery()  # the same process may ask again
        answer = subprocess.run([sys.executable, "-c", other_process], capture_output=True,
                                text=True, timeout=60)
        if backend.kind == "sqlite":
            assert answer.stdout.startswith("refused:"), answer
            assert "one process per SQLite file" in answer.stdout
        else:
            assert answer.stdout.strip() == "claimed", answer

    run(backend, scenario)


def test_a_browser_claim_never_moves_a_binding_the_backend_made(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        victim, attacker = "a" * 32, "b" * 32
        server = RequestContext(source="server", hints=[victim])
        await spool.ingest("s", [{"type": "identify", "messageId": "i-1", "userId": "u"}],
                           server)
        claim = {"type": "identify", "messageId": "i-2", "userId": "u",
                 "traits": {"email": "claimant@example.com"}}
        await spool.ingest("s", [claim], RequestContext(cookie_visitor=attacker))
        order = track("Order Completed", "o-1", None, order_id="1", total=1)
        order["userId"] = "u"
        found = await spool.ingest("s", [order], RequestContext(source="server", hints=[""]))
        assert found.visitor_id == victim
        rows = {r.event.message_id: r.event.enrichment for r in await due(spool)}
        assert rows["i-2"].claimed_identity and rows["i-2"].user_id == "u"
        assert not rows["o-1"].claimed_identity

    run(backend, scenario)


def test_a_trace_finds_messages_with_their_work_exchanges_and_notes(backend: Backend) -> None:
    """By messageId, order id and visitor (newest first): each vendor's state with its last
    exchange, and the copies not stored (a resend, a duplicate order copy) as notes."""
    async def scenario(spool: Spool) -> None:
        result = await spool.ingest("s", [view(1), view(2)], BROWSER)
        await spool.ingest("s", [view(1)], BROWSER)  # a resend
        order = track("Order Completed", "o-1", order_id="42", total=5)
        await spool.ingest("s", [order], BROWSER)
        await spool.ingest("s", [dict(order, messageId="o-2")], BROWSER)
        rows = {(r.event.message_id, r.vendor): r for r in await due(spool)
                + await due(spool, "alana")}
        await spool.mark_done([rows["m1", "goshops"].id], status=200, request="POST /g",
                              response='{"ok":true}')
        retry_at = time.time() + 60
        await spool.mark_retry([rows["m1", "alana"].id], next_at=retry_at, status=503,
                               error="busy", request="POST /a", response="later")
        await spool.mark_dead([rows["m2", "goshops"].id], status=400, error="bad field",
                              response="no", request="POST /g2")

        [m1] = await spool.find_messages("s", message_id="m1")
        assert m1.visitor_id == result.visitor_id and m1.event is not None
        assert m1.event.properties["product_id"] == "1"
        done, waiting = m1.work["goshops"], m1.work["alana"]
        assert (done.state, done.status, done.request, done.response) == (
            "delivered", 200, "POST /g", '{"ok":true}')
        assert (waiting.state, waiting.status, waiting.error, waiting.attempts) == (
            "queued", 503, "busy", 1)
        assert waiting.next_at == pytest.approx(retry_at)
        assert [n for _, n in m1.notes] == [
            "deduplicated: a resend of this messageId (stored once, sent once)"]
        [m2] = await spool.find_messages("s", message_id="m2")
        assert (m2.work["goshops"].state, m2.work["goshops"].error) == ("dead", "bad field")

        by_order = await spool.find_messages("s", order_id="42")
        assert {r.message_id for r in by_order} == {"o-1", "o-2"}
        dropped = next(r for r in by_order if r.message_id == "o-2")
        assert dropped.event is None and dropped.work == {}
        assert dropped.notes[0][1] == ("deduplicated: order 42 was already reported by "
                                       "message o-1")
        timeline = await spool.find_messages("s", visitor_id=result.visitor_id)
        assert [r.message_id for r in timeline] == ["o-1", "m2", "m1"]
        assert await spool.find_messages("s", message_id="nope") == []
        assert await spool.find_messages("t", message_id="m1") == []

    run(backend, scenario)


def test_backfill_claims_each_message_once_per_vendor_and_resumes(backend: Backend) -> None:
    """History comes in acceptance order within the window; a claim is made once per
    (message, vendor), never for a message the vendor has work for; an unsettled claim is
    handed out again (resume), a settled one never."""
    async def scenario(spool: Spool) -> None:
        start = time.time()
        await spool.ingest("s", [view(1, "a"), view(2, "b"), view(3, "a")], BROWSER)
        await spool.ingest("t", [view(9)], BROWSER)
        items: list[Any] = []
        cursor = 0
        while True:
            page, cursor = await spool.history("s", since=start - 1, until=time.time() + 1,
                                               cursor=cursor, limit=2)
            if not page:
                break
            items += page
        assert [i.message_id for i in items] == ["m1", "m2", "m3"]
        assert items[0].vendors == {"goshops": "queued", "alana": "queued"}
        assert (await spool.history("s", since=time.time() + 5, until=time.time() + 9))[0] == []

        assert await spool.claim_backfill("s", "goshops", items) == []  # it has work for all
        first = await spool.claim_backfill("s", "yespo", items[:2])
        assert first == ["m1", "m2"]
        await spool.settle_backfill("s", "yespo", "m1", state=DELIVERED, status=200,
                                    request="POST /y", response="ok")
        # Stopped before m2 was sent: a second run gets m2 again and m3 new, never m1.
        assert await spool.claim_backfill("s", "yespo", items) == ["m2", "m3"]
        [m1] = await spool.find_messages("s", message_id="m1")
        assert (m1.work["yespo"].state, m1.work["yespo"].request) == ("delivered", "POST /y")
        # Backfill work is never handed to the live path.
        assert await due(spool, "yespo") == []

    run(backend, scenario)


def test_vendor_figures_count_the_queue_and_the_last_hour(backend: Backend) -> None:
    async def scenario(spool: Spool) -> None:
        start = time.time()
        await spool.ingest("s", [view(1, "a"), view(2, "b"), view(3, "c"), view(4, "d")],
                           BROWSER)
        rows = {r.event.message_id: r for r in await due(spool)}
        await spool.mark_retry([rows["m1"].id], next_at=time.time() + 60, status=503,
                               error="busy")
        await spool.mark_done([rows["m2"].id], status=200)
        await spool.mark_dead([rows["m3"].id], status=400, error="bad field")
        figures = {(f.site, f.vendor): f for f in await spool.vendor_figures(time.time())}
        goshops, alana = figures["s", "goshops"], figures["s", "alana"]
        assert (goshops.queued, goshops.delivered_hour, goshops.retried_hour,
                goshops.dead_hour, goshops.sent_minute) == (2, 1, 1, 1, 3)
        assert goshops.last_error == "bad field"
        assert goshops.oldest_queued_at is not None and goshops.oldest_queued_at >= start - 1
        assert goshops.last_delivered_at is not None
        assert (alana.queued, alana.delivered_hour, alana.last_error) == (4, 0, "")

    run(backend, scenario)


# ---- the intake and the rules stage ---------------------------------------------------------

async def until_routed(spool: Spool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await spool.stats()).intake:
        assert time.monotonic() < deadline, "the rules stage did not route the intake"
        await asyncio.sleep(0.01)


def test_an_append_is_stored_as_it_came_and_routed_behind_in_order(backend: Backend) -> None:
    """The request path's append stores nothing but the intake entry; once the rules stage
    runs, the messages are folded exactly as a direct ingest folds them: deduplicated, in the
    order accepted, with their work."""
    async def scenario(spool: Spool) -> None:
        await spool.append("s", [view(1), view(2)], BROWSER)
        await spool.append("s", [view(2), view(3)], BROWSER)  # m2 again: a resend
        stats = await spool.stats()
        assert (stats.intake, stats.messages, stats.queued()) == (2, 0, 0)
        assert stats.intake_oldest is not None and stats.intake_oldest <= time.time()
        [waiting] = await spool.find_messages("s", message_id="m3")
        assert waiting.event is None and "not yet routed" in waiting.notes[0][1]
        spool.route_intake()
        await until_routed(spool)
        stats = await spool.stats()
        assert (stats.intake, stats.messages) == (0, 3)
        rows = await due(spool)
        assert [r.event.message_id for r in rows] == ["m1", "m2", "m3"]
        [record] = await spool.find_messages("s", message_id="m2")
        assert record.event is not None
        assert any("resend" in note for _, note in record.notes)

    run(backend, scenario)


def test_a_waiting_append_hears_the_folds_answer_once(backend: Backend) -> None:
    """The server API waits for the fold (an order already reported is answered as such)."""
    async def scenario(spool: Spool) -> None:
        spool.route_intake()
        server = RequestContext(source="server", hints=[""])
        order = track("Order Completed", "o-1", None, order_id="A-1")
        order["userId"] = "u1"
        again = {**order, "messageId": "o-2"}
        first = await spool.append("s", [order], server, wait=True)
        second = await spool.append("s", [again], server, wait=True)
        answers: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while len(answers) < 2:
            assert time.monotonic() < deadline
            for ticket in (first, second):
                if ticket not in answers and (got := await spool.routed(ticket)):
                    answers[ticket] = got
            await asyncio.sleep(0.01)
        assert answers[first].stored == 1 and not answers[first].dropped
        assert answers[second].stored == 0
        assert answers[second].dropped == [(0, "duplicate: order A-1 was already reported")]
        assert await spool.routed(first) is None  # read once, then forgotten

    run(backend, scenario)


def test_a_request_the_rules_cannot_fold_never_blocks_the_ones_behind(backend: Backend) -> None:
    def router(event: Any) -> list[str]:
        if event.message_id == "bad":
            raise ValueError("a router bug")
        return ["goshops"]

    async def scenario(spool: Spool) -> None:
        await spool.append("s", [track("Product Viewed", "bad", product_id="1")], BROWSER)
        await spool.append("s", [view(7)], BROWSER)
        spool.route_intake()
        await until_routed(spool)
        stats = await spool.stats()
        assert stats.intake_failed == 1 and stats.messages == 1
        assert [r.event.message_id for r in await due(spool)] == ["m7"]

    run(backend, scenario, router=router)


def test_a_request_of_several_visitors_keeps_each_visitors_order_and_its_answer(
        backend: Backend) -> None:
    """A batch carrying several visitors' messages (a server library's, say) is folded so
    that each visitor's messages keep their order across requests, and a waiting sender hears
    each refusal under the index it sent (Redis splits such a request by intake partition)."""
    async def scenario(spool: Spool) -> None:
        spool.route_intake()
        server = RequestContext(source="server", hints=["", "", "", ""])
        orders = []
        for i in range(4):
            order = track("Order Completed", f"o-{i}", None, order_id=f"B-{i}")
            order["userId"] = f"user-{i}"
            orders.append(order)
        await spool.append("s", orders[:2], RequestContext(source="server", hints=["", ""]))
        ticket = await spool.append("s", [{**o, "messageId": f"again-{i}"}
                                          for i, o in enumerate(orders)], server, wait=True)
        deadline = time.monotonic() + 10
        while (answer := await spool.routed(ticket)) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert answer.dropped == [(0, "duplicate: order B-0 was already reported"),
                                  (1, "duplicate: order B-1 was already reported")]
        assert answer.stored == 2
        rows = await due(spool)
        assert sorted(r.event.message_id for r in rows
                      if r.event.name == "Order Completed") == ["again-2", "again-3", "o-0", "o-1"]


# ---- rules kept above the spools (issue 19, item 5) -----------------------------------------

def test_a_dropped_order_copy_is_found_by_its_exact_order_id(backend: Backend) -> None:
    """`%` and `_` in an order id are characters like any other: a trace by order id "10%_1"
    shows that order's copies, never those of an order "1071" that a pattern would match."""
    async def scenario(spool: Spool) -> None:
        for order_id, first, copy in (("10%_1", "o-a", "o-a2"), ("1071", "o-b", "o-b2")):
            order = track("Order Completed", first, order_id=order_id, total=5)
            await spool.ingest("s", [order], BROWSER)
            await spool.ingest("s", [dict(order, messageId=copy)], BROWSER)
        found = await spool.find_messages("s", order_id="10%_1")
        assert {r.message_id for r in found} == {"o-a", "o-a2"}
        assert {r.message_id for r in await spool.find_messages("s", order_id="1071")} == {
            "o-b", "o-b2"}
        assert await spool.find_messages("s", order_id="10%") == []

    run(backend, scenario)


def test_an_older_sqlite_file_finds_its_dropped_order_copies(tmp_path: Path) -> None:
    """A file written before notes kept the order id beside the prose (issue 19) still finds
    a dropped copy by its order id once opened by this release."""
    backend = Backend("sqlite", tmp_path, "")

    async def write(spool: Spool) -> None:
        order = track("Order Completed", "o-1", order_id="7_%", total=5)
        await spool.ingest("s", [order], BROWSER)
        await spool.ingest("s", [dict(order, messageId="o-2")], BROWSER)

    async def read(spool: Spool) -> None:
        found = await spool.find_messages("s", order_id="7_%")
        assert {r.message_id for r in found} == {"o-1", "o-2"}

    run(backend, write)
    conn = sqlite3.connect(backend.path)
    conn.executescript("""
        DROP INDEX IF EXISTS notes_order;
        CREATE TABLE old_notes AS SELECT site, message_id, at, note FROM notes;
        DROP TABLE notes;
        ALTER TABLE old_notes RENAME TO notes;
    """)
    conn.close()
    run(backend, read)


def test_a_part_dead_lettered_twice_keeps_the_first_letter(backend: Backend) -> None:
    """A restart between `mark_part_dead` and the caller's progress meets the part again: the
    first letter stands, and no second one is written."""
    async def scenario(spool: Spool) -> None:
        order = track("Order Completed", "o1", order_id="1", products=[{}, {}])
        await spool.ingest("s", [order], BROWSER)
        [row] = await due(spool)
        await spool.mark_part_dead(row.id, 1, status=400, error="first", request="POST /1")
        await spool.mark_part_dead(row.id, 1, status=422, error="second", request="POST /2")
        [letter] = await spool.dead_letters(vendor="goshops")
        assert (letter.part, letter.status, letter.error, letter.request) == (
            1, 400, "first", "POST /1")
        assert (await spool.stats()).counts["goshops"]["dead"] == 1
        [record] = await spool.find_messages("s", message_id="o1")
        assert record.work["goshops"].parts[1].error == "first"

    run(backend, scenario)


def test_a_trace_and_a_dead_letter_keep_the_same_share_of_an_exchange(
        backend: Backend) -> None:
    """Whatever the backend: a trace keeps `EXCHANGE_CHARS` of a request and of an answer, a
    dead letter its answer to `LETTER_ANSWER_CHARS` and its request whole."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1), view(2)], BROWSER)
        [first, second] = await due(spool)
        long_request, long_answer = "R" * 2000, "A" * 5000
        await spool.mark_done([first.id], status=200, request=long_request,
                              response=long_answer)
        await spool.mark_dead([second.id], status=400, error="bad", request=long_request,
                              response=long_answer)
        [letter] = await spool.dead_letters(vendor="goshops")
        assert (letter.request, letter.response) == (long_request,
                                                      long_answer[:LETTER_ANSWER_CHARS])
        for message_id in ("m1", "m2"):
            [record] = await spool.find_messages("s", message_id=message_id)
            work = record.work["goshops"]
            assert (work.request, work.response) == (long_request[:EXCHANGE_CHARS],
                                                     long_answer[:EXCHANGE_CHARS])

    run(backend, scenario)


def test_the_figures_count_the_last_minute_and_the_last_hour_to_the_second(
        backend: Backend) -> None:
    """The minute figure is the last 60 seconds before `now` and the hour the last 3600, on
    both backends (Redis counted up to two minute buckets for the minute)."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1, "a"), view(2, "b")], BROWSER)
        rows = await due(spool)
        before = time.time()
        await spool.mark_done([rows[0].id], status=200)
        await spool.mark_retry([rows[1].id], next_at=before + 30, status=503, error="busy")
        after = time.time()

        async def figures(now: float) -> tuple[int, int, int]:
            by = {(f.site, f.vendor): f for f in await spool.vendor_figures(now)}
            row = by["s", "goshops"]
            return row.sent_minute, row.delivered_hour, row.retried_hour

        assert await figures(after + 30) == (2, 1, 1)
        # A second past the minute, within the hour (Redis counted the previous minute's
        # bucket whole, so this said 2 unless the answers came in a minute's last second).
        assert await figures(after + FIGURE_MINUTE + 1) == (0, 1, 1)
        assert await figures(after + FIGURE_HOUR + 100) == (0, 0, 0)

    run(backend, scenario)


def test_prune_removes_what_the_retention_policy_says(backend: Backend) -> None:
    """`prune(cut)` forgets, on both backends, what `Retention.cut` names: work finished
    before the cut with its dead letters, and the messages received before it that no work
    names any more (their dedup with them: a resend is accepted as new). Queued work stays
    whatever its age, with its message; what came or finished after the cut stays."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1, "a"), view(2, "b"), view(3, "c")], BROWSER)
        old = {r.event.message_id: r for r in await due(spool)}
        await spool.mark_done([old["m1"].id], status=200)
        await spool.mark_dead([old["m2"].id], status=400, error="old refusal")
        await asyncio.sleep(0.02)
        cut = time.time()
        await asyncio.sleep(0.02)
        await spool.ingest("s", [view(4, "d"), view(5, "e")], BROWSER)
        new = {r.event.message_id: r for r in await due(spool) if r.event.message_id != "m3"}
        await spool.mark_dead([new["m4"].id], status=400, error="new refusal")
        await spool.mark_done([new["m5"].id], status=200)
        cutoff = spool.retention.cut(cut, time.time())
        assert cutoff.finished == cut

        assert await spool.prune(cut) >= 2
        assert [d.event.message_id for d in await spool.dead_letters()] == ["m4"]
        counts = (await spool.stats()).counts["goshops"]
        assert (counts.get("delivered"), counts.get("dead")) == (1, 1)  # m5, m4
        assert [r.event.message_id for r in await due(spool)] == ["m3"]
        for gone in ("m1", "m2"):
            assert await spool.find_messages("s", message_id=gone) == []
        for kept in ("m3", "m4", "m5"):
            [record] = await spool.find_messages("s", message_id=kept)
            assert record.event is not None
        page, _ = await spool.history("s", since=0, until=time.time() + 1)
        assert [i.message_id for i in page] == ["m3", "m4", "m5"]
        again = await spool.ingest("s", [view(1, "a"), view(4, "d")], BROWSER)
        assert (again.stored, again.duplicates) == (1, 1)  # m1 forgotten, m4 remembered

    run(backend, scenario, router=lambda event: ["goshops"])


def test_a_dead_letter_filter_means_the_same_letters_to_list_and_to_replay(
        backend: Backend) -> None:
    """One `LetterFilter` (site, vendor, id, since, status) picks the same letters on both
    backends, for a listing and for a replay."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(1, "a"), view(2, "b")], BROWSER)
        await spool.ingest("t", [view(3, "c")], BROWSER)
        rows = {(r.site, r.event.message_id): r
                for site in ("s", "t") for r in await spool.due(site, "goshops", time.time(),
                                                                 100)}
        await spool.mark_dead([rows["s", "m1"].id], status=400, error="bad field")
        await asyncio.sleep(0.02)
        since = time.time()
        await spool.mark_dead([rows["s", "m2"].id], status=422, error="refused")
        await spool.mark_dead([rows["t", "m3"].id], status=400, error="bad field")
        alana = await spool.due("s", "alana", time.time(), 100)
        await spool.mark_dead([alana[0].id], status=400, error="bad field")

        async def ids(where: LetterFilter) -> list[tuple[str, str, str]]:
            return [(d.site, d.vendor, d.event.message_id)
                    for d in await spool.dead_letters(where)]

        assert len(await ids(LetterFilter())) == 4
        assert await ids(LetterFilter(site="t")) == [("t", "goshops", "m3")]
        assert await ids(LetterFilter(site="s", vendor="goshops", status=400)) == [
            ("s", "goshops", "m1")]
        assert await ids(LetterFilter(vendor="goshops", since=since)) == [
            ("s", "goshops", "m2"), ("t", "goshops", "m3")]
        [letter] = await spool.dead_letters(LetterFilter(status=422))
        assert await ids(LetterFilter(dead_id=letter.id)) == [("s", "goshops", "m2")]
        assert await ids(LetterFilter(site="u")) == []
        # The shorthand keywords are the same filter.
        assert [d.id for d in await spool.dead_letters(vendor="alana")] == [
            d.id for d in await spool.dead_letters(LetterFilter(vendor="alana"))]

        assert await spool.replay(LetterFilter(site="s", vendor="goshops", status=400)) == 1
        assert [r.event.message_id for r in await due(spool)] == ["m1"]
        assert await ids(LetterFilter(vendor="goshops")) == [("s", "goshops", "m2"),
                                                             ("t", "goshops", "m3")]

    run(backend, scenario)


def test_a_backfill_settled_dead_is_a_dead_letter_the_live_path_can_replay(
        backend: Backend) -> None:
    """A backfill's DEAD settle is kept as the live path keeps a failure: listed and counted
    as a dead letter, never claimed again, and a replay hands it to the live path (it was
    SQLite only)."""
    async def scenario(spool: Spool) -> None:
        start = time.time()
        await spool.ingest("s", [view(1, "a"), view(2, "b")], BROWSER)
        items, _ = await spool.history("s", since=start - 1, until=time.time() + 1)
        assert await spool.claim_backfill("s", "yespo", items) == ["m1", "m2"]
        await spool.settle_backfill("s", "yespo", "m1", state=DEAD, status=400,
                                    error="bad field", request="POST /y", response="no")
        await spool.settle_backfill("s", "yespo", "m2", state=DELIVERED, status=200)
        [letter] = await spool.dead_letters(vendor="yespo")
        assert (letter.event.message_id, letter.status, letter.error, letter.request,
                letter.part) == ("m1", 400, "bad field", "POST /y", None)
        counts = (await spool.stats()).counts["yespo"]
        assert (counts["dead"], counts["delivered"]) == (1, 1)
        [m1] = await spool.find_messages("s", message_id="m1")
        assert (m1.work["yespo"].state, m1.work["yespo"].error) == ("dead", "bad field")
        assert await spool.claim_backfill("s", "yespo", items) == []  # settled, both
        assert await due(spool, "yespo") == []

        assert await spool.replay(vendor="yespo") == 1
        [row] = await due(spool, "yespo")
        assert (row.event.message_id, row.attempts, row.part) == ("m1", 0, None)
        await spool.mark_done([row.id], status=200)
        [m1] = await spool.find_messages("s", message_id="m1")
        assert m1.work["yespo"].state == "delivered"
        assert await spool.dead_letters(vendor="yespo") == []

    run(backend, scenario)


def test_each_vendor_has_its_own_queue_and_one_answer_shows_in_each_messages_trace(
        backend: Backend) -> None:
    """Work delivered to one vendor is gone for that vendor only; a backlog at one vendor never
    hides or reorders work at another, nor work that arrives later; one request that carried
    several messages shows its answer in each one's trace, and counts once per message."""
    async def scenario(spool: Spool) -> None:
        await spool.ingest("s", [view(i, f"v{i}") for i in range(1, 6)], BROWSER)
        first = await due(spool)
        await spool.mark_done([r.id for r in first[:3]], status=200, request="POST /batch",
                              response="ok")
        assert [r.event.message_id for r in await due(spool)] == ["m4", "m5"]
        await spool.ingest("s", [view(6, "v6")], BROWSER)
        assert [r.event.message_id for r in await due(spool)] == ["m4", "m5", "m6"]
        assert [r.event.message_id for r in await due(spool, "alana")] == [
            "m1", "m2", "m3", "m4", "m5", "m6"]
        for message_id in ("m1", "m2", "m3"):
            [record] = await spool.find_messages("s", message_id=message_id)
            done, queued = record.work["goshops"], record.work["alana"]
            assert (done.state, done.status, done.request, done.response, done.attempts) == (
                "delivered", 200, "POST /batch", "ok", 1)
            assert queued.state == "queued"
        stats = await spool.stats()
        assert (stats.counts["goshops"]["delivered"], stats.counts["goshops"]["queued"],
                stats.counts["alana"]["queued"]) == (3, 3, 6)
        figures = {(f.site, f.vendor): f for f in await spool.vendor_figures(time.time())}
        assert (figures["s", "goshops"].delivered_hour, figures["s", "goshops"].queued) == (3, 3)

    run(backend, scenario)
