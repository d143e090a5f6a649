"""Go Shops adapter and sandbox against vendor-docs/goshops-interactions.md and CONTRACT §3."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from shoprelay import events as ev
from shoprelay.events import Enrichment, StoredEvent
from shoprelay.sandbox import create_app
from shoprelay.sandbox.base import DEMO_KEY
from shoprelay.sandbox.goshops import PROJECT, SANDBOX
from shoprelay.settings import SettingsError, parse
from shoprelay.vendors.base import MappingError, RateLimit, VendorRequest
from shoprelay.vendors.goshops import VENDOR, GoShopsConfig

VISITOR = "0123456789abcdef0123456789abcdef"
USER = "user-42"
#: 14:00:00.250 at +01:00 is 13:00:00.250 UTC.
STAMP = "2026-11-25T14:00:00.250+01:00"
STAMP_UTC = "2026-11-25T13:00:00.250+00:00"
STAMP_MS = 1795611600250


def event(name: str, props: dict[str, Any] | None = None, *, timestamp: str = STAMP,
          **enrichment: Any) -> StoredEvent:
    if name in (ev.PAGE, ev.IDENTIFY):
        message: dict[str, Any] = {"type": name, "messageId": "m1", "timestamp": timestamp}
        if name == ev.PAGE:
            message.update(props or {})
        else:
            message.update({"userId": USER, "traits": props or {}})
    else:
        message = {"type": "track", "event": name, "messageId": "m1", "timestamp": timestamp,
                   "properties": props or {}}
    return StoredEvent("shop", message, Enrichment(visitor_id=VISITOR, **enrichment))


def settings(table: dict[str, Any]) -> Any:
    return parse({"relay": {"secret": "s" * 20},
                  "sites": {"shop": {"write_key": "pk_shop", "vendors": {"goshops": table}}}})


def config(**overrides: Any) -> GoShopsConfig:
    table = {"project": "p1", "api_key": "k1", **overrides}
    result = settings(table).sites["shop"].vendors["goshops"]
    assert isinstance(result, GoShopsConfig)
    return result


def bodies(stored: StoredEvent, cfg: GoShopsConfig | None = None) -> list[Any]:
    return [r.json for r in VENDOR.requests_for(stored, cfg or config())]


# --- the document's request, one row per event it lists --------------------------------------

DOC_EXAMPLES = [
    # (document event, canonical event equivalent)
    ("view", event(ev.PRODUCT_VIEWED, {"product_id": "sku-1", "price": 10})),
    ("like", event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "sku-1", "price": 10})),
    ("cart", event(ev.PRODUCT_ADDED, {"product_id": "sku-1", "quantity": 2})),
    ("purchase", event(ev.ORDER_COMPLETED, {"order_id": "o1", "total": 10,
                                            "products": [{"product_id": "sku-1"}]})),
]


@pytest.mark.parametrize(("kind", "stored"), DOC_EXAMPLES, ids=[k for k, _ in DOC_EXAMPLES])
def test_document_shape(kind: str, stored: StoredEvent) -> None:
    (request,) = VENDOR.requests_for(stored, config())
    assert request.method == "POST"
    assert request.url == "https://go-discover.goshops.com/feedback"
    assert request.headers == {"Content-Type": "application/json", "x-api-key": "k1"}
    assert request.batch_key is None
    assert request.json == {
        "project": "p1",
        "data": {"event": kind, "item": "sku-1", "customer": VISITOR, "date": STAMP_UTC},
    }
    assert all(isinstance(v, str) for v in request.json["data"].values())


# --- CONTRACT §3, Go Shops column ----------------------------------------------------------------

ORDER = {"order_id": "o1", "total": 30, "currency": "EUR",
         "products": [{"product_id": "a", "price": 10, "quantity": 1},
                      {"product_id": 7, "price": 20, "quantity": 1}]}

CONTRACT_ROWS: list[tuple[str, StoredEvent, list[tuple[str, str]]]] = [
    ("page Home", event(ev.PAGE, {"name": "Home"}), []),
    ("list (category)", event(ev.PRODUCT_LIST_VIEWED, {"category_id": "3"}), []),
    ("list (list_id)", event(ev.PRODUCT_LIST_VIEWED, {"list_id": "rb1"}), []),
    ("Product Viewed", event(ev.PRODUCT_VIEWED, {"product_id": "a"}), [("view", "a")]),
    ("Products Searched", event(ev.PRODUCTS_SEARCHED, {"query": "shoe"}), []),
    ("Product Added", event(ev.PRODUCT_ADDED, {"product_id": "a", "list_id": "rb1"},
                            list_id="rb1"), [("cart", "a")]),
    ("Product Removed", event(ev.PRODUCT_REMOVED, {"product_id": "a"}), []),
    ("Cart Viewed", event(ev.CART_VIEWED, {"cart_id": "c1"}), []),
    ("Wishlist", event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "a"}), [("like", "a")]),
    ("Product Clicked", event(ev.PRODUCT_CLICKED, {"product_id": "a", "list_id": "rb1"}), []),
    ("Promotion Viewed", event(ev.PROMOTION_VIEWED, {"promotion_id": "p"}), []),
    ("Promotion Clicked", event(ev.PROMOTION_CLICKED, {"promotion_id": "p"}), []),
    ("Product Reviewed", event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 4}), []),
    ("Order Completed", event(ev.ORDER_COMPLETED, ORDER), [("purchase", "a"), ("purchase", "7")]),
    ("identify", event(ev.IDENTIFY, {"email": "a@b.c"}, user_id=USER, new_binding=True), []),
]


@pytest.mark.parametrize(("row", "stored", "expected"), CONTRACT_ROWS,
                         ids=[r for r, _, _ in CONTRACT_ROWS])
def test_contract_row(row: str, stored: StoredEvent, expected: list[tuple[str, str]]) -> None:
    sent = bodies(stored)
    assert [(b["data"]["event"], b["data"]["item"]) for b in sent] == expected
    assert VENDOR.wants(stored, config()) is bool(expected)


def test_customer_is_the_user_once_identified() -> None:
    before = bodies(event(ev.PRODUCT_VIEWED, {"product_id": "a"}))
    after = bodies(event(ev.PRODUCT_VIEWED, {"product_id": "a"}, user_id=USER))
    assert before[0]["data"]["customer"] == VISITOR
    assert after[0]["data"]["customer"] == USER


def test_order_lines_share_the_order_date_and_customer() -> None:
    sent = bodies(event(ev.ORDER_COMPLETED, ORDER, user_id=USER))
    assert [b["data"] for b in sent] == [
        {"event": "purchase", "item": "a", "customer": USER, "date": STAMP_UTC},
        {"event": "purchase", "item": "7", "customer": USER, "date": STAMP_UTC},
    ]


@pytest.mark.parametrize(("date_format", "expected"), [
    ("iso8601", STAMP_UTC), ("epoch_ms", STAMP_MS), ("epoch_s", STAMP_MS // 1000),
])
def test_date_format(date_format: str, expected: str | int) -> None:
    sent = bodies(event(ev.PRODUCT_VIEWED, {"product_id": "a"}), config(date_format=date_format))
    assert sent[0]["data"]["date"] == expected


def test_naive_client_timestamp_is_utc_and_bad_one_falls_back_to_arrival() -> None:
    naive = bodies(event(ev.PRODUCT_VIEWED, {"product_id": "a"},
                         timestamp="2026-11-25T13:00:00.250"))
    assert naive[0]["data"]["date"] == STAMP_UTC
    bad = bodies(event(ev.PRODUCT_VIEWED, {"product_id": "a"}, timestamp="soon",
                       received_at=STAMP_MS / 1000))
    assert bad[0]["data"]["date"] == STAMP_UTC


def test_sku_stands_in_and_numeric_ids_become_strings() -> None:
    assert bodies(event(ev.PRODUCT_VIEWED, {"sku": "S-9"}))[0]["data"]["item"] == "S-9"
    assert bodies(event(ev.PRODUCT_VIEWED, {"product_id": 12.0}))[0]["data"]["item"] == "12"


def test_a_retry_is_the_same_request() -> None:
    stored = event(ev.ORDER_COMPLETED, ORDER, user_id=USER)
    first = VENDOR.requests_for(stored, config())
    again = VENDOR.requests_for(StoredEvent.from_dict(stored.to_dict()), config())
    assert first == again
    assert [VendorRequest.from_dict(r.to_dict()) for r in first] == first


@pytest.mark.parametrize(("stored", "reason"), [
    (event(ev.PRODUCT_VIEWED, {}), "product_id is required"),
    (event(ev.PRODUCT_ADDED, {"product_id": {"id": 1}}), "must be a string or number"),
    # A blank product_id is no product_id: the sku fallback applies, as in every adapter.
    (event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "  "}), "product_id is required"),
    (event(ev.PRODUCT_VIEWED, {"product_id": True}), "product_id is required"),
    (event(ev.ORDER_COMPLETED, {"order_id": "o1"}), "needs products[]"),
    (event(ev.ORDER_COMPLETED, {"order_id": "o1", "products": []}), "needs products[]"),
    (event(ev.ORDER_COMPLETED, {"order_id": "o1", "products": ["a"]}),
     "products[0] must be an object"),
    (event(ev.ORDER_COMPLETED, {"order_id": "o1", "products": [{"price": 3}]}),
     "products[0].product_id is required"),
])
def test_mapping_errors(stored: StoredEvent, reason: str) -> None:
    with pytest.raises(MappingError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        VENDOR.requests_for(stored, config())


def test_one_bad_order_line_does_not_sink_the_others() -> None:
    # The document's events include "purchase: El cliente confirmó la compra del item" — one
    # call per item, so a line that cannot be sent is dead-lettered alone, with its reason:
    # the adapter gives its refusal in its place.
    stored = event(ev.ORDER_COMPLETED, {"order_id": "o1", "products": [
        {"product_id": "a"}, {"price": 3}, {"sku": "c"}]})
    requests = VENDOR.requests_for(stored, config())
    assert [r.json["data"]["item"] if r.json else None for r in requests] == ["a", None, "c"]
    assert "products[1]" in requests[1].refusal
    with pytest.raises(MappingError, match="no line"):
        VENDOR.requests_for(event(ev.ORDER_COMPLETED, {"order_id": "o1", "products": [
            {"price": 3}]}), config())


def test_unknown_date_format_is_a_config_problem_and_never_a_silent_format() -> None:
    cfg = GoShopsConfig(project="p", api_key="k", date_format="rfc2822")
    assert set(VENDOR.check_config(cfg)) == {"date_format"}
    assert VENDOR.check_config(config()) == {}
    with pytest.raises(MappingError, match="date_format"):
        VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": "a"}), cfg)


# --- settings ----------------------------------------------------------------------------------

def test_settings_defaults_and_limits() -> None:
    cfg = config()
    assert (cfg.project, cfg.api_key, cfg.date_format, cfg.rate_limit_per_second) == (
        "p1", "k1", "iso8601", 20)
    assert VENDOR.rate_limits(cfg) == [RateLimit(20, 1.0, scope="api_key")]
    assert VENDOR.rate_limits(config(rate_limit_per_second=5)) == [
        RateLimit(5, 1.0, scope="api_key")]
    assert GoShopsConfig.secret_fields == ("api_key",)
    assert VENDOR.mask("key=k1", cfg) == "key=***"
    assert VENDOR.max_batch == 1


def test_base_url_override() -> None:
    (request,) = VENDOR.requests_for(event(ev.PRODUCT_VIEWED, {"product_id": "a"}),
                                     config(base_url="http://127.0.0.1:9001/gs/"))
    assert request.url == "http://127.0.0.1:9001/gs/feedback"


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"project": "p"}, "sites.shop.vendors.goshops.api_key", "required"),
    ({"api_key": "k"}, "sites.shop.vendors.goshops.project", "required"),
    ({"project": "p", "api_key": ""}, "sites.shop.vendors.goshops.api_key", "must not be empty"),
    ({"project": "p", "api_key": "k", "base_url": "go-discover.goshops.com"},
     "sites.shop.vendors.goshops.base_url", "not an http(s) URL"),
    ({"project": "p", "api_key": "k", "date_format": 3},
     "sites.shop.vendors.goshops.date_format", "must be a string"),
    ({"project": "p", "api_key": "k", "events": ["identify"]},
     "sites.shop.vendors.goshops.events", "not an event Go Shops receives"),
    ({"project": "p", "api_key": "k", "apikey": "k"},
     "sites.shop.vendors.goshops.apikey", "unknown key"),
])
def test_settings_refused_with_the_key(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings(table)
    assert [(p.key, reason in p.reason) for p in info.value.problems] == [(key, True)]


# --- sandbox -----------------------------------------------------------------------------------

def sandbox_client() -> tuple[TestClient, Any]:
    app = create_app(["goshops"])
    return TestClient(app), app.state.sandboxes["goshops"]


def send(client: TestClient, request: VendorRequest) -> Any:
    return client.request(request.method, request.url, headers=request.headers,
                          content=request.body_bytes())


def demo_config(**overrides: Any) -> GoShopsConfig:
    table = {**SANDBOX.demo_settings("http://testserver/goshops"), **overrides}
    result = settings(table).sites["shop"].vendors["goshops"]
    assert isinstance(result, GoShopsConfig)
    return result


def shopper_session() -> list[StoredEvent]:
    """A visitor browses, uses a recommendation block, logs in and buys."""
    return [
        event(ev.PAGE, {"name": "Home"}),
        event(ev.PRODUCT_LIST_VIEWED, {"category_id": "3", "list_id": "rb1"}),
        event(ev.PRODUCT_CLICKED, {"product_id": "a", "list_id": "rb1"}),
        event(ev.PRODUCT_VIEWED, {"product_id": "a", "price": 10}, list_id="rb1"),
        event(ev.PRODUCTS_SEARCHED, {"query": "boots", "results": 3}),
        event(ev.PRODUCT_ADDED, {"product_id": "a", "quantity": 1, "list_id": "rb1"},
              list_id="rb1"),
        event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "b", "price": 5}),
        event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 5}),
        event(ev.IDENTIFY, {"email": "a@b.c"}, user_id=USER, new_binding=True),
        event(ev.PRODUCT_VIEWED, {"product_id": 7}, user_id=USER),
        event(ev.PRODUCT_ADDED, {"product_id": 7, "quantity": 2}, user_id=USER),
        event(ev.PRODUCT_REMOVED, {"product_id": 7}, user_id=USER),
        event(ev.CART_VIEWED, {"cart_id": "c1"}, user_id=USER),
        event(ev.ORDER_COMPLETED, ORDER, user_id=USER),
    ]


@pytest.mark.parametrize("date_format", ["iso8601", "epoch_ms", "epoch_s"])
def test_sandbox_accepts_a_whole_session(date_format: str) -> None:
    client, state = sandbox_client()
    cfg = demo_config(date_format=date_format)
    requests = [r for e in shopper_session() for r in VENDOR.requests_for(e, cfg)]
    answers = [send(client, r) for r in requests]
    assert [(a.status_code, a.json()) for a in answers] == [(200, {})] * 7
    assert [r.status for r in state.records] == [200] * 7
    assert [(r.body["data"]["event"], r.body["data"]["customer"]) for r in state.records] == [
        ("view", VISITOR), ("cart", VISITOR), ("like", VISITOR),
        ("view", USER), ("cart", USER), ("purchase", USER), ("purchase", USER),
    ]
    assert all(r.path == "/goshops/feedback" for r in state.records)
    assert all(VENDOR.read_response(a.status_code, dict(a.headers), a.content).ok
               for a in answers)


def good_body() -> dict[str, Any]:
    return {"project": PROJECT,
            "data": {"event": "view", "item": "a", "customer": VISITOR, "date": STAMP_UTC}}


def post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    sent = {"x-api-key": DEMO_KEY} if headers is None else headers
    return client.post("/goshops/feedback", json=body, headers=sent)


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "x-api-key is missing or invalid"),
    ({"x-api-key": "wrong"}, "x-api-key is missing or invalid"),
    ({"X-Api-Key": "wrong"}, "x-api-key is missing or invalid"),
])
def test_sandbox_refuses_bad_auth(headers: dict[str, str], reason: str) -> None:
    client, state = sandbox_client()
    answer = post(client, good_body(), headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": reason}
    assert state.records[-1].status == 401 and not state.records[-1].accepted


def test_sandbox_refuses_another_projects_body() -> None:
    client, _ = sandbox_client()
    answer = post(client, {**good_body(), "project": "someone-else"})
    assert answer.status_code == 401
    assert "someone-else" in answer.json()["error"]


def _without(path: str) -> dict[str, Any]:
    body = good_body()
    if "." in path:
        del body["data"][path.split(".")[1]]
    else:
        del body[path]
    return body


def _with(key: str, value: Any) -> dict[str, Any]:
    body = good_body()
    body["data"][key] = value
    return body


@pytest.mark.parametrize(("body", "reason"), [
    (_without("project"), "project is required"),
    (_without("data"), "data is required"),
    (_without("data.event"), "data.event is required"),
    (_without("data.item"), "data.item is required"),
    (_without("data.customer"), "data.customer is required"),
    (_without("data.date"), "data.date is required"),
    (_with("event", "wishlist"), "data.event must be one of"),
    (_with("item", 7), "data.item must be a non-empty string"),
    (_with("customer", ["c"]), "data.customer must be a non-empty string"),
    (_with("date", "yesterday"), "data.date is not a date"),
    (_with("date", {"d": 1}), "data.date must be a date string or epoch number"),
    (_with("date", -5), "data.date must not be negative"),
    ({**good_body(), "data": "view"}, "data must be an object"),
    ([good_body(), good_body()], "body must be a JSON object"),
])
def test_sandbox_refuses_bad_bodies(body: Any, reason: str) -> None:
    client, state = sandbox_client()
    answer = post(client, body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(reason)
    assert state.records[-1].error.startswith(reason)


def test_sandbox_accepts_fields_the_document_does_not_name_and_lists_them() -> None:
    # The document lists required fields and the 400 "Alguno de los campos requeridos
    # ausente"; it forbids no others. Accepted, and shown on the record.
    client, state = sandbox_client()
    answer = post(client, {**_with("quantity", 2), "source": "web"})
    assert answer.status_code == 200
    assert state.records[-1].accepted
    assert "['source']" in state.records[-1].error
    assert "data fields the document does not name, ignored: ['quantity']" in \
        state.records[-1].error
    assert post(client, good_body()).status_code == 200 and state.records[-1].error == ""


def test_sandbox_refuses_non_json() -> None:
    client, _ = sandbox_client()
    answer = client.post("/goshops/feedback", content=b"{nope",
                         headers={"x-api-key": DEMO_KEY, "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["error"]
    plain = client.post("/goshops/feedback", content=b"{}",
                        headers={"x-api-key": DEMO_KEY, "Content-Type": "text/plain"})
    assert plain.status_code == 400


def test_sandbox_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SANDBOX, "per_second", 3)
    client, state = sandbox_client()
    statuses = [post(client, good_body()).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    last = post(client, good_body())
    assert last.status_code == 429
    assert int(last.headers["Retry-After"]) >= 1
    outcome = VENDOR.read_response(429, dict(last.headers), last.content)
    assert outcome.retry and outcome.retry_after is not None
    assert state.records[-1].error.startswith("more requests a second")


def test_sandbox_default_limit_matches_the_adapter_default() -> None:
    assert SANDBOX.per_second == config().rate_limit_per_second


@pytest.mark.parametrize("date", [
    "2026-11-25T13:00:00.000+00:00", "2026-11-25T13:00:00Z", "2026-11-25T13:00:00",
    "2026-11-25 13:00:00", "2026-11-25", 1764075600, 1764075600000, "1764075600000",
    1764075600.25])
def test_sandbox_accepts_every_reasonable_date(date: Any) -> None:
    # The document: "*date (requerido)" and nothing about its format, so the sandbox must not
    # accept only the relay's own guess (docs/vendors/goshops.md, "confirm before going live").
    client = TestClient(create_app(["goshops"]))
    body = {"project": PROJECT, "data": {"event": "view", "item": "1", "customer": "c",
                                         "date": date}}
    answer = client.post("/goshops/feedback", json=body, headers={"x-api-key": DEMO_KEY})
    assert answer.status_code == 200, answer.text
