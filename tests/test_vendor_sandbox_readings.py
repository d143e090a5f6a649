"""Sandboxes exactly as strict as their documents (issue 20), over real HTTP.

Where a sandbox refused what its document allows it now accepts (a field the document does not
name is listed on the record instead), and where the document makes a rule the sandbox checks
it (Yespo: a changed cart under its old GUID; a SearchRequest for a search that found something).
The relay, against those sandboxes, still sends only what each document names: every record
accepted and none carrying a note.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from relay_fixtures import relay_stack
from servers import serve, wait_for

from shoprelay.demo import DEMO_WRITE_KEY
from shoprelay.sandbox import create_app
from shoprelay.sandbox.advisable import APP_ID
from shoprelay.sandbox.base import DEMO_KEY
from shoprelay.sandbox.goshops import PROJECT
from shoprelay.sandbox.retailrocket import PARTNER_ID

VISITOR = "0123456789abcdef0123456789abcdef"
STAMP = "2026-11-25T10:00:00+00:00"
MS = 1795611600000
MINE = ["yespo", "advisable", "retailrocket", "goshops"]


@pytest.fixture
def sandbox() -> Iterator[str]:
    with serve(create_app(MINE), lifespan="off") as url:
        yield url


def last_record(url: str, vendor: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_sandbox/{vendor}/requests").json()[-1]  # type: ignore[no-any-return]


def yespo(url: str, event: str, payload: dict[str, Any] | None = None, key: str | None = None,
          **general: Any) -> httpx.Response:
    body: dict[str, Any] = {"GeneralInfo": {"eventName": event, "siteId": DEMO_KEY,
                                            "datetime": MS, "cookies": {"sc": VISITOR},
                                            **general}}
    if payload is not None:
        body[key or event] = payload
    return httpx.post(f"{url}/yespo/api/v2", json=body)


def test_yespo_sandbox_accepts_what_its_document_allows(sandbox: str) -> None:
    # isinStock | "1" | Optional | Type: int — the table's spelling.
    assert yespo(sandbox, "ProductPage", {"Product": {
        "productKey": "1", "price": "5", "isinStock": 1}}).status_code == 200
    # ProductImpressions | Required | Type: array of objects — the table's key and type.
    assert yespo(sandbox, "ProductImpressions", [{"product_id": "1", "container_type": "9"}],
                 ).status_code == 200
    # Every customer field of CustomerData is "Optional".
    assert yespo(sandbox, "CustomerData").status_code == 200
    assert "names no customer" in last_record(sandbox, "yespo")["error"]
    # datetime | 1579622183208 | Timestamp (millisecond) — no type given.
    assert yespo(sandbox, "CategoryPage", {"Category": {"categoryKey": "3"}},
                 datetime=str(MS)).status_code == 200


def test_yespo_sandbox_refuses_a_changed_cart_under_its_old_guid(sandbox: str) -> None:
    # "An event is sent after the cart status (with a new GUID) is changed".
    def cart(guid: str, quantity: int) -> httpx.Response:
        return yespo(sandbox, "StatusCart", {"GUID": guid, "Products": [
            {"productKey": "1", "price": "5", "quantity": quantity}]})

    assert cart("G-1", 1).status_code == 200
    assert cart("G-1", 1).status_code == 200
    changed = cart("G-1", 3)
    assert changed.status_code == 400 and "with a new GUID" in changed.json()["error"]
    assert cart("G-2", 3).status_code == 200


def test_yespo_sandbox_notes_a_search_request_for_a_search_that_found_something(
        sandbox: str) -> None:
    # "Send it only if the search returned no results" — yet the example has isFound: 1.
    assert yespo(sandbox, "SearchRequest", {"search": "tea", "isFound": 0}).status_code == 200
    assert last_record(sandbox, "yespo")["error"] == ""
    assert yespo(sandbox, "SearchRequest", {"search": "tea", "isFound": 1}).status_code == 200
    assert "Send it only if the search returned no results" in \
        last_record(sandbox, "yespo")["error"]


def test_go_shops_and_retail_rocket_sandboxes_take_fields_their_documents_do_not_name(
        sandbox: str) -> None:
    data = {"event": "view", "item": "1", "customer": VISITOR, "date": STAMP, "channel": "web"}
    answer = httpx.post(f"{sandbox}/goshops/feedback", headers={"x-api-key": DEMO_KEY},
                        json={"project": PROJECT, "data": data})
    assert answer.status_code == 200
    assert "['channel']" in last_record(sandbox, "goshops")["error"]
    auth = {"apiKey": DEMO_KEY, "partnerId": PARTNER_ID}
    answer = httpx.post(f"{sandbox}/retailrocket/1.0/view", params=auth, json={
        "sessionExternalId": VISITOR, "productId": 1, "timestamp": STAMP, "price": 5})
    assert answer.status_code == 200
    assert "['price']" in last_record(sandbox, "retailrocket")["error"]
    # productIds | Да | number array.
    answer = httpx.post(f"{sandbox}/retailrocket/1.0/groupView", params=auth, json={
        "sessionExternalId": VISITOR, "groupId": 9, "productIds": [1.0, 2], "timestamp": STAMP})
    assert answer.status_code == 200, answer.text


def test_advisable_sandbox_takes_the_optional_properties_on_any_interaction(
        sandbox: str) -> None:
    # "These are all optional and are used only in some interactions as you can find in docs".
    answer = httpx.post(f"{sandbox}/advisable/v1/cart_additions",
                        headers={"x-app-id": APP_ID, "x-app-secret": DEMO_KEY},
                        json={"user_id": VISITOR, "item_id": "1", "timestamp": str(MS),
                              "price": 5, "amount": 2, "duration": 300})
    assert answer.status_code == 201, answer.text


def track(event: str, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "properties": props, "anonymousId": "shopper-1",
            "messageId": str(uuid.uuid4())}


def test_the_relay_sends_only_what_each_document_names(tmp_path: Path) -> None:
    block = {"list_id": "home-recs", "recommendation_vendor": "retailrocket"}
    session = [
        track("Product List Viewed", category_id=10, products=[{"product_id": 101}]),
        track("Product List Viewed", products=[{"product_id": 101}], **block),
        track("Product Clicked", product_id=101, **block),
        track("Product Viewed", product_id=101, price=12.5, currency="EUR", in_stock=True),
        track("Product Viewed", product_id=105, group_id=100, variant_ids=[105, 106],
              price=3),
        track("Products Searched", query="shirt", results=4),
        track("Products Searched", query="unicorn", results=0),
        track("Product Added", product_id=101, price=12.5, quantity=1, **block),
        track("Product Added", product_id=102, price=4, quantity=2),
        track("Product Removed", product_id=102),
        track("Product Added", product_id=102, price=4, quantity=2),
        track("Cart Viewed"),
        track("Product Added to Wishlist", product_id=103, price=7),
        track("Product Reviewed", product_id=101, rating=4),
        {"type": "identify", "userId": "user-1", "traits": {"email": "ada@example.com"},
         "anonymousId": "shopper-1", "messageId": str(uuid.uuid4())},
        track("Order Completed", order_id="o-1", revenue=20.5, currency="EUR", products=[
            {"product_id": 101, "price": 12.5, "quantity": 1},
            {"product_id": 102, "price": 4, "quantity": 2}]),
    ]
    with relay_stack(tmp_path, vendors=MINE) as stack:
        answer = httpx.post(f"{stack.relay_url}/v1/batch",
                            json={"writeKey": DEMO_WRITE_KEY, "batch": session}, timeout=10)
        assert answer.status_code == 200 and not answer.json()["rejected"]
        yespo_names = ["CategoryPage", "ProductPage", "ProductPage", "SearchRequest",
                       "StatusCart", "StatusCart", "StatusCart", "StatusCart", "StatusCart",
                       "AddToWishlist", "CustomerData", "PurchasedItems", "StatusCart"]
        records = stack.wait_received("yespo", len(yespo_names))
        wait_for(lambda: any("/purchases/batch" in r["path"]
                             for r in stack.received("advisable")))
        wait_for(lambda: any(r["body"]["data"]["event"] == "purchase"
                             for r in stack.received("goshops")))
        wait_for(lambda: any("order" in str(r["body"]) for r in stack.received("retailrocket")))
        assert [r["body"]["GeneralInfo"]["eventName"] for r in records] == yespo_names
        # Only the search that found nothing ("Send it only if the search returned no
        # results"), with the isFound the rule gives.
        [search] = [r["body"]["SearchRequest"] for r in records if "SearchRequest" in r["body"]]
        assert search == {"search": "unicorn", "isFound": 0}
        # Back to an earlier composition is a change too: a new GUID (the cart page view of
        # an unchanged cart keeps it).
        guids = [r["body"]["StatusCart"]["GUID"] for r in records if "StatusCart" in r["body"]]
        assert len(set(guids)) == 5 and guids[3] == guids[4] and guids[1] != guids[3]
        for vendor in MINE:
            everything = stack.received(vendor, accepted_only=False)
            # Accepted, and no note: no field a document does not name, no GUID reused for a
            # changed cart, no search sent that found something.
            assert [(r["path"], r["error"]) for r in everything if r["error"] or
                    not r["accepted"]] == [], vendor
