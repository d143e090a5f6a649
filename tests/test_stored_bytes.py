"""What one request makes the relay store (issue 19, item 4; issue 22, item 1), over real HTTP
against a real relay and its SQLite spool: the stored events of each request, in bytes, against
the request's body. Before, every event copied the visitor's whole cart and every long value it
had met (a 30 KB User-Agent, a 20 KB name, a 30 KB cart or block id) again: 50–2,000 times the
body. What a request keeps in all (messages, states, work rows) is measured once, by
`test_hostile_bytes.Relay.kept`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from relay_fixtures import WRITE_KEY, relay_stack
from test_hostile_bytes import relay, within
from test_identity_privacy import CHROME

from shoprelay.events import MAX_USER_AGENT_CHARS, CartLine, StoredEvent
from shoprelay.identity.state import MAX_CART_LINES
from shoprelay.vendors.yespo import VENDOR as YESPO
from shoprelay.vendors.yespo import YespoConfig

FACTOR = 10
#: The relay's own fields on every stored event, whatever the client sent: the messageId,
#: timestamp and receivedAt it adds, the visitor and session ids, the clocks, the IP (~450
#: bytes) and a User-Agent of at most MAX_USER_AGENT_CHARS. A bare `{"type":"page"}` is 16
#: bytes of a batch, so this floor lies outside any factor of a request's bytes.
OWN_FIELDS = 450 + MAX_USER_AGENT_CHARS
LONG = "x" * 30_000


class Client:
    """A browser-like client that measures what each of its requests stored."""

    def __init__(self, tmp_path: Path, relay_url: str, user_agent: str = CHROME) -> None:
        self.db = tmp_path / "spool.db"
        self.http = httpx.Client(base_url=relay_url, headers={"User-Agent": user_agent})
        self.seen = 0  # messages rows already counted

    def send(self, *messages: dict[str, Any]) -> tuple[int, list[dict[str, Any]], int]:
        """(body bytes, the stored events of this request, their stored bytes)."""
        body = orjson.dumps({"batch": list(messages), "writeKey": WRITE_KEY})
        answer = self.http.post("/v1/batch", content=body,
                                headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        rows = self._rows_after(self.seen, answer.json()["accepted"])
        self.seen += len(rows)
        return len(body), [orjson.loads(r) for r in rows], sum(len(r) for r in rows)

    def _rows_after(self, seen: int, count: int) -> list[bytes]:
        # The relay may store a request's events a moment after it answered (an intake
        # stage): wait until they are all there.
        deadline = time.monotonic() + 20
        while True:
            with sqlite3.connect(self.db) as conn:
                rows = [r[0] for r in conn.execute(
                    "SELECT data FROM messages ORDER BY id LIMIT -1 OFFSET ?", (seen,))]
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) == count, (len(rows), count)
                return rows
            time.sleep(0.05)


#: What the tracker puts in every message's context (analytics.js puts more): what a real
#: message weighs beside its properties.
PAGE_CONTEXT = {"page": {"url": "https://shop.example/product/1?ref=home", "path": "/product/1",
                         "referrer": "https://shop.example/", "title": "A product"},
                "locale": "en-GB", "consent": {"analytics": True, "marketing": True}}


def added(i: int, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Added", "messageId": f"add-{i}",
            "timestamp": "2026-12-03T10:00:00.000Z", "context": PAGE_CONTEXT,
            "properties": {"product_id": f"p{i}", "price": 1, "quantity": 1, **props}}


def rendered(stored: dict[str, Any]) -> list[Any]:
    return YESPO.requests_for(StoredEvent.from_dict(stored), YespoConfig(site_id="S1"))


def test_a_cart_flood_stores_at_most_ten_times_each_request(tmp_path: Path) -> None:
    """Batches of 500 `Product Added` (the most a request carries) for one visitor (2 × 1,000
    made 394 KB → 28 MB, 71×, when each event stored the whole cart). Now each request stores
    at most 10× its body, and what Yespo gets still ends with the whole cart of each request."""
    with relay_stack(tmp_path, vendors=["yespo"], forward=False) as stack:
        client = Client(tmp_path, stack.relay_url)
        for batch in range(2):
            size, events, stored = client.send(
                *[added(batch * 1000 + i) for i in range(500)])
            assert stored <= FACTOR * size, (stored, size, stored / size)
            last, first = events[-1], events[0]
            [status] = rendered(last)
            lines = status.json["StatusCart"]["Products"]
            assert len(lines) == MAX_CART_LINES
            assert lines[-1]["productKey"] == f"p{batch * 1000 + 499}"
            [skipped] = rendered(first)
            assert skipped.is_skip and f"add-{batch * 1000 + 499}" in skipped.notes[0]
            # The cart goes with the last events of the request, back as far as the bound
            # allows, and the cart id with every cart event (Alana's cartId).
            carts = ["cart" in e["enrichment"] for e in events]
            assert carts[-1] and not carts[0] and carts == sorted(carts)
            assert all(e["enrichment"]["cart_id"] == last["enrichment"]["cart_id"]
                       for e in events)


def test_a_flood_ending_in_a_purchase_points_at_the_purchase(tmp_path: Path) -> None:
    """The purchase empties the cart: it is the request's last cart event, its empty cart is
    stored, and the additions that store no cart name it."""
    with relay_stack(tmp_path, vendors=["yespo"], forward=False) as stack:
        client = Client(tmp_path, stack.relay_url)
        order = {"type": "track", "event": "Order Completed", "messageId": "order-1",
                 "properties": {"order_id": "o-1", "products": [{"product_id": "p1",
                                                                  "price": 1}]}}
        size, events, stored = client.send(*[added(i) for i in range(300)], order)
        assert stored <= FACTOR * size
        assert events[-1]["enrichment"]["cart"] == []
        assert events[0]["enrichment"]["extra"]["cart_later"] == "order-1"
        assert [r.json["StatusCart"]["Products"] for r in rendered(events[-1])
                if "StatusCart" in r.json] == [[]]


def test_an_ordinary_request_keeps_every_cart_event_as_it_was(tmp_path: Path) -> None:
    """A handful of cart changes in one request (the tracker batches for a second): every
    event still stores the cart after it, compactly, so Yespo gets each StatusCart."""
    with relay_stack(tmp_path, vendors=["yespo"], forward=False) as stack:
        client = Client(tmp_path, stack.relay_url)
        _, events, _ = client.send(
            added(1, currency="EUR"), added(2, quantity=3),
            {"type": "track", "event": "Product Removed", "properties": {"product_id": "p1"}},
            {"type": "track", "event": "Cart Viewed", "properties": {}})
        carts = [StoredEvent.from_dict(e).enrichment.cart for e in events]
        assert carts == [[CartLine("p1", 1, 1, "EUR")],
                         [CartLine("p1", 1, 1, "EUR"), CartLine("p2", 3, 1)],
                         [CartLine("p2", 3, 1)], [CartLine("p2", 3, 1)]]
        assert events[1]["enrichment"]["cart"] == [["p1", 1, 1, "EUR"], ["p2", 3, 1]]
        assert [len(r.json["StatusCart"]["Products"])
                for e in events for r in rendered(e)] == [1, 2, 1, 1]


def _identify(**traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "traits": traits}


def _removed(product: str = "not-in-cart") -> dict[str, Any]:
    return {"type": "track", "event": "Product Removed", "properties": {"product_id": product}}


BARE_PAGES = [{"type": "page"} for _ in range(500)]
SHAPES = {
    # (what the visitor sent before, the measured request, its User-Agent)
    "a 30 KB User-Agent on 500 bare pages": ([], BARE_PAGES, "M" * 30_000),
    "500 bare pages after a 20 KB name and a 10 KB email": (
        [_identify(name=LONG[:20_000], email=LONG[:10_000])], BARE_PAGES, CHROME),
    "500 bare pages after a userId of 256 characters (the longest accepted)": (
        [{"type": "identify", "userId": "u" * 256}], BARE_PAGES, CHROME),
    "500 removals after a 30 KB cart id": (
        [added(1, cart_id=LONG)], [_removed() for _ in range(500)], CHROME),
    "500 product views after a 30 KB recommendation block id": (
        [{"type": "track", "event": "Product List Viewed",
          "properties": {"list_id": LONG, "products": [{"product_id": "p1"}]}}],
        [{"type": "track", "event": "Product Viewed", "properties": {"product_id": "p1"}}
         for _ in range(500)], CHROME),
    "500 removals on a cart of 100 lines": (
        [{"type": "track", "event": "Cart Viewed", "properties": {"products": [
            {"product_id": f"p{i}", "price": 1} for i in range(100)]}}],
        [_removed() for _ in range(500)], CHROME),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_no_request_shape_stores_a_long_value_once_per_event(tmp_path: Path, shape: str,
                                                             prefix: str) -> None:
    """The worst shapes found: a long value met once (a header, a trait, an id kept in the
    visitor's state) used to be stored again with each later event. Now what a request keeps
    in all — messages, states and work rows — is at most 10× its body; the bare messages
    past that budget are refused one by one with the reason."""
    before, measured, user_agent = SHAPES[shape]
    with relay(tmp_path, "sqlite", prefix, vendors=["yespo"]) as r:
        if before:
            r.send(before, user_agent=user_agent)
        answer, size, kept = r.send(measured, user_agent=user_agent)
        within(size, kept)
        assert 0 < answer["accepted"] <= len(measured)
        assert {x["index"] for x in answer["rejected"]} == set(
            range(answer["accepted"], len(measured)))
        for event in r.stored_events():
            enrichment = event.enrichment
            assert len(enrichment.user_agent or "") <= MAX_USER_AGENT_CHARS
            assert enrichment.name is None and enrichment.email is None


def test_contact_details_of_ordinary_length_still_go_with_every_event(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["yespo"], forward=False) as stack:
        client = Client(tmp_path, stack.relay_url)
        client.send(_identify(name="Ada Lovelace", email="ada@example.com"))
        _, [view], _ = client.send({"type": "track", "event": "Product Viewed",
                                    "properties": {"product_id": "p1", "price": 5}})
        [request] = rendered(view)
        info = request.json["GeneralInfo"]
        assert (info["user_name"], info["user_email"]) == ("Ada Lovelace", "ada@example.com")


def test_a_visitors_last_cart_event_always_stores_the_whole_cart(tmp_path: Path) -> None:
    """The one shape outside the factor: a single addition to a full cart stores the whole
    cart (Yespo must end with it), at most MAX_CART_LINES lines of ids of at most 128
    characters — once per visitor and request."""
    with relay_stack(tmp_path, vendors=["yespo"], forward=False) as stack:
        client = Client(tmp_path, stack.relay_url)
        client.send(*[added(i) for i in range(MAX_CART_LINES)])
        size, [event], stored = client.send(added(MAX_CART_LINES))
        assert len(event["enrichment"]["cart"]) == MAX_CART_LINES
        cart_bytes = len(orjson.dumps(event["enrichment"]["cart"]))
        assert stored <= FACTOR * size + OWN_FIELDS + cart_bytes


def test_a_user_id_longer_than_any_real_one_is_refused(tmp_path: Path) -> None:
    """The user id is copied into every later event of the visitor: 256 characters at most."""
    with relay_stack(tmp_path, forward=False) as stack:
        answer = httpx.post(f"{stack.relay_url}/v1/batch", json={
            "writeKey": WRITE_KEY, "batch": [{"type": "identify", "userId": "u" * 257},
                                             {"type": "identify", "userId": "u" * 256}]})
        assert answer.status_code == 200
        assert answer.json()["accepted"] == 1
        assert answer.json()["rejected"] == [{"index": 0, "messageId": None,
                                              "error": "userId must be at most 256 characters"}]


def test_events_stored_by_older_releases_still_read() -> None:
    """The dict form of cart lines, the copies of page URL, referrer and locale, `source`."""
    old = {"site": "demo", "message": {"type": "track", "event": "Product Added",
                                       "messageId": "m1", "properties": {"product_id": "1"}},
           "enrichment": {"visitor_id": "v", "source": "browser", "page_url": "https://x/",
                          "referrer": "https://y/", "locale": "en-GB", "cart_id": "c",
                          "cart": [{"product_id": "1", "quantity": 2, "price": 3.5,
                                    "currency": "EUR"}]}}
    event = StoredEvent.from_dict(orjson.loads(orjson.dumps(old)))
    assert event.enrichment.cart == [CartLine("1", 2, 3.5, "EUR")]
    assert event.enrichment.source == "browser"
    again = StoredEvent.from_dict(orjson.loads(orjson.dumps(event.to_dict())))
    assert again == event
    assert again.to_dict()["enrichment"] == {"visitor_id": "v", "cart_id": "c",
                                             "cart": [["1", 2, 3.5, "EUR"]]}
