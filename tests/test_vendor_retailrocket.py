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
from shoprelay.vendors.retailrocket import (
    VENDOR,
    RetailRocketConfig,
    contact_external_id,
    user_id_of_contact,
)

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
    (event(ev.PRODUCT_LIST_VIEWED, {"list_id": "568da4f6-7952-49b1-afd3-9ac44d6e78c7",
                                    "recommendation_vendor": "retailrocket"}),
     "recomBlockViewed",
     {"sessionExternalId": SESSION, "recomBlockId": "568da4f6-7952-49b1-afd3-9ac44d6e78c7",
      "timestamp": STAMP}),
    (event(ev.PRODUCT_CLICKED, {"product_id": 123456, "stock_id": "NewYork",
                                "list_id": "5994d90bc7d0114fa0a26122",
                                "recommendation_vendor": "retailrocket"}), "recomTap",
     {"sessionExternalId": SESSION, "productId": 123456, "stockId": "NewYork", "timestamp": STAMP,
      "recomBlockId": "5994d90bc7d0114fa0a26122"}),
    (event(ev.PRODUCT_ADDED, {"product_id": 123456, "stock_id": "NewYork",
                              "list_id": "5994d90bc7d0114fa0a26122",
                              "recommendation_vendor": "retailrocket"}), "recomAddToBasket",
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
    again = event(ev.IDENTIFY, message={"userId": "u1"}, user_id="u1", new_identity=False)
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


def test_contact_external_id_is_letters_and_digits_and_never_merges_two_users() -> None:
    # "Должен состоять только из цифр и букв; Не превышать 50 символов", and it is the id "по
    # которому пользователь может быть распознан в учетной системе клиента".
    ids = ["user-42", "user_42", "user42", "USER42", "user 42", "x" * 80, "x" * 81, "---",
           "SR0xabc", "ü@mail.example", "42"]
    contacts = [contact_external_id(i) for i in ids]
    assert all(c.isascii() and c.isalnum() and len(c) <= 50 for c in contacts)
    assert len(set(contacts)) == len(ids), "two users became one contact"
    # An id that is already valid is sent unchanged.
    assert contact_external_id("user42") == "user42" and contact_external_id("42") == "42"
    # The shop can tell which user a contact is.
    for user, contact in zip(ids, contacts, strict=True):
        if not user.startswith("x" * 80):
            assert user_id_of_contact(contact) == user


def test_visitor_events_batches_across_visitors_and_keeps_only_the_table_envelopes() -> None:
    # "В теле вызова метода передается список пользовательских событий": every event carries
    # its own sessionExternalId, no one-visitor rule. On by default (50 requests/s).
    assert RetailRocketConfig(partner_id="p", api_key="k").visitor_events is True
    config = RetailRocketConfig(partner_id="p", api_key="k", batch_lanes=1)
    first = VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": 1}), config)[0]
    other = StoredEvent("shop", {"type": "track", "event": ev.PRODUCT_ADDED, "timestamp": STAMP,
                                 "properties": {"product_id": 2}},
                        Enrichment(visitor_id="another-visitor"))
    second = VENDOR.requests_for(other, config)[0]
    assert first.batch_key == second.batch_key
    merged = VENDOR.merge([first, second], config)
    assert urlsplit(merged.url).path.endswith("/visitorEvents")
    assert merged.json == [{"view": first.json}, {"addToBasket": second.json}]
    # The table lists no recom* envelope (only the example shows them): sent alone unless
    # batch_recom says Retail Rocket confirmed them.
    tap = event(ev.PRODUCT_CLICKED, {"product_id": 1, "list_id": "b1",
                                     "recommendation_vendor": "retailrocket"})
    assert VENDOR.requests_for(tap, config)[0].batch_key is None
    confirmed = RetailRocketConfig(partner_id="p", api_key="k", batch_recom=True)
    assert VENDOR.requests_for(tap, confirmed)[0].batch_key is not None
    contact = event(ev.IDENTIFY, message={"userId": "u1"}, user_id="u1", new_identity=True)
    assert VENDOR.requests_for(contact, config)[0].batch_key is None
    off = RetailRocketConfig(partner_id="p", api_key="k", visitor_events=False)
    assert VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": 1}), off)[0].batch_key \
        is None


@pytest.mark.parametrize(("props", "site_owner", "method"), [
    ({"list_id": "b1", "recommendation_vendor": "retailrocket"}, "", "recomTap"),
    ({"list_id": "b1"}, "retailrocket", "recomTap"),
    ({"list_id": "b1", "recommendation_vendor": "yespo"}, "retailrocket", None),
    ({"list_id": "b1"}, "", None),
])
def test_a_block_id_goes_only_to_the_vendor_that_served_it(props: dict, site_owner: str,
                                                            method: str | None) -> None:
    # CONTRACT §3: "A block's id reaches only the vendor that served the block".
    config = RetailRocketConfig(partner_id="p", api_key="k")
    config.site_recommendation_vendor = site_owner
    clicked = VENDOR.requests_for(event(ev.PRODUCT_CLICKED, {"product_id": 1, **props}), config)
    assert [urlsplit(r.url).path.rsplit("/", 1)[-1] for r in clicked] == (
        [method] if method else [])
    added = VENDOR.requests_for(event(ev.PRODUCT_ADDED, {"product_id": 1, **props}), config)
    assert urlsplit(added[0].url).path.endswith("recomAddToBasket" if method else "addToBasket")
    assert ("recomBlockId" in added[0].json) is bool(method)
    viewed = VENDOR.requests_for(event(ev.PRODUCT_LIST_VIEWED, props), config)
    assert len(viewed) == (1 if method else 0)


def test_an_over_long_block_id_is_cut_with_a_note_not_silently() -> None:
    # "recomBlockId - любая строка до 50 символов": cut the same way on every call of the
    # block, and recorded.
    config = RetailRocketConfig(partner_id="p", api_key="k")
    long_id = "block-" + "x" * 60
    props = {"product_id": 1, "list_id": long_id, "recommendation_vendor": "retailrocket"}
    calls = [*VENDOR.requests_for(event(ev.PRODUCT_LIST_VIEWED, props), config),
             *VENDOR.requests_for(event(ev.PRODUCT_CLICKED, props), config),
             *VENDOR.requests_for(event(ev.PRODUCT_ADDED, props), config)]
    assert [c.json["recomBlockId"] for c in calls] == [long_id[:50]] * 3
    for call in calls:
        [note] = call.notes
        assert "cut to 50 characters" in note and "66" in note
    exact = VENDOR.requests_for(event(ev.PRODUCT_CLICKED, {**props, "list_id": "b" * 50}),
                                config)
    assert exact[0].json["recomBlockId"] == "b" * 50 and exact[0].notes == ()
    # The note never rides on a plain event of the same product.
    [viewed] = VENDOR.requests_for(event(ev.PRODUCT_VIEWED, props), config)
    assert viewed.notes == () and "__notes__" not in viewed.json


def test_set_contact_on_every_new_identity_fact_and_on_an_order_with_an_email() -> None:
    # "Метод нужно вызывать при регистрации, успешной авторизации, оформлении заказа и других
    # местах интернет-магазина, когда пользователь может оставить email адрес".
    config = RetailRocketConfig(partner_id="p", api_key="k")
    guest = event(ev.IDENTIFY, message={"traits": {"email": "a@b.example"}},
                  email="a@b.example", new_identity=True)
    [call] = VENDOR.requests_for(guest, config)
    assert call.json["email"] == "a@b.example"
    assert user_id_of_contact(call.json["contactExternalId"]) == "a@b.example"
    order = event(ev.ORDER_COMPLETED, {"order_id": "1", "email": "a@b.example", "products": [
        {"product_id": 1, "price": 2, "quantity": 1}]}, email="a@b.example", new_identity=True)
    paths = [urlsplit(r.url).path.rsplit("/", 1)[-1] for r in VENDOR.requests_for(order, config)]
    assert paths == ["setContact", "order"]
    repeat = event(ev.IDENTIFY, message={"userId": "u1"}, user_id="u1")
    assert VENDOR.requests_for(repeat, config) == []


def test_one_bad_order_line_does_not_sink_the_others() -> None:
    # "Должен быть вызван для каждой товарной позиции в заказе": each line is its own call.
    stored = event(ev.ORDER_COMPLETED, {"order_id": 7, "products": [
        {"product_id": 1, "price": 2}, {"product_id": "sku-x", "price": 3},
        {"product_id": 3, "price": "n/a"}]})
    calls = VENDOR.requests_for(stored, CONFIG)
    # Each bad line keeps its place as a refusal (dead-lettered alone by delivery).
    assert [c.json["productId"] if c.json else None for c in calls] == [1, None, None]
    assert "products[1]" in calls[1].refusal and "product_id" in calls[1].refusal
    assert "products[2]" in calls[2].refusal and "price" in calls[2].refusal
    assert not calls[0].refusal and not calls[1].is_skip
    with pytest.raises(MappingError, match="no line"):
        VENDOR.requests_for(event(ev.ORDER_COMPLETED, {"order_id": 7, "products": [
            {"product_id": "sku-x", "price": 3}]}), CONFIG)


def test_hash_pii_is_refused_since_retail_rocket_mails_the_address() -> None:
    config = RetailRocketConfig(partner_id="p", api_key="k", hash_pii=True)
    assert "hash_pii" in VENDOR.check_config(config)


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


def test_sandbox_accepts_what_the_document_allows() -> None:
    # Fields a table does not name are not forbidden: accepted and listed on the record.
    # `productIds` is a "number array" (every other product id is "integer").
    client = TestClient(create_app(["retailrocket"]))
    auth = f"apiKey={DEMO_KEY}&partnerId={PARTNER_ID}"
    view = {"sessionExternalId": "s", "productId": 1, "timestamp": STAMP}
    group = {"sessionExternalId": "s", "groupId": 9, "productIds": [1, 2.0, 3.5],
             "timestamp": STAMP}
    assert client.post(f"/retailrocket/1.0/view?{auth}",
                       json={**view, "price": 5}).status_code == 200
    assert client.post(f"/retailrocket/1.0/groupView?{auth}", json=group).status_code == 200
    batch = [{"view": {**view, "color": "red"}}, {"groupView": group}]
    assert client.post(f"/retailrocket/1.0/visitorEvents?{auth}",
                       json=batch).status_code == 200
    first, second, third = client.get("/_sandbox/retailrocket/requests").json()
    assert all(r["accepted"] for r in (first, second, third))
    assert first["error"] == "body: fields the document does not name, ignored: ['price']"
    assert second["error"] == ""
    assert third["error"] == "[0].view: fields the document does not name, ignored: ['color']"
    refused = client.post(f"/retailrocket/1.0/groupView?{auth}",
                          json={**group, "productIds": ["1"]})
    assert refused.status_code == 400 and "number array" in refused.json()["error"]


def test_sandbox_answers_429_past_the_limit() -> None:
    client = TestClient(create_app(["retailrocket"]))
    url = f"/retailrocket/1.0/view?apiKey={DEMO_KEY}&partnerId={PARTNER_ID}"
    body = {"sessionExternalId": "s", "productId": 1, "timestamp": STAMP}
    codes = [client.post(url, json=body).status_code for _ in range(55)]
    assert codes.count(200) == 50
    assert codes[50:] == [429] * 5
