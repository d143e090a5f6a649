"""Alana adapter and sandbox against vendor-docs/alana-events.md and CONTRACT §3."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from shoprelay import events as ev
from shoprelay.events import CartLine, Enrichment, StoredEvent
from shoprelay.sandbox import SANDBOXES, create_app
from shoprelay.sandbox.base import DEMO_KEY
from shoprelay.settings import SettingsError, parse
from shoprelay.vendors import VENDORS
from shoprelay.vendors.alana import VENDOR, AlanaConfig, check_event, reset_seconds
from shoprelay.vendors.base import MappingError, RateLimit, VendorRequest

VISITOR = "0123456789abcdef0123456789abcdef"
STAMP = "2026-03-12T10:15:30.250Z"


def config(**overrides: Any) -> AlanaConfig:
    return AlanaConfig(**{"api_key": "ak_test", **overrides})


def track(name: str, props: dict[str, Any] | None = None, **enrichment: Any) -> StoredEvent:
    message = {"type": "track", "event": name, "messageId": "m-1", "timestamp": STAMP,
               "properties": props or {}}
    return StoredEvent("shop", message, Enrichment(**{"visitor_id": VISITOR, **enrichment}))


def page(name: str | None = None, category: str | None = None, **enrichment: Any) -> StoredEvent:
    message: dict[str, Any] = {"type": "page", "messageId": "m-1", "timestamp": STAMP,
                               "properties": {}}
    if name is not None:
        message["name"] = name
    if category is not None:
        message["category"] = category
    return StoredEvent("shop", message, Enrichment(**{"visitor_id": VISITOR, **enrichment}))


def identify(user: str, new_binding: bool = True) -> StoredEvent:
    message = {"type": "identify", "messageId": "m-1", "timestamp": STAMP, "userId": user,
               "traits": {"email": "a@b.example"}}
    return StoredEvent("shop", message, Enrichment(visitor_id=VISITOR, user_id=user,
                                                   new_binding=new_binding))


def events_of(event: StoredEvent, cfg: AlanaConfig | None = None) -> list[dict[str, Any]]:
    """The Alana events an event becomes (every request carries exactly one)."""
    requests = VENDOR.requests_for(event, cfg or config())
    out = []
    for request in requests:
        assert request.method == "POST"
        assert request.url == "https://alana.shopping/api/v1/events"
        assert request.headers == {"Content-Type": "application/json", "x-api-key": "ak_test"}
        assert request.batch_key == "events"
        assert list(request.json) == ["events"] and len(request.json["events"]) == 1
        out.append(request.json["events"][0])
    return out


def without_metadata(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "metadata"}


# --- The document's examples -------------------------------------------------------------

DOC_EXAMPLES: list[tuple[str, StoredEvent, dict[str, Any]]] = [
    (
        "authentication curl: detail-page-view",
        track(ev.PRODUCT_VIEWED, {"product_id": "550e8400-e29b-41d4-a716-446655440000"},
              visitor_id="visitor-123"),
        {"eventType": "detail-page-view", "visitorId": "visitor-123",
         "productId": "550e8400-e29b-41d4-a716-446655440000"},
    ),
    (
        "request format: search with userId",
        track(ev.PRODUCTS_SEARCHED, {"query": "camiseta azul"}, visitor_id="visitor-abc",
              user_id="user-123"),
        {"eventType": "search", "visitorId": "visitor-abc", "userId": "user-123",
         "query": "camiseta azul"},
    ),
    (
        "request format: detail-page-view",
        track(ev.PRODUCT_VIEWED, {"product_id": "550e8400-e29b-41d4-a716-446655440000"},
              visitor_id="visitor-abc"),
        {"eventType": "detail-page-view", "visitorId": "visitor-abc",
         "productId": "550e8400-e29b-41d4-a716-446655440000"},
    ),
]


@pytest.mark.parametrize(("label", "event", "expected"), DOC_EXAMPLES,
                         ids=[e[0] for e in DOC_EXAMPLES])
def test_document_examples(label: str, event: StoredEvent, expected: dict[str, Any]) -> None:
    (sent,) = events_of(event)
    assert without_metadata(sent) == expected
    assert {k: type(v) for k, v in sent.items() if k != "metadata"} == {
        k: type(v) for k, v in expected.items()}
    assert isinstance(sent["metadata"], dict)


def test_document_request_format_batch_is_the_merge_of_its_two_events() -> None:
    _, search, _ = DOC_EXAMPLES[1]
    _, view, _ = DOC_EXAMPLES[2]
    cfg = config()
    requests = VENDOR.requests_for(search, cfg) + VENDOR.requests_for(view, cfg)
    merged = VENDOR.merge(requests, cfg)
    assert [without_metadata(e) for e in merged.json["events"]] == [
        {"eventType": "search", "visitorId": "visitor-abc", "userId": "user-123",
         "query": "camiseta azul"},
        {"eventType": "detail-page-view", "visitorId": "visitor-abc",
         "productId": "550e8400-e29b-41d4-a716-446655440000"},
    ]
    assert merged.url == "https://alana.shopping/api/v1/events"
    assert merged.headers["x-api-key"] == "ak_test"


#: The document's event-type table: each type with its required fields and their types.
EVENT_TYPE_TABLE: list[tuple[StoredEvent, str, dict[str, type]]] = [
    (page("Home"), "home-page-view", {}),
    (track(ev.PRODUCTS_SEARCHED, {"query": "shoes"}), "search", {"query": str}),
    (track(ev.PRODUCT_LIST_VIEWED, {"category": "Apparel > Shoes"}), "category-view",
     {"categoryPath": str}),
    (track(ev.PRODUCT_VIEWED, {"product_id": 42}), "detail-page-view", {"productId": str}),
    (track(ev.PRODUCT_ADDED, {"product_id": "p-1", "quantity": 2}), "add-to-cart",
     {"productId": str}),
    (track(ev.CART_VIEWED, {"cart_id": "c-1"}), "shopping-cart-page-view", {}),
    (track(ev.ORDER_COMPLETED, {"order_id": "o-1", "revenue": 59.9, "currency": "BRL",
                                "products": [{"product_id": "p-1", "price": 59.9}]}),
     "purchase-complete", {"productIds": list, "revenue": float, "currency": str}),
]


@pytest.mark.parametrize(("event", "event_type", "required"), EVENT_TYPE_TABLE,
                         ids=[row[1] for row in EVENT_TYPE_TABLE])
def test_event_type_table(event: StoredEvent, event_type: str,
                          required: dict[str, type]) -> None:
    (sent,) = events_of(event)
    assert sent["eventType"] == event_type
    assert sent["visitorId"] == VISITOR
    assert "userId" not in sent
    assert set(sent) == {"eventType", "visitorId", "metadata", *required}
    for key, kind in required.items():
        assert type(sent[key]) is kind, key


def test_document_response_example_is_success_without_failures() -> None:
    outcome = VENDOR.read_response(200, {"content-type": "application/json"},
                                   b'{"status": "ok", "stored": 2, "errors": 0}')
    assert outcome.ok and not outcome.retry
    assert outcome.failed_events == 0
    assert "stored 2" in outcome.detail


# --- CONTRACT §3, the Alana column -------------------------------------------------------

CONTRACT_ROWS: list[tuple[str, StoredEvent, dict[str, Any] | None]] = [
    ("page Home (name)", page("Home"), {"eventType": "home-page-view", "visitorId": VISITOR}),
    ("page Home (category)", page(category="Home"),
     {"eventType": "home-page-view", "visitorId": VISITOR}),
    ("page Home (lower case)", page("home"),
     {"eventType": "home-page-view", "visitorId": VISITOR}),
    ("page Cart", page("Cart"), None),
    ("page without name", page(), None),
    ("Product List Viewed (category)",
     track(ev.PRODUCT_LIST_VIEWED, {"category": "Apparel > Shoes", "category_id": 12}),
     {"eventType": "category-view", "visitorId": VISITOR, "categoryPath": "Apparel > Shoes"}),
    ("Product List Viewed (list_id)",
     track(ev.PRODUCT_LIST_VIEWED, {"list_id": "home-recs", "category": "Apparel"}), None),
    ("Product List Viewed (no category)", track(ev.PRODUCT_LIST_VIEWED, {"category_id": 3}),
     None),
    ("Product Viewed", track(ev.PRODUCT_VIEWED, {"product_id": "p-9", "price": 10}),
     {"eventType": "detail-page-view", "visitorId": VISITOR, "productId": "p-9"}),
    ("Products Searched", track(ev.PRODUCTS_SEARCHED, {"query": " blue shirt ", "results": 4}),
     {"eventType": "search", "visitorId": VISITOR, "query": "blue shirt"}),
    ("Products Searched (empty query)", track(ev.PRODUCTS_SEARCHED, {"query": "  "}), None),
    ("Product Added", track(ev.PRODUCT_ADDED, {"product_id": 77, "quantity": 1}),
     {"eventType": "add-to-cart", "visitorId": VISITOR, "productId": "77"}),
    ("Product Removed", track(ev.PRODUCT_REMOVED, {"product_id": "p-1"}, cart=[]), None),
    ("Cart Viewed", track(ev.CART_VIEWED, {"products": []}, cart=[CartLine("p-1")]),
     {"eventType": "shopping-cart-page-view", "visitorId": VISITOR}),
    ("Product Added to Wishlist", track(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "p-1"}),
     None),
    ("Product Clicked (list_id)", track(ev.PRODUCT_CLICKED, {"product_id": "p", "list_id": "b"}),
     None),
    ("Promotion Viewed", track(ev.PROMOTION_VIEWED, {"promotion_id": "x"}), None),
    ("Promotion Clicked", track(ev.PROMOTION_CLICKED, {"promotion_id": "x"}), None),
    ("Product Reviewed", track(ev.PRODUCT_REVIEWED, {"product_id": "p", "rating": 4}), None),
    ("Order Completed (revenue)",
     track(ev.ORDER_COMPLETED, {"order_id": "o-1", "revenue": 100, "total": 120,
                                "currency": "usd",
                                "products": [{"product_id": "a", "quantity": 1},
                                             {"product_id": 2}, {"product_id": "a"}]}),
     {"eventType": "purchase-complete", "visitorId": VISITOR, "productIds": ["a", "2"],
      "revenue": 100, "currency": "USD"}),
    ("Order Completed (total)",
     track(ev.ORDER_COMPLETED, {"order_id": "o-2", "total": "120.50", "currency": "EUR",
                                "products": [{"sku": "S-1"}]}),
     {"eventType": "purchase-complete", "visitorId": VISITOR, "productIds": ["S-1"],
      "revenue": 120.5, "currency": "EUR"}),
    ("identify", identify("user-7"), None),
    ("group", StoredEvent("shop", {"type": "group", "groupId": "g"},
                          Enrichment(visitor_id=VISITOR)), None),
]


@pytest.mark.parametrize(("label", "event", "expected"), CONTRACT_ROWS,
                         ids=[r[0] for r in CONTRACT_ROWS])
def test_contract_rows(label: str, event: StoredEvent, expected: dict[str, Any] | None) -> None:
    sent = events_of(event)
    if expected is None:
        assert sent == []
        return
    assert [without_metadata(e) for e in sent] == [expected]


@pytest.mark.parametrize("name", [ev.PRODUCT_REMOVED, ev.PRODUCT_ADDED_TO_WISHLIST,
                                  ev.PRODUCT_CLICKED, ev.PROMOTION_VIEWED, ev.PROMOTION_CLICKED,
                                  ev.PRODUCT_REVIEWED])
def test_unmapped_tracks_are_not_wanted(name: str) -> None:
    assert not VENDOR.wants(track(name, {"product_id": "p"}), config())


def test_identify_sends_nothing_but_user_id_follows() -> None:
    assert not VENDOR.wants(identify("user-7"), config())
    assert VENDOR.requests_for(identify("user-7"), config()) == []
    before = events_of(track(ev.PRODUCT_VIEWED, {"product_id": "p"}))
    after = events_of(track(ev.PRODUCT_VIEWED, {"product_id": "p"}, user_id="user-7"))
    assert "userId" not in before[0]
    assert after[0]["userId"] == "user-7"
    assert after[0]["visitorId"] == VISITOR  # the visitor id does not change on login


def test_events_allow_list_filters() -> None:
    cfg = config(events=[ev.ORDER_COMPLETED])
    assert not VENDOR.wants(track(ev.PRODUCT_VIEWED, {"product_id": "p"}), cfg)
    assert VENDOR.wants(track(ev.ORDER_COMPLETED, {}), cfg)


def test_metadata_carries_time_message_and_attribution() -> None:
    (sent,) = events_of(track(ev.PRODUCT_ADDED, {"product_id": "p", "quantity": 3,
                                                 "list_id": "ignored"},
                              list_id="home-recs", cart_id="cart-1"))
    # No listId: a block's id goes only to the vendor that served it (CONTRACT §3).
    assert sent["metadata"] == {"timestamp": "2026-03-12T10:15:30.250Z", "messageId": "m-1",
                                "quantity": 3, "cartId": "cart-1"}
    (order,) = events_of(track(ev.ORDER_COMPLETED, {"order_id": 991, "revenue": 1,
                                                    "currency": "USD",
                                                    "products": [{"product_id": "a"}]}))
    assert order["metadata"]["orderId"] == 991


def test_rendering_is_deterministic() -> None:
    event = track(ev.ORDER_COMPLETED, {"order_id": "o", "revenue": 5, "currency": "BRL",
                                       "products": [{"product_id": "a"}]}, received_at=1.0)
    first = VENDOR.requests_for(event, config())
    again = VENDOR.requests_for(StoredEvent.from_dict(event.to_dict()), config())
    assert first == again
    assert VendorRequest.from_dict(first[0].to_dict()) == first[0]


def test_default_currency_fills_a_missing_currency() -> None:
    event = track(ev.ORDER_COMPLETED, {"revenue": 5, "products": [{"product_id": "a"}]})
    (sent,) = events_of(event, config(default_currency="brl"))
    assert sent["currency"] == "BRL"


# --- Malformed events --------------------------------------------------------------------

MALFORMED: list[tuple[str, StoredEvent, str]] = [
    ("viewed without product", track(ev.PRODUCT_VIEWED, {"name": "Shirt"}), "product_id"),
    ("viewed with object id", track(ev.PRODUCT_VIEWED, {"product_id": {"id": 1}}), "product_id"),
    ("viewed with boolean id", track(ev.PRODUCT_VIEWED, {"product_id": True}), "product_id"),
    ("added without product", track(ev.PRODUCT_ADDED, {"quantity": 1}), "product_id"),
    ("category is a list", track(ev.PRODUCT_LIST_VIEWED, {"category": ["A", "B"]}), "category"),
    ("order without products", track(ev.ORDER_COMPLETED, {"revenue": 1, "currency": "USD"}),
     "products"),
    ("order with empty products",
     track(ev.ORDER_COMPLETED, {"revenue": 1, "currency": "USD", "products": []}), "products"),
    ("order line not an object",
     track(ev.ORDER_COMPLETED, {"revenue": 1, "currency": "USD", "products": ["a"]}),
     "products[0]"),
    ("order line without id",
     track(ev.ORDER_COMPLETED, {"revenue": 1, "currency": "USD", "products": [{"price": 1}]}),
     "products[0]"),
    ("order without revenue or total",
     track(ev.ORDER_COMPLETED, {"currency": "USD", "products": [{"product_id": "a"}]}),
     "revenue or total"),
    ("order with text revenue",
     track(ev.ORDER_COMPLETED, {"revenue": "lots", "currency": "USD",
                                "products": [{"product_id": "a"}]}), "revenue"),
    ("order without currency",
     track(ev.ORDER_COMPLETED, {"revenue": 1, "products": [{"product_id": "a"}]}),
     "currency"),
    ("order with bad currency",
     track(ev.ORDER_COMPLETED, {"revenue": 1, "currency": "dollars",
                                "products": [{"product_id": "a"}]}), "ISO 4217"),
    ("no visitor", track(ev.PRODUCT_VIEWED, {"product_id": "p"}, visitor_id=""), "visitor"),
]


@pytest.mark.parametrize(("label", "event", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_mapping_errors(label: str, event: StoredEvent, reason: str) -> None:
    with pytest.raises(MappingError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        VENDOR.requests_for(event, config())


# --- Batching, limits, answers -----------------------------------------------------------

def test_merge_concatenates_in_order_and_refuses_oversize() -> None:
    cfg = config(base_url="http://127.0.0.1:9/alana/")
    requests = [r for i in range(100)
                for r in VENDOR.requests_for(track(ev.PRODUCT_VIEWED, {"product_id": i}), cfg)]
    assert {r.batch_key for r in requests} == {"events"}
    merged = VENDOR.merge(requests, cfg)
    assert merged.url == "http://127.0.0.1:9/alana/api/v1/events"
    assert [e["productId"] for e in merged.json["events"]] == [str(i) for i in range(100)]
    assert VENDOR.max_batch == 100
    with pytest.raises(ValueError, match="101 events"):
        VENDOR.merge([*requests, requests[0]], cfg)


def test_rate_limits_default_and_overridden() -> None:
    assert VENDOR.rate_limits(config()) == [RateLimit(1000, 60.0, "api_key"),
                                            RateLimit(100, 60.0, "api_key+ip")]
    assert VENDOR.rate_limits(config(requests_per_minute=10, requests_per_minute_per_ip=5)) == [
        RateLimit(10, 60.0, "api_key"), RateLimit(5, 60.0, "api_key+ip")]


def test_errors_in_answer_are_failed_events() -> None:
    outcome = VENDOR.read_response(200, {}, b'{"status":"ok","stored":3,"errors":2}')
    assert outcome.ok and not outcome.retry
    assert outcome.failed_events == 2
    assert "refused 2" in outcome.detail and "stored 3" in outcome.detail


@pytest.mark.parametrize(("body", "maybe_stored"), [
    (b"<html>ok</html>", True),
    (b"", True),
    (b'{"stored": 2, "errors": 0}', True),
    (b'{"status": "error", "stored": 1, "errors": 1}', True),
    (b'{"status": "error"}', True),
    (b'{"status": "error", "stored": 0, "errors": 2}', False),
])
def test_a_2xx_without_status_ok_is_no_success(body: bytes, maybe_stored: bool) -> None:
    # "status | string | Always "ok" on success". Not a success, yet never retried or resent
    # when the answer leaves open that Alana stored some of it; a plain refusal when it says
    # it stored none.
    outcome = VENDOR.read_response(200, {}, body)
    assert not outcome.ok and not outcome.retry
    assert outcome.maybe_stored is maybe_stored


def test_check_event_keeps_to_the_document() -> None:
    assert check_event({"eventType": "home-page-view", "visitorId": "v"}) is None
    assert "productId" in str(check_event({"eventType": "add-to-cart", "visitorId": "v"}))
    assert "does not name" in str(check_event({"eventType": "home-page-view", "visitorId": "v",
                                               "productId": "p"}))
    assert "revenue" in str(check_event({"eventType": "purchase-complete", "visitorId": "v",
                                         "productIds": ["p"], "revenue": "1",
                                         "currency": "USD"}))


def test_429_honours_rate_limit_reset_as_unix_time() -> None:
    reset = str(int(time.time()) + 30)
    outcome = VENDOR.read_response(429, {"X-RateLimit-Reset": reset}, b'{"error":"slow"}')
    assert not outcome.ok and outcome.retry
    assert outcome.retry_after is not None and 28 <= outcome.retry_after <= 30
    assert "slow" in outcome.detail


def test_429_takes_the_later_of_reset_and_retry_after() -> None:
    reset = str(int(time.time()) + 10)
    outcome = VENDOR.read_response(429, {"x-ratelimit-reset": reset, "Retry-After": "45"}, b"")
    assert outcome.retry_after == 45
    outcome = VENDOR.read_response(429, {"Retry-After": "7"}, b"")
    assert outcome.retry_after == 7


def test_reset_seconds_readings() -> None:
    now = 1_800_000_000.0
    assert reset_seconds("1800000042", now) == 42
    assert reset_seconds("1800000042000", now) == 42
    assert reset_seconds("15", now) == 15
    assert reset_seconds("1799999990", now) == 0  # already past
    assert reset_seconds("soon", now) is None


@pytest.mark.parametrize(("status", "retry"), [(400, False), (401, False), (403, False),
                                               (500, True), (503, True)])
def test_error_statuses(status: int, retry: bool) -> None:
    outcome = VENDOR.read_response(status, {}, b'{"error":"nope"}')
    assert not outcome.ok
    assert outcome.retry is retry
    assert outcome.detail == f"HTTP {status}: nope"


def test_api_key_is_secret_and_masked() -> None:
    cfg = config(api_key="ak_very_secret")
    assert AlanaConfig.secret_fields == ("api_key",)
    assert VENDOR.mask("x-api-key: ak_very_secret", cfg) == "x-api-key: ***"


# --- Settings ----------------------------------------------------------------------------

def settings(alana: dict[str, Any]) -> dict[str, Any]:
    return {"relay": {"secret": "0123456789abcdef0123"},
            "sites": {"shop": {"write_key": "pk_shop", "vendors": {"alana": alana}}}}


def test_settings_defaults() -> None:
    cfg = parse(settings({"api_key": "ak_1"}), env={}).sites["shop"].vendors["alana"]
    assert isinstance(cfg, AlanaConfig)
    assert cfg.api_key == "ak_1"
    assert cfg.requests_per_minute == 1000 and cfg.requests_per_minute_per_ip == 100
    assert cfg.default_currency == "" and cfg.enabled and cfg.events == []
    assert VENDOR.base_url(cfg) == "https://alana.shopping"


def test_settings_all_keys_and_env() -> None:
    cfg = parse(settings({"api_key": "${ALANA_KEY}", "base_url": "http://127.0.0.1:9001/",
                          "requests_per_minute": 500, "requests_per_minute_per_ip": 50,
                          "default_currency": "BRL", "events": [ev.ORDER_COMPLETED]}),
                env={"ALANA_KEY": "ak_env"}).sites["shop"].vendors["alana"]
    assert isinstance(cfg, AlanaConfig)
    assert cfg.api_key == "ak_env"
    assert VENDOR.base_url(cfg) == "http://127.0.0.1:9001"
    assert (cfg.requests_per_minute, cfg.requests_per_minute_per_ip) == (500, 50)
    assert cfg.default_currency == "BRL"


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({}, "sites.shop.vendors.alana.api_key", "required"),
    ({"api_key": ""}, "sites.shop.vendors.alana.api_key", "must not be empty"),
    ({"api_key": "k", "base_url": "alana.shopping"}, "sites.shop.vendors.alana.base_url",
     "not an http(s) URL"),
    ({"api_key": "k", "base_url": "ftp://alana.shopping"}, "sites.shop.vendors.alana.base_url",
     "not an http(s) URL"),
    ({"api_key": "k", "requests_per_minute": "many"},
     "sites.shop.vendors.alana.requests_per_minute", "whole number"),
    ({"api_key": "k", "events": ["identify"]}, "sites.shop.vendors.alana.events",
     "not an event Alana receives"),
    ({"api_key": "k", "partner_id": "x"}, "sites.shop.vendors.alana.partner_id", "unknown key"),
])
def test_settings_refused(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(settings(table), env={})
    problems = {p.key: p.reason for p in info.value.problems}
    assert key in problems, problems
    assert reason in problems[key]


# --- Sandbox -----------------------------------------------------------------------------

@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(["alana"]))


def sandbox_config() -> AlanaConfig:
    table = SANDBOXES["alana"].demo_settings("http://testserver/alana")
    cfg = parse(settings(table), env={}).sites["shop"].vendors["alana"]
    assert isinstance(cfg, AlanaConfig)
    return cfg


def send(client: TestClient, request: VendorRequest) -> Any:
    return client.request(request.method, request.url, headers=request.headers,
                          content=request.body_bytes())


def records(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/_sandbox/alana/requests").json()


def session() -> list[StoredEvent]:
    """A full shopper session, enriched as the ingest layer would."""
    cart1 = [CartLine("p-1", 1, 59.9, "BRL")]
    cart2 = [*cart1, CartLine("p-2", 2, 10.0, "BRL")]
    return [
        page("Home"),
        track(ev.PRODUCT_LIST_VIEWED, {"list_id": "home-top", "products": [{"product_id": "p-1"}]}),
        track(ev.PRODUCT_CLICKED, {"product_id": "p-1", "list_id": "home-top"}),
        track(ev.PRODUCT_LIST_VIEWED, {"category": "Apparel > Shoes", "category_id": "12"}),
        track(ev.PRODUCT_VIEWED, {"product_id": "p-1", "price": 59.9, "currency": "BRL"},
              list_id="home-top"),
        track(ev.PRODUCTS_SEARCHED, {"query": "meia", "results": 3}),
        track(ev.PRODUCT_ADDED, {"product_id": "p-1", "quantity": 1, "price": 59.9},
              cart=cart1, cart_id="c-1", list_id="home-top"),
        track(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "p-3"}),
        identify("user-55"),
        track(ev.PRODUCT_ADDED, {"product_id": 2, "quantity": 2}, cart=cart2, cart_id="c-1",
              user_id="user-55"),
        track(ev.PRODUCT_REMOVED, {"product_id": 2}, cart=cart1, cart_id="c-1",
              user_id="user-55"),
        track(ev.CART_VIEWED, {"cart_id": "c-1"}, cart=cart1, cart_id="c-1", user_id="user-55"),
        page("Checkout", user_id="user-55"),
        track(ev.ORDER_COMPLETED, {"order_id": "o-1", "total": 59.9, "currency": "BRL",
                                   "products": [{"product_id": "p-1", "quantity": 1}]},
              cart=[], cart_id="c-1", user_id="user-55",
              extra={"line_list_ids": {"p-1": "home-top"}}),
    ]


def test_session_is_accepted_one_by_one(client: TestClient) -> None:
    cfg = sandbox_config()
    requests = [r for e in session() if VENDOR.wants(e, cfg) for r in VENDOR.requests_for(e, cfg)]
    assert [r.json["events"][0]["eventType"] for r in requests] == [
        "home-page-view", "category-view", "detail-page-view", "search", "add-to-cart",
        "add-to-cart", "shopping-cart-page-view", "purchase-complete"]
    for request in requests:
        response = send(client, request)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "stored": 1, "errors": 0}
        assert VENDOR.read_response(response.status_code, dict(response.headers),
                                    response.content).failed_events == 0
    seen = records(client)
    assert len(seen) == len(requests)
    assert all(r["accepted"] and r["error"] == "" for r in seen)
    assert seen[-1]["body"]["events"][0]["userId"] == "user-55"


def test_session_is_accepted_as_one_batch(client: TestClient) -> None:
    cfg = sandbox_config()
    requests = [r for e in session() for r in VENDOR.requests_for(e, cfg)]
    merged = VENDOR.merge(requests, cfg)
    response = send(client, merged)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "stored": 8, "errors": 0}
    (record,) = records(client)
    assert record["headers"]["x-api-key"] == DEMO_KEY
    assert len(record["body"]["events"]) == 8


def post(client: TestClient, body: Any, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> Any:
    return client.post("/alana/api/v1/events", params=params,
                       headers={"x-api-key": DEMO_KEY, **(headers or {})},
                       content=body if isinstance(body, bytes) else orjson.dumps(body))


GOOD = {"eventType": "home-page-view", "visitorId": VISITOR}


@pytest.mark.parametrize(("headers", "params", "reason"), [
    ({"x-api-key": ""}, None, "missing"),
    ({"x-api-key": "wrong"}, None, "not valid"),
    ({"x-api-key": ""}, {"key": "wrong"}, "not valid"),
])
def test_sandbox_refuses_bad_auth(client: TestClient, headers: dict[str, str],
                                  params: dict[str, str] | None, reason: str) -> None:
    response = client.post("/alana/api/v1/events", params=params,
                           headers={"content-type": "application/json", **headers},
                           content=orjson.dumps({"events": [GOOD]}))
    assert response.status_code == 401
    assert reason in response.json()["error"]
    (record,) = records(client)
    assert record["status"] == 401 and reason in record["error"]


def test_sandbox_accepts_key_query_parameter(client: TestClient) -> None:
    response = client.post("/alana/api/v1/events", params={"key": DEMO_KEY},
                           headers={"content-type": "application/json"},
                           content=orjson.dumps({"events": [GOOD]}))
    assert response.status_code == 200
    assert response.json()["stored"] == 1


@pytest.mark.parametrize(("body", "headers", "reason"), [
    (b"{not json", {"content-type": "application/json"}, "not valid JSON"),
    ({"events": [GOOD]}, {"content-type": "text/plain"}, "application/json"),
    ([GOOD], {"content-type": "application/json"}, '"events" array'),
    ({"event": GOOD}, {"content-type": "application/json"}, '"events" array'),
    ({"events": GOOD}, {"content-type": "application/json"}, '"events" array'),
    ({"events": []}, {"content-type": "application/json"}, "must not be empty"),
    ({"events": [GOOD] * 101}, {"content-type": "application/json"}, "at most 100"),
])
def test_sandbox_refuses_malformed_requests(client: TestClient, body: Any,
                                            headers: dict[str, str], reason: str) -> None:
    response = post(client, body, headers)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not records(client)[0]["accepted"]


def test_sandbox_accepts_exactly_100_events(client: TestClient) -> None:
    response = post(client, {"events": [GOOD] * 100}, {"content-type": "application/json"})
    assert response.json() == {"status": "ok", "stored": 100, "errors": 0}


BAD_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"visitorId": VISITOR}, "eventType must be one of"),
    ({"eventType": "page-view", "visitorId": VISITOR}, "eventType must be one of"),
    ({"eventType": "home-page-view"}, "visitorId is required"),
    ({"eventType": "home-page-view", "visitorId": 5}, "visitorId is required"),
    ({**GOOD, "userId": 7}, "userId must be a non-empty string"),
    ({**GOOD, "metadata": "x"}, "metadata must be an object"),
    ({"eventType": "search", "visitorId": VISITOR}, "search: query is required"),
    ({"eventType": "search", "visitorId": VISITOR, "query": ""}, "query must be"),
    ({"eventType": "category-view", "visitorId": VISITOR}, "categoryPath is required"),
    ({"eventType": "detail-page-view", "visitorId": VISITOR}, "productId is required"),
    ({"eventType": "detail-page-view", "visitorId": VISITOR, "productId": ""},
     "productId must be a non-empty string or an integer"),
    ({"eventType": "add-to-cart", "visitorId": VISITOR}, "add-to-cart: productId is required"),
    ({"eventType": "purchase-complete", "visitorId": VISITOR, "revenue": 1, "currency": "USD"},
     "productIds is required"),
    ({"eventType": "purchase-complete", "visitorId": VISITOR, "productIds": "a",
      "revenue": 1, "currency": "USD"}, "productIds must be a non-empty array"),
    ({"eventType": "purchase-complete", "visitorId": VISITOR, "productIds": ["a"],
      "revenue": "1", "currency": "USD"}, "revenue must be a number"),
    ({"eventType": "purchase-complete", "visitorId": VISITOR, "productIds": ["a"],
      "revenue": 1}, "currency is required"),
    ("not an object", "must be a JSON object"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("bad", "reason"), BAD_EVENTS, ids=[b[1] for b in BAD_EVENTS])
def test_sandbox_counts_bad_events_as_errors(client: TestClient, bad: Any, reason: str) -> None:
    response = post(client, {"events": [GOOD, bad, GOOD]}, {"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "stored": 2, "errors": 1}
    (record,) = records(client)
    assert record["error"].startswith("1 of 3 events refused: events[1]: ")
    assert reason in record["error"]
    outcome = VENDOR.read_response(200, dict(response.headers), response.content)
    assert outcome.ok and outcome.failed_events == 1


def test_sandbox_stores_fields_the_document_does_not_name(client: TestClient) -> None:
    # The "Event Types" table lists required fields, not the only ones allowed: an extra
    # field is stored (and named in the record), an integer productId is a reasonable reading.
    extra = {"eventType": "detail-page-view", "visitorId": VISITOR, "productId": 42,
             "price": 10}
    response = post(client, {"events": [extra]}, {"content-type": "application/json"})
    assert response.json() == {"status": "ok", "stored": 1, "errors": 0}
    (record,) = records(client)
    assert "ignored fields events[0]: ['price']" in record["error"]


def test_sandbox_notices_a_second_copy(client: TestClient) -> None:
    first = {"eventType": "add-to-cart", "visitorId": VISITOR, "productId": "p-1",
             "metadata": {"messageId": "m-1"}}
    other = {**first, "metadata": {"messageId": "m-2"}}
    for body in ({"events": [first, other]}, {"events": [other]}):
        response = post(client, body, {"content-type": "application/json"})
        assert response.json()["errors"] == 0  # Alana stores a resend again, silently
    one, two = records(client)
    assert one["copies"] == 0 and two["copies"] == 1
    assert "events[0] is copy 2 of an event already stored" in two["error"]


def test_sandbox_rate_limit_per_key_and_ip(client: TestClient) -> None:
    body = {"events": [GOOD]}
    for _ in range(100):
        assert post(client, body, {"content-type": "application/json"}).status_code == 200
    before = time.time()
    response = post(client, body, {"content-type": "application/json"})
    assert response.status_code == 429
    assert "100 requests a minute per API key and IP" in response.json()["error"]
    assert response.headers["X-RateLimit-Limit"] == "100"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert before < int(response.headers["X-RateLimit-Reset"]) <= before + 62
    outcome = VENDOR.read_response(429, dict(response.headers), response.content)
    assert outcome.retry and outcome.retry_after is not None and 1 <= outcome.retry_after <= 62
    assert records(client)[-1]["status"] == 429


def test_sandbox_rate_limit_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = SANDBOXES["alana"]
    monkeypatch.setattr(sandbox, "per_key", 3)
    client = TestClient(create_app(["alana"]))
    for _ in range(3):
        assert post(client, {"events": [GOOD]},
                    {"content-type": "application/json"}).status_code == 200
    response = post(client, {"events": [GOOD]}, {"content-type": "application/json"})
    assert response.status_code == 429
    assert "3 requests a minute per API key" in response.json()["error"]
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert "X-RateLimit-Reset" in response.headers and "Retry-After" in response.headers


def test_registered() -> None:
    assert VENDORS["alana"] is VENDOR
    assert SANDBOXES["alana"].demo_settings("http://h/alana") == {
        "base_url": "http://h/alana", "api_key": DEMO_KEY}
