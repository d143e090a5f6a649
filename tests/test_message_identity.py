"""A message's own identity (issue 20): the `userId` (and `context.traits`) that RudderStack's
JS SDK and Segment's libraries put on every message after `identify` binds and enriches like an
identify, over real HTTP against a real relay and the five vendor sandboxes.

The finding: with RudderStack's XHR transport, requests go side by side, and an `Order
Completed` carrying `userId` could reach the relay before the `identify` request; the relay
ignored a message's own userId, so Alana got the purchase without it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from relay_fixtures import WRITE_KEY, Stack, relay_stack, routed_db
from servers import free_port, serve, wait_for
from test_identity_privacy import (
    CHROME,
    Device,
    order,
    server_post,
    settle,
    settle_alana,
    with_server_key,
)

from shoprelay.identity.state import VisitorState
from shoprelay.rules import (
    IDENTIFY_NOT_SIGNED,
    IngestRules,
    OrderRecord,
    RequestContext,
    SitePolicy,
    UserBinding,
    claim_refusal,
    identify_signature,
)
from shoprelay.vendors.retailrocket import contact_external_id

IDENTIFY_SECRET = "identify-secret-0123456789"


def one_call_each(table: dict[str, Any]) -> None:
    # Retail Rocket one call a request, so its calls can be read in order.
    table["sites"]["demo"]["vendors"]["retailrocket"]["visitor_events"] = False


def cross_origin(relay_url: str, *messages: dict[str, Any]) -> httpx.Response:
    """One request as RudderStack's SDK sends it from another origin: no cookie, the
    visitor named by its anonymousId."""
    answer = httpx.post(f"{relay_url}/v1/batch", headers={"User-Agent": CHROME},
                        json={"writeKey": WRITE_KEY, "batch": list(messages)})
    assert answer.status_code == 200, answer.text
    return answer


def rs_order(order_id: str, message_id: str, anonymous_id: str, user_id: str | None,
             email: str | None = None) -> dict[str, Any]:
    """An `Order Completed` as RudderStack's SDK sends it after `identify`: the user id on the
    message, the user's traits in `context.traits`."""
    message = order(order_id, message_id, anonymousId=anonymous_id)
    if user_id:
        message["userId"] = user_id
    if email:
        message["context"] = {"traits": {"email": email}}
    return message


def rs_identify(message_id: str, anonymous_id: str, user_id: str, email: str
                ) -> dict[str, Any]:
    return {"type": "identify", "messageId": message_id, "anonymousId": anonymous_id,
            "userId": user_id, "traits": {"email": email},
            "context": {"traits": {"email": email}}}


def rr_calls(stack: Stack, count: int) -> list[tuple[str, Any]]:
    """Retail Rocket's calls, in order, as (method, the visitor or contact they name)."""
    return [(r["path"].rsplit("/", 1)[-1],
             r["body"].get("contactExternalId") or r["body"].get("sessionExternalId"))
            for r in settle(stack, "retailrocket", count)]


def alana_events(stack: Stack, count: int) -> list[dict[str, Any]]:
    return [e for r in settle_alana(stack, count) for e in r["body"]["events"]]


def transfers(stack: Stack, count: int) -> list[str]:
    return [r["path"] for r in settle(stack, "advisable", count)
            if "/interactions/transfer/" in r["path"]]


def customer_data(stack: Stack, count: int) -> list[dict[str, Any]]:
    return [r["body"]["GeneralInfo"] for r in settle(stack, "yespo", count)
            if r["body"]["GeneralInfo"]["eventName"] == "CustomerData"]


def stored_rows(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    with routed_db(tmp_path / "spool.db") as conn:
        rows = conn.execute("SELECT message_id, data FROM messages ORDER BY id").fetchall()
    return [(m, orjson.loads(d)) for m, d in rows]


# ---- the finding ---------------------------------------------------------------------------

def test_an_order_carrying_its_user_id_before_the_identify_reaches_vendors_as_that_user(
        tmp_path: Path) -> None:
    """The race of RudderStack's XHR transport, as the relay sees it: the order (userId and
    traits on it) is accepted before the identify request. Every vendor that takes a user id
    gets the purchase with it; the identity calls go once, before the purchase, and the late
    identify (nothing new in it) sends none."""
    with relay_stack(tmp_path, adjust=one_call_each) as stack:
        anon = "rs-anon-1"
        cross_origin(stack.relay_url, {"type": "track", "event": "Product Viewed",
                                       "messageId": "view-1", "anonymousId": anon,
                                       "properties": {"product_id": "7", "price": 12.5}})
        answer = cross_origin(stack.relay_url,
                              rs_order("o-1", "order-1", anon, "u-1", "ann@example.com"))
        assert answer.json()["accepted"] == 1 and "dropped" not in answer.json()
        cross_origin(stack.relay_url, rs_identify("identify-1", anon, "u-1", "ann@example.com"))

        events = alana_events(stack, 2)
        [purchase] = [e for e in events if e["eventType"] == "purchase-complete"]
        assert purchase["userId"] == "u-1"
        [view] = [e for e in events if e["eventType"] == "detail-page-view"]
        assert "userId" not in view                      # before the login: anonymous
        visitor = purchase["visitorId"]
        assert view["visitorId"] == visitor

        lines = [r["body"]["data"] for r in settle(stack, "goshops", 2)]
        assert [(d["event"], d["customer"]) for d in lines] == [("view", visitor),
                                                                ("purchase", "u-1")]

        advisable = settle(stack, "advisable", 3)        # view, transfer, purchase
        assert [r["path"].split("/v1/", 1)[1] for r in advisable][1:] == [
            f"users/{visitor}/interactions/transfer/u-1", "purchases/batch"]
        assert [p["user_id"] for p in advisable[2]["body"]] == ["u-1"]

        # Retail Rocket: setContact with the traits' email once, before the order.
        assert rr_calls(stack, 3) == [("view", visitor),
                                      ("setContact", contact_external_id("u-1")),
                                      ("order", visitor)]
        contact = next(r["body"] for r in stack.received("retailrocket")
                       if r["path"].endswith("/setContact"))
        assert contact["email"] == "ann@example.com"
        [customer] = customer_data(stack, 3)             # view, CustomerData, PurchasedItems
        assert (customer["externalCustomerId"], customer["user_email"]) == (
            "u-1", "ann@example.com")


def test_a_backend_order_naming_a_user_carries_it_without_any_identify(tmp_path: Path) -> None:
    """Segment's server libraries send `track(userId, "Order Completed", ...)` and may never
    send an identify: the order still reaches the vendors as that user, and Retail Rocket gets
    the user's setContact once (not again for the user's next order)."""
    with relay_stack(tmp_path, adjust=with_server_key) as stack:
        first = server_post(stack.relay_url, order("o-5", "server-o-5", userId="u-5"))
        assert first.json()["accepted"] == 1
        server_post(stack.relay_url, order("o-6", "server-o-6", userId="u-5"))
        events = alana_events(stack, 2)
        assert [(e["eventType"], e["userId"]) for e in events] == [
            ("purchase-complete", "u-5"), ("purchase-complete", "u-5")]
        assert [r["body"]["data"]["customer"] for r in settle(stack, "goshops", 2)] == [
            "u-5", "u-5"]
        visitor = events[0]["visitorId"]
        assert rr_calls(stack, 3) == [("setContact", contact_external_id("u-5")),
                                      ("order", visitor), ("order", visitor)]


def test_a_catalogue_updates_user_id_names_no_one(tmp_path: Path) -> None:
    """Server libraries need some id on a track: the backend sends `Product Updated` as
    `track("catalogue", ...)`. That id binds nothing and sends no identity call."""
    with relay_stack(tmp_path, vendors=["retailrocket", "yespo"],
                     adjust=with_server_key) as stack:
        server_post(stack.relay_url, {"type": "track", "event": "Product Updated",
                                      "userId": "catalogue", "properties": {
                                          "product_id": "430738", "price": 201.95,
                                          "currency": "UAH", "in_stock": True}})
        [update] = settle(stack, "yespo", 1)
        assert update["body"]["GeneralInfo"]["eventName"] == "ProductUpdate"
        settle(stack, "retailrocket", 0)
        with routed_db(tmp_path / "spool.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0


def test_identity_calls_follow_a_message_once_and_never_for_identical_repeats(
        tmp_path: Path) -> None:
    """Every message after a login carries the same userId and traits: only the first one
    (and later a new email) tells the vendors anything."""
    with relay_stack(tmp_path, vendors=["retailrocket", "yespo", "advisable", "alana"],
                     adjust=one_call_each) as stack:
        device = Device(stack.relay_url)

        def view(n: int, email: str) -> dict[str, Any]:
            return {"type": "track", "event": "Product Viewed", "messageId": f"view-{n}",
                    "userId": "u-2", "context": {"traits": {"email": email}},
                    "properties": {"product_id": str(n), "price": 10.0}}

        device.send(view(1, "bo@example.com"))
        device.send(view(2, "bo@example.com"), view(3, "bo@example.com"))
        device.send({"type": "identify", "messageId": "id-2", "userId": "u-2",
                     "traits": {"email": "bo@example.com"}})        # a repeat: nothing
        device.send(view(4, "bo.new@example.com"))                  # a new email: once more
        device.send(view(4, "bo.new@example.com"))                  # a resend: stored once
        visitor = device.visitor
        contact = contact_external_id("u-2")
        assert rr_calls(stack, 6) == [("setContact", contact), ("view", visitor),
                                      ("view", visitor), ("view", visitor),
                                      ("setContact", contact), ("view", visitor)]
        mails = [r["body"].get("email") for r in stack.received("retailrocket")
                 if r["path"].endswith("/setContact")]
        assert mails == ["bo@example.com", "bo.new@example.com"]
        assert [c["user_email"] for c in customer_data(stack, 6)] == [
            "bo@example.com", "bo.new@example.com"]
        assert transfers(stack, 5) == [
            f"/advisable/v1/users/{visitor}/interactions/transfer/u-2"]
        assert {e.get("userId") for e in alana_events(stack, 4)} == {"u-2"}
        # The answer counts what the client sent; the derived identify is stored beside it.
        rows = dict(stored_rows(tmp_path))
        assert rows["view-1:identify"]["message"]["type"] == "identify"
        assert rows["view-1:identify"]["enrichment"]["extra"]["identity_of"] == "view-1"
        assert "view-2:identify" not in rows and "view-4:identify" in rows


# ---- unsigned claims ----------------------------------------------------------------------

def signed_site(table: dict[str, Any]) -> None:
    table["sites"]["demo"]["identify_secret"] = IDENTIFY_SECRET
    one_call_each(table)


def test_with_identify_secret_an_unsigned_user_id_is_stripped_and_the_order_still_sent(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket", "alana"], adjust=signed_site) as stack:
        device = Device(stack.relay_url)
        forged = device.send(order("o-x", "order-x", userId="u-x",
                                   context={"traits": {"email": "x@example.com"}})).json()
        # Not dropped: the purchase is kept and sent, as the visitor's, without the claim.
        assert forged["accepted"] == 1 and "dropped" not in forged
        [purchase] = alana_events(stack, 1)
        assert "userId" not in purchase
        assert rr_calls(stack, 1) == [("order", device.visitor)]
        rows = dict(stored_rows(tmp_path))
        assert "userId" not in rows["order-x"]["message"]
        assert "traits" not in rows["order-x"]["message"].get("context", {})
        with routed_db(tmp_path / "spool.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
            notes = [n for (n,) in conn.execute(
                "SELECT note FROM notes WHERE message_id = 'order-x'")]
        assert notes == ["identity not signed: stored and sent without its userId and "
                         "context.traits (this site requires context.userHash, "
                         "identify_secret)"]


def test_with_identify_secret_a_signed_message_binds_and_later_unsigned_repeats_keep_it(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket", "alana"], adjust=signed_site) as stack:
        device = Device(stack.relay_url)

        def view(n: int, user: str, **context: Any) -> dict[str, Any]:
            return {"type": "track", "event": "Product Viewed", "messageId": f"view-{n}",
                    "userId": user, "context": context,
                    "properties": {"product_id": str(n), "price": 10.0}}

        device.send(view(1, "u-y", userHash=identify_signature(IDENTIFY_SECRET, "u-y",
                                                                  int(time.time()) + 3600),
                         traits={"email": "y@example.com"}))
        device.send(view(2, "u-y"))                  # the tracker keeps the id, not the hash
        device.send(view(3, "u-z"))                  # an unsigned claim on another user
        assert [e.get("userId") for e in alana_events(stack, 3)] == ["u-y", "u-y", "u-y"]
        visitor = device.visitor
        assert rr_calls(stack, 4) == [("setContact", contact_external_id("u-y")),
                                      ("view", visitor), ("view", visitor), ("view", visitor)]
        with routed_db(tmp_path / "spool.db") as conn:
            assert dict(conn.execute("SELECT user_id, strong FROM users")) == {"u-y": 1}
        rows = dict(stored_rows(tmp_path))
        assert all("userHash" not in (row["message"].get("context") or {})
                   for row in rows.values())
        assert "userId" not in rows["view-3"]["message"]


def test_an_unsigned_message_never_moves_the_backends_binding(tmp_path: Path) -> None:
    """Without identify_secret, a browser track naming a user the backend bound to another
    visitor stays the claimant's, and no identity call carries the claimant's email."""
    with relay_stack(tmp_path, vendors=["retailrocket", "yespo"],
                     adjust=with_server_key) as stack:
        victim = Device(stack.relay_url)
        victim.send({"type": "page", "name": "Home"})
        server_post(stack.relay_url, {"type": "identify", "userId": "u-9", "traits": {
            "email": "victim@example.com"}, "context": {"visitorCookie":
                                                        victim.client.cookies["sc"]}})
        attacker = Device(stack.relay_url)
        attacker.send({"type": "track", "event": "Product Viewed", "userId": "u-9",
                       "context": {"traits": {"email": "attacker@example.com"}},
                       "properties": {"product_id": "1", "price": 1.0}})
        server_post(stack.relay_url, order("o-9", "server-o-9", userId="u-9"))
        calls = settle(stack, "retailrocket", 3)           # setContact, view, order
        assert [c["body"].get("email") for c in calls
                if c["path"].endswith("/setContact")] == ["victim@example.com"]
        [placed] = [c["body"] for c in calls if c["path"].endswith("/order")]
        assert placed["sessionExternalId"] == victim.visitor != attacker.visitor
        time.sleep(0.5)
        assert "attacker@example.com" not in orjson.dumps(stack.received("yespo")).decode()


# ---- order across requests ----------------------------------------------------------------

def test_requests_at_the_same_moment_reach_vendors_in_the_order_the_relay_stored_them(
        tmp_path: Path) -> None:
    """An order (carrying its userId) and the identify, sent side by side for three visitors:
    whichever request the relay accepts first, each vendor sees the visitor's events in the
    relay's stored order, the identity calls before the purchase, and the purchase as the
    user."""
    visitors = 3
    with relay_stack(tmp_path, vendors=["retailrocket", "alana", "advisable"],
                     adjust=one_call_each) as stack:
        start = threading.Barrier(2 * visitors)

        def send(message: dict[str, Any]) -> None:
            start.wait()
            cross_origin(stack.relay_url, message)

        threads = []
        for n in range(visitors):
            anon, user, email = f"rs-anon-{n}", f"u-{n}", f"p{n}@example.com"
            for message in (rs_order(f"o-{n}", f"order-{n}", anon, user, email),
                            rs_identify(f"identify-{n}", anon, user, email)):
                threads.append(threading.Thread(target=send, args=(message,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        rows = stored_rows(tmp_path)
        order_of: dict[str, list[str]] = {}
        for message_id, row in rows:
            order_of.setdefault(row["enrichment"]["visitor_id"], []).append(message_id)
        assert len(order_of) == visitors
        for ids in order_of.values():
            n = ids[-1].rsplit("-", 1)[1]
            # Either request may have been accepted first; both are one decided order.
            assert ids in ([f"identify-{n}", f"order-{n}"],
                           [f"order-{n}:identify", f"order-{n}", f"identify-{n}"])
        purchases = alana_events(stack, visitors)
        assert sorted((e["visitorId"], e["userId"]) for e in purchases) == sorted(
            (row["enrichment"]["visitor_id"], row["enrichment"]["user_id"])
            for message_id, row in rows if message_id.startswith("order-")
            and not message_id.endswith(":identify"))
        assert all(e["userId"] for e in purchases)
        per_visitor: dict[str, list[str]] = {}
        for record in settle(stack, "retailrocket", 2 * visitors):
            body = record["body"]
            per_visitor.setdefault(body["sessionExternalId"], []).append(
                record["path"].rsplit("/", 1)[-1])
        assert per_visitor == {v: ["setContact", "order"] for v in order_of}
        seen: dict[str, list[str]] = {}
        for record in settle(stack, "advisable", 2 * visitors):
            kind = "transfer" if "/interactions/transfer/" in record["path"] else "purchase"
            who = (record["path"].split("/users/")[1].split("/")[0] if kind == "transfer"
                   else record["body"][0]["user_id"])
            seen.setdefault(who, []).append(kind)
        assert sorted(seen.values()) == [["purchase"]] * visitors + [["transfer"]] * visitors


# ---- the real RudderStack SDK -------------------------------------------------------------

class IdentifyAfterOrder:
    """The relay's server holding the SDK's identify request until its first track request
    was answered (stored): the race of the XHR queue, which sends requests side by side, made
    certain instead of likely."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tracked: asyncio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.tracked is None:
            self.tracked = asyncio.Event()
        if scope["path"] == "/v1/identify":
            # Bounded, so an SDK that waited for each answer would fail the order check
            # below rather than hang.
            with suppress(TimeoutError):
                await asyncio.wait_for(self.tracked.wait(), 20)
        await self.app(scope, receive, send)
        if scope["path"] == "/v1/track":
            self.tracked.set()


@contextmanager
def rudder_relay(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """The demo shop with the relay inside, on two names (the page's origin is the other):
    (relay URL, page URL, sandbox URL)."""
    from demo_shop.app import create_app as create_shop_app
    from shoprelay.app import create_app
    from shoprelay.delivery.forwarder import DeliveryOptions
    from shoprelay.demo import DEMO_WRITE_KEY, demo_table
    from shoprelay.sandbox import create_app as create_sandbox_app
    from shoprelay.settings import parse

    with ExitStack() as stack:
        sandbox_url = stack.enter_context(serve(create_sandbox_app(), lifespan="off"))
        port = free_port()
        relay_url, page_url = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
        table = demo_table(shop_origin=relay_url, sandbox_url=sandbox_url,
                           spool_file=str(tmp_path / "spool.db"), vendors=["goshops", "alana"],
                           secret="rudder-test-secret-0123456789", forward_bots=True)
        table["sites"]["demo"]["allowed_origins"].append(page_url)
        relay = create_app(parse(table, env={}), delivery=DeliveryOptions(idle_poll=0.2))
        shop = create_shop_app(relay, write_key=DEMO_WRITE_KEY, sandbox_url=sandbox_url)
        stack.enter_context(serve(IdentifyAfterOrder(shop), port=port))
        yield relay_url, page_url, sandbox_url


@pytest.mark.browser
def test_the_rudderstack_sdks_order_overtaking_its_identify_reaches_alana_with_the_user(
        tmp_path: Path, browser: Any) -> None:
    from test_capture import USER_AGENT
    from test_compat_analytics_next import analytics_next_bundle
    from test_compat_rudderstack_js import SDK, SOURCE_CONFIG

    from shoprelay.demo import DEMO_WRITE_KEY

    analytics_next_bundle()  # npm ci of tests/js (once per lockfile)
    with rudder_relay(tmp_path) as (relay_url, page_url, sandbox_url):
        context = browser.new_context(user_agent=USER_AGENT)
        page = context.new_page()
        page.goto(f"{page_url}/lab/plain")  # no shoprelay tag; cross-origin: no cookie
        page.add_script_tag(path=str(SDK))
        page.evaluate("""([writeKey, dataPlane, config]) => new Promise(resolve => {
            const analytics = new window.rudderanalytics.RudderAnalytics();
            analytics.load(writeKey, dataPlane, {getSourceConfig: () => config,
                logLevel: 'WARN', onLoaded: () => {
                    analytics.identify('u-race', {email: 'race@example.com'});
                    analytics.track('Order Completed', {order_id: 'o-race', revenue: 89,
                        currency: 'USD',
                        products: [{product_id: '101', price: 89, quantity: 1}]});
                    resolve();
                }});
        })""", [DEMO_WRITE_KEY, relay_url, SOURCE_CONFIG])

        def received(vendor: str) -> list[dict[str, Any]]:
            return httpx.get(f"{sandbox_url}/_sandbox/{vendor}/requests?accepted=1").json()

        def purchases() -> list[dict[str, Any]]:
            return [e for r in received("alana") for e in r["body"]["events"]
                    if e["eventType"] == "purchase-complete"]

        [purchase] = wait_for(purchases, timeout=30)
        # The race did happen: the relay stored the order before the identify.
        kinds = [row["message"]["type"] for _, row in stored_rows(tmp_path)]
        assert kinds == ["identify", "track", "identify"]   # derived, the order, the SDK's
        assert purchase["userId"] == "u-race"
        [line] = wait_for(lambda: [r["body"]["data"] for r in received("goshops")])
        assert (line["event"], line["customer"]) == ("purchase", "u-race")
        context.close()


# ---- the pure parts -------------------------------------------------------------------------

class _Empty:
    """A snapshot of an empty spool."""

    def alias(self, anonymous_id: str) -> str | None:
        return None

    def user(self, user_id: str) -> UserBinding | None:
        return None

    def message_seen(self, message_id: str) -> bool:
        return False

    def order(self, order_id: str) -> OrderRecord | None:
        return None

    def state(self, visitor_id: str) -> VisitorState:
        return VisitorState()


def test_claim_refusal_decides_from_the_message_alone_and_changes_nothing() -> None:
    policy = SitePolicy(identify_secret=IDENTIFY_SECRET)
    good = identify_signature(IDENTIFY_SECRET, "u-1", int(time.time()) + 3600)
    unsigned = {"type": "identify", "userId": "u-1",
                "context": {"userHash": f"{int(time.time()) + 60}.{'0' * 64}"}}
    signed = {"type": "identify", "userId": "u-1", "context": {"userHash": good.upper()}}
    before = orjson.dumps([unsigned, signed])
    assert claim_refusal(policy, "browser", unsigned, time.time()) == IDENTIFY_NOT_SIGNED
    assert claim_refusal(policy, "browser", signed, time.time()) is None
    assert claim_refusal(policy, "server", unsigned, time.time()) is None
    assert claim_refusal(SitePolicy(), "browser", unsigned, time.time()) is None
    # Other messages are never dropped for their identity; nor is a hash of odd text a crash.
    assert claim_refusal(policy, "browser", {**unsigned, "type": "track"}, time.time()) is None
    assert claim_refusal(policy, "browser", {**unsigned, "context": {"userHash": "é"}},
                         time.time()) == IDENTIFY_NOT_SIGNED
    assert orjson.dumps([unsigned, signed]) == before


def test_a_fold_leaves_its_input_as_it_was_so_a_refold_decides_the_same() -> None:
    """Redis folds a request again when it had to read more: the first fold must not have
    taken the signature off the request's messages."""
    ids = iter(f"{i:032x}" for i in range(100))
    rules = IngestRules(router=lambda event: ["alana"], session_timeout=1800,
                        alias_for=lambda site, anon: "a" * 32, new_id=lambda: next(ids),
                        policy=lambda site: SitePolicy(identify_secret=IDENTIFY_SECRET))
    messages = [{"type": "identify", "messageId": "i-1", "userId": "u-1",
                 # Valid an hour past the fold's clock (received_at 1000.0 below).
                 "context": {"userHash": identify_signature(IDENTIFY_SECRET, "u-1", 4600)}},
                {"type": "track", "event": "Product Viewed", "messageId": "v-1",
                 "userId": "u-1", "properties": {"product_id": "1"}}]
    context = RequestContext(cookie_visitor="c" * 32)
    first = rules.fold("demo", messages, context, _Empty(), 1000.0)
    again = rules.fold("demo", messages, context, _Empty(), 1000.0)
    for plan in (first, again):
        assert plan.result.dropped == []
        assert plan.users == {"u-1": UserBinding("c" * 32, True)}
        assert [m.event.enrichment.user_id for m in plan.stored] == ["u-1", "u-1"]
    assert "userHash" not in (first.stored[0].event.message.get("context") or {})
