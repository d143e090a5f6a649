"""Retail Rocket: each example of vendor-docs/retailrocket-tracking.md from a canonical event."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from shoprelay import events as ev
from shoprelay.events import Enrichment, StoredEvent
from shoprelay.sandbox import create_app
from shoprelay.sandbox.base import DEMO_KEY
from shoprelay.sandbox.retailrocket import PARTNER_ID
from shoprelay.vendors.base import MappingError
from shoprelay.vendors.retailrocket import VENDOR, RetailRocketConfig, contact_external_id

SESSION = "60842392e4881c65e6c5e423"
STAMP = "2018-09-15T15:53:00+00:00"
CONFIG = RetailRocketConfig(partner_id="608423a9b126ac6ab3f8f0a5",
                            api_key="608423a104249fa8e9952323")


def event(name: str, props: dict[str, Any] | None = None, **enrich: Any) -> StoredEvent:
    if name in ("identify", "page"):
        message: dict[str, Any] = {"type": name}
    else:
        message = {"type": "track", "event": name, "properties": props or {}}
    message["timestamp"] = STAMP
    message.update(enrich.pop("message", {}))
    return StoredEvent("shop", message, Enrichment(visitor_id=SESSION, **enrich))


# (canonical event, method, the document's example body)
DOC_EXAMPLES = [
    (event(ev.PRODUCT_VIEWED, {"product_id": 123456, "stock_id": "NewYork"}), "view",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "timestamp": STAMP}),
    (event(ev.PRODUCT_VIEWED, {"product_id": 123456, "group_id": 654321,
                               "variant_ids": [123456, 234567, 345678], "stock_id": "NewYork"}),
     "groupView",
     {"sessionExternalId": SESSION, "groupId": 654321, "productIds": [123456, 234567, 345678],
      "stockId": "NewYork", "timestamp": STAMP}),
    (event(ev.PRODUCT_ADDED, {"product_id": "123456", "stock_id": "NewYork"}), "addToBasket",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "timestamp": STAMP}),
    (event(ev.PRODUCT_LIST_VIEWED, {"category_id": 123456, "category": "A > B"}), "categoryView",
     {"sessionExternalId": SESSION, "categoryId": 123456, "timestamp": STAMP}),
    (event(ev.ORDER_COMPLETED, {"order_id": "135243", "products": [
        {"product_id": 123456, "stock_id": "NewYork", "quantity": 2, "price": 234}]}), "order",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "quantity": 2,
      "price": 234, "transaction": "135243", "timestamp": STAMP}),
    (event(ev.PRODUCTS_SEARCHED, {"query": "подгузник для новорожденных", "stock_id": "NewYork"}),
     "search",
     {"sessionExternalId": SESSION, "searchPhrase": "подгузник для новорожденных",
      "stockId": "NewYork", "timestamp": STAMP}),
    (event(ev.IDENTIFY, message={"userId": "2342dfgf253454c645346wer3",
                                 "traits": {"email": "example@email.com"}},
           user_id="2342dfgf253454c645346wer3", new_binding=True,
           **{}), "setContact",
     {"sessionExternalId": SESSION, "contactExternalId": "2342dfgf253454c645346wer3",
      "timestamp": STAMP, "email": "example@email.com"}),
    (event(ev.PRODUCT_LIST_VIEWED, {"list_id": "568da4f6-7952-49b1-afd3-9ac44d6e78c7"}),
     "recomBlockViewed",
     {"sessionExternalId": SESSION, "recomBlockId": "568da4f6-7952-49b1-afd3-9ac44d6e78c7",
      "timestamp": STAMP}),
    (event(ev.PRODUCT_CLICKED, {"product_id": 123456, "stock_id": "NewYork",
                                "list_id": "5994d90bc7d0114fa0a26122"}), "recomTap",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "timestamp": STAMP,
      "recomBlockId": "5994d90bc7d0114fa0a26122"}),
    (event(ev.PRODUCT_ADDED, {"product_id": 123456, "stock_id": "NewYork",
                              "list_id": "5994d90bc7d0114fa0a26122"}), "recomAddToBasket",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "timestamp": STAMP,
      "recomBlockId": "5994d90bc7d0114fa0a26122"}),
    (event(ev.PROMOTION_VIEWED, {"promotion_id": "568da4f6-7952-49b1-afd3-9ac44d6e78c7"}),
     "impressionContentViewed",
     {"sessionExternalId": SESSION, "impressionContentId": "568da4f6-7952-49b1-afd3-9ac44d6e78c7",
      "timestamp": STAMP}),
    (event(ev.PROMOTION_CLICKED, {"promotion_id": "568da4f6-7952-49b1-afd3-9ac44d6e78c7"}),
     "impressionContentClicked",
     {"sessionExternalId": SESSION, "impressionContentId": "568da4f6-7952-49b1-afd3-9ac44d6e78c7",
      "timestamp": STAMP}),
]


@pytest.mark.parametrize(("stored", "method", "expected"), DOC_EXAMPLES,
                         ids=[m for _, m, _ in DOC_EXAMPLES])
def test_document_examples(stored: StoredEvent, method: str, expected: dict[str, Any]) -> None:
    [request] = VENDOR.requests_for(stored, CONFIG)
    url = urlsplit(request.url)
    assert request.method == "POST"
    assert f"{url.scheme}://{url.netloc}{url.path}" == (
        f"https://apptracking.retailrocket.net/1.0/{method}")
    assert parse_qs(url.query) == {"apiKey": [CONFIG.api_key], "partnerId": [CONFIG.partner_id]}
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == expected
    types = {k: type(v) for k, v in expected.items()}
    assert {k: type(v) for k, v in request.json.items()} == types


def test_order_makes_one_call_per_line() -> None:
    stored = event(ev.ORDER_COMPLETED, {"order_id": 77, "products": [
        {"product_id": 1, "price": 9.5, "quantity": 1}, {"product_id": "2", "price": "3",
                                                         "quantity": 4}]})
    calls = VENDOR.requests_for(stored, CONFIG)
    assert [(c.json["productId"], c.json["price"], c.json["quantity"], c.json["transaction"])
            for c in calls] == [(1, 9.5, 1, "77"), (2, 3, 4, "77")]


@pytest.mark.parametrize("name", [ev.PAGE, ev.CART_VIEWED, ev.PRODUCT_REMOVED,
                                  ev.PRODUCT_ADDED_TO_WISHLIST, ev.PRODUCT_REVIEWED])
def test_events_retail_rocket_does_not_receive(name: str) -> None:
    stored = event(name, {"product_id": 1, "rating": 4})
    assert not VENDOR.wants(stored, CONFIG)


def test_click_without_block_and_identify_without_new_binding_send_nothing() -> None:
    assert VENDOR.requests_for(event(ev.PRODUCT_CLICKED, {"product_id": 1}), CONFIG) == []
    again = event(ev.IDENTIFY, message={"userId": "u1"}, user_id="u1", new_binding=False)
    assert VENDOR.requests_for(again, CONFIG) == []


def test_timestamp_keeps_the_client_offset() -> None:
    stored = event(ev.PRODUCT_VIEWED, {"product_id": 1},
                   message={"timestamp": "2026-11-25T10:00:00.123+03:00"})
    assert VENDOR.requests_for(stored, CONFIG)[0].json["timestamp"] == "2026-11-25T10:00:00+03:00"
    utc = event(ev.PRODUCT_VIEWED, {"product_id": 1}, message={"timestamp": "2026-11-25T10:00:00Z"})
    assert VENDOR.requests_for(utc, CONFIG)[0].json["timestamp"] == "2026-11-25T10:00:00+00:00"


@pytest.mark.parametrize("props", [{"product_id": "sku-abc"}, {"product_id": True}, {}])
def test_non_integer_product_id_is_a_mapping_error(props: dict[str, Any]) -> None:
    with pytest.raises(MappingError, match="product_id"):
        VENDOR.requests_for(event(ev.PRODUCT_VIEWED, props), CONFIG)


def test_contact_external_id_is_letters_and_digits() -> None:
    assert contact_external_id("user-42@shop") == "user42shop"
    long = contact_external_id("x" * 80)
    assert long.isalnum() and len(long) <= 50
    assert contact_external_id("---").isalnum()


def test_visitor_events_batch_is_opt_in_and_merges_in_order() -> None:
    batching = RetailRocketConfig(partner_id="p", api_key="k", visitor_events=True)
    first = VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": 1}), batching)[0]
    second = VENDOR.requests_for(event(ev.PRODUCT_ADDED, {"product_id": 1}), batching)[0]
    assert first.batch_key == second.batch_key == f"visitorEvents:{SESSION}"
    assert VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": 1}), CONFIG)[0].batch_key \
        is None
    merged = VENDOR.merge([first, second], batching)
    assert urlsplit(merged.url).path.endswith("/visitorEvents")
    assert merged.json == [{"view": first.json}, {"addToBasket": second.json}]


def test_sandbox_accepts_what_the_adapter_sends_and_refuses_bad_requests() -> None:
    client = TestClient(create_app(["retailrocket"]))
    config = RetailRocketConfig(partner_id=PARTNER_ID, api_key=DEMO_KEY,
                                base_url="http://testserver/retailrocket/1.0")
    batching = RetailRocketConfig(partner_id=PARTNER_ID, api_key=DEMO_KEY, visitor_events=True,
                                  base_url="http://testserver/retailrocket/1.0")
    sent = [r for stored, _, _ in DOC_EXAMPLES for r in VENDOR.requests_for(stored, config)]
    batchable = [r for stored, _, _ in DOC_EXAMPLES for r in VENDOR.requests_for(stored, batching)
                 if r.batch_key]
    sent.append(VENDOR.merge(batchable, batching))
    for request in sent:
        answer = client.request(request.method, request.url, headers=request.headers,
                                content=request.body_bytes())
        assert answer.status_code == 200, (request.url, answer.text)

    base = "/retailrocket/1.0/view"
    good = {"sessionExternalId": "s", "productId": 1, "timestamp": STAMP}
    auth = f"apiKey={DEMO_KEY}&partnerId={PARTNER_ID}"
    cases = [
        (f"{base}?apiKey=wrong&partnerId={PARTNER_ID}", good, 401, "apiKey"),
        (f"{base}?{auth}", {**good, "productId": "1"}, 400, "productId must be integer"),
        (f"{base}?{auth}", {"productId": 1, "timestamp": STAMP}, 400, "sessionExternalId"),
        (f"{base}?{auth}", {**good, "timestamp": "2018-09-15T15:53:00"}, 400, "offset"),
        (f"/retailrocket/1.0/nope?{auth}", good, 404, "no such resource"),
    ]
    for url, body, status, reason in cases:
        answer = client.post(url, json=body)
        assert answer.status_code == status, (url, body, answer.text)
        assert reason in answer.json()["error"]
    records = client.get("/_sandbox/retailrocket/requests?refused=1").json()
    assert len(records) == len(cases)
    assert all(not r["accepted"] for r in records)


def test_sandbox_answers_429_past_the_limit() -> None:
    client = TestClient(create_app(["retailrocket"]))
    url = f"/retailrocket/1.0/view?apiKey={DEMO_KEY}&partnerId={PARTNER_ID}"
    body = {"sessionExternalId": "s", "productId": 1, "timestamp": STAMP}
    codes = [client.post(url, json=body).status_code for _ in range(55)]
    assert codes.count(200) == 50
    assert codes[50:] == [429] * 5
