"""Advisable adapter and sandbox against vendor-docs/advisable-interactions.md and CONTRACT §3."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from shoprelay import events as ev
from shoprelay.events import Enrichment, StoredEvent
from shoprelay.sandbox import create_app
from shoprelay.sandbox.advisable import APP_ID, SANDBOX
from shoprelay.sandbox.base import DEMO_KEY
from shoprelay.settings import SettingsError, parse
from shoprelay.vendors.advisable import VENDOR, AdvisableConfig
from shoprelay.vendors.base import MappingError, RateLimit, VendorRequest

VISITOR = "0123456789abcdef0123456789abcdef"
USER = "user 42@shop"
STAMP = "2026-11-25T14:00:00.250+01:00"
STAMP_MS = "1795611600250"
BASE = "https://api.advisable.example"
AUTH = {"x-app-id": "app1", "x-app-secret": "secret1"}
JSON_AUTH = {"Content-Type": "application/json", **AUTH}


def event(name: str, props: dict[str, Any] | None = None, **enrichment: Any) -> StoredEvent:
    if name in (ev.PAGE, ev.IDENTIFY):
        message: dict[str, Any] = {"type": name, "messageId": "m1", "timestamp": STAMP}
        if name == ev.PAGE:
            message.update(props or {})
        else:
            message.update({"userId": enrichment.get("user_id"), "traits": props or {}})
    else:
        message = {"type": "track", "event": name, "messageId": "m1", "timestamp": STAMP,
                   "properties": props or {}}
    # A new binding here is one the rules accepted, unless a test says otherwise.
    enrichment.setdefault("binding_accepted", enrichment.get("new_binding", False))
    return StoredEvent("shop", message, Enrichment(visitor_id=VISITOR, **enrichment))


def settings(table: dict[str, Any], owner: str = "advisable") -> Any:
    # The site's recommendation blocks are Advisable's unless a test says otherwise
    # (CONTRACT §4 `recommendation_vendor`).
    return parse({"relay": {"secret": "s" * 20},
                  "sites": {"shop": {"write_key": "pk_shop", "recommendation_vendor": owner,
                                     "vendors": {"advisable": table}}}})


def config(**overrides: Any) -> AdvisableConfig:
    table = {"base_url": BASE, "app_id": "app1", "app_secret": "secret1", **overrides}
    result = settings(table).sites["shop"].vendors["advisable"]
    assert isinstance(result, AdvisableConfig)
    return result


def render(stored: StoredEvent, cfg: AdvisableConfig | None = None) -> list[VendorRequest]:
    return VENDOR.requests_for(stored, cfg or config())


# --- the document's interactions, one row per type and endpoint ----------------------------------

ORDER = {"order_id": "o1", "revenue": 40, "currency": "EUR",
         "products": [{"product_id": "a", "price": 10, "quantity": 2},
                      {"product_id": 7, "price": 20.5, "quantity": 1}]}

DOC_EXAMPLES: list[tuple[str, StoredEvent, str, Any]] = [
    ("view", event(ev.PRODUCT_VIEWED, {"product_id": "a", "duration_ms": 3400}, list_id="rb1"),
     f"{BASE}/v1/views",
     {"user_id": VISITOR, "item_id": "a", "timestamp": STAMP_MS, "recommendation_id": "rb1",
      "duration": 3400}),
    ("cart addition", event(ev.PRODUCT_ADDED, {"product_id": "a", "quantity": 1}),
     f"{BASE}/v1/cart_additions",
     {"user_id": VISITOR, "item_id": "a", "timestamp": STAMP_MS}),
    ("bookmark", event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": 12}, user_id=USER),
     f"{BASE}/v1/bookmarks",
     {"user_id": USER, "item_id": "12", "timestamp": STAMP_MS}),
    ("rating", event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 4}),
     f"{BASE}/v1/ratings",
     {"user_id": VISITOR, "item_id": "a", "timestamp": STAMP_MS, "value": 4.0}),
    ("purchase batch",
     event(ev.ORDER_COMPLETED, ORDER, user_id=USER, extra={"line_list_ids": {"7": "rb2"}}),
     f"{BASE}/v1/purchases/batch",
     [{"user_id": USER, "item_id": "a", "timestamp": STAMP_MS, "price": 10, "amount": 2},
      {"user_id": USER, "item_id": "7", "timestamp": STAMP_MS, "price": 20.5, "amount": 1,
       "recommendation_id": "rb2"}]),
]


@pytest.mark.parametrize(("kind", "stored", "url", "body"), DOC_EXAMPLES,
                         ids=[k for k, *_ in DOC_EXAMPLES])
def test_document_shape(kind: str, stored: StoredEvent, url: str, body: Any) -> None:
    (request,) = render(stored)
    assert (request.method, request.url) == ("POST", url)
    assert request.headers == JSON_AUTH
    assert request.batch_key is None
    assert request.json == body
    for item in body if isinstance(body, list) else [body]:
        assert isinstance(item["user_id"], str) and isinstance(item["item_id"], str)
        assert isinstance(item["timestamp"], str) and item["timestamp"].isdigit()


def test_document_transfer_shape() -> None:
    (request,) = render(event(ev.IDENTIFY, {"email": "a@b.c"}, user_id=USER, new_binding=True))
    assert request.method == "POST"
    assert request.url == (f"{BASE}/v1/users/{VISITOR}/interactions/transfer/user%2042%40shop"
                           "?delete_user=true")
    assert request.headers == AUTH
    assert request.json is None and request.body_bytes() == b""
    (kept,) = render(event(ev.IDENTIFY, {}, user_id="u1", new_binding=True),
                     config(transfer_delete_user=False))
    assert kept.url.endswith("/transfer/u1?delete_user=false")


# --- CONTRACT §3, Advisable column ----------------------------------------------------------------

CONTRACT_ROWS: list[tuple[str, StoredEvent, list[str]]] = [
    ("page Home", event(ev.PAGE, {"name": "Home"}), []),
    ("list (category)", event(ev.PRODUCT_LIST_VIEWED, {"category_id": "3"}), []),
    ("list (list_id)", event(ev.PRODUCT_LIST_VIEWED, {"list_id": "rb1"}), []),
    ("Product Viewed", event(ev.PRODUCT_VIEWED, {"product_id": "a"}), ["/v1/views"]),
    ("Products Searched", event(ev.PRODUCTS_SEARCHED, {"query": "shoe"}), []),
    ("Product Added", event(ev.PRODUCT_ADDED, {"product_id": "a"}), ["/v1/cart_additions"]),
    ("Product Removed", event(ev.PRODUCT_REMOVED, {"product_id": "a"}), []),
    ("Cart Viewed", event(ev.CART_VIEWED, {"cart_id": "c1"}), []),
    ("Wishlist", event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "a"}), ["/v1/bookmarks"]),
    ("Product Clicked", event(ev.PRODUCT_CLICKED, {"product_id": "a", "list_id": "rb1"}), []),
    ("Promotion Viewed", event(ev.PROMOTION_VIEWED, {"promotion_id": "p"}), []),
    ("Promotion Clicked", event(ev.PROMOTION_CLICKED, {"promotion_id": "p"}), []),
    ("Product Reviewed", event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 3}),
     ["/v1/ratings"]),
    ("Order Completed", event(ev.ORDER_COMPLETED, ORDER), ["/v1/purchases/batch"]),
    ("identify", event(ev.IDENTIFY, {}, user_id="u1", new_binding=True),
     [f"/v1/users/{VISITOR}/interactions/transfer/u1"]),
]


@pytest.mark.parametrize(("row", "stored", "paths"), CONTRACT_ROWS,
                         ids=[r for r, _, _ in CONTRACT_ROWS])
def test_contract_row(row: str, stored: StoredEvent, paths: list[str]) -> None:
    sent = render(stored)
    assert [r.url.removeprefix(BASE).split("?")[0] for r in sent] == paths
    assert VENDOR.wants(stored, config()) is bool(paths)


def test_identify_transfers_only_on_a_new_binding() -> None:
    assert render(event(ev.IDENTIFY, {}, user_id="u1")) == []
    assert render(event(ev.IDENTIFY, {}, user_id="u1", new_binding=False)) == []
    assert render(event(ev.IDENTIFY, {}, user_id=VISITOR, new_binding=True)) == []
    # The message's userId serves when the enrichment has not filled user_id in.
    stored = event(ev.IDENTIFY, {}, new_binding=True)
    stored.message["userId"] = "u9"
    assert render(stored)[0].url.endswith("/transfer/u9?delete_user=true")
    # A binding the rules did not accept (an unsigned claim on a user bound elsewhere)
    # merges nothing (issue 22).
    assert render(event(ev.IDENTIFY, {}, user_id="u1", new_binding=True,
                        binding_accepted=False, claimed_identity=True)) == []


def test_user_id_is_the_user_once_identified() -> None:
    assert render(event(ev.PRODUCT_VIEWED, {"product_id": "a"}))[0].json["user_id"] == VISITOR
    after = render(event(ev.PRODUCT_VIEWED, {"product_id": "a"}, user_id=USER))
    assert after[0].json["user_id"] == USER


@pytest.mark.parametrize(("stored", "expected"), [
    (event(ev.PRODUCT_VIEWED, {"product_id": "a"}, list_id="rb1"), "rb1"),
    (event(ev.PRODUCT_VIEWED, {"product_id": "a", "list_id": "own"}, list_id="rb1"), "own"),
    (event(ev.PRODUCT_ADDED, {"product_id": "a"}, list_id="rb1"), "rb1"),
    (event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "a"}, list_id="rb1"), "rb1"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 1, "list_id": "rb3"}), "rb3"),
    (event(ev.PRODUCT_VIEWED, {"product_id": "a"}), None),
])
def test_recommendation_id(stored: StoredEvent, expected: str | None) -> None:
    assert render(stored)[0].json.get("recommendation_id") == expected


def test_order_lines_take_their_list_ids_and_default_amount() -> None:
    order = {"order_id": "o2", "products": [{"product_id": "a", "list_id": "line"},
                                            {"product_id": "b"}, {"product_id": "c"},
                                            {"product_id": 12.0}]}
    stored = event(ev.ORDER_COMPLETED, order,
                   extra={"line_list_ids": {"a": "enriched", "b": "rb9", "12.0": "rb12"}})
    (request,) = render(stored)
    assert [(p["item_id"], p.get("recommendation_id"), p["amount"], "price" in p)
            for p in request.json] == [("a", "line", 1, False), ("b", "rb9", 1, False),
                                       ("c", None, 1, False), ("12", "rb12", 1, False)]


def test_a_line_with_a_null_quantity_is_one_piece_with_a_note() -> None:
    # `amount` is optional ("The amount of pieces if a user purchases more than one of the
    # same product"): quantity null is one piece, not a lost order.
    [request] = render(event(ev.ORDER_COMPLETED, {"products": [
        {"product_id": "a", "price": 10, "quantity": None},
        {"product_id": "b", "price": 5, "quantity": 2}]}))
    assert [(p["item_id"], p["amount"]) for p in request.json] == [("a", 1), ("b", 2)]
    assert request.notes == ("products[0].quantity is null: sent as amount 1",)


def test_a_line_advisable_cannot_take_is_left_out_not_the_order() -> None:
    first, second = VENDOR.requests_for(event(ev.ORDER_COMPLETED, {"products": [
        {"product_id": "a", "quantity": 1}, {"product_id": "b", "quantity": 0},
        {"product_id": "c"}, {"price": 3}]}), AdvisableConfig(
            app_id="i", app_secret="s", base_url="http://adv.example", purchase_batch_size=1))
    assert [p["item_id"] for p in first.json + second.json] == ["a", "c"]
    # A note travels with the batch of the next line sent (the last batch for trailing ones).
    assert first.notes == ()
    assert second.notes[0] == ("order line 1 left out: products[1].quantity must be "
                               "positive, got 0")
    assert "order line 3 left out" in second.notes[1] and "product_id" in second.notes[1]


def test_large_order_is_split_into_batches() -> None:
    order = {"order_id": "o3", "products": [{"product_id": str(i)} for i in range(5)]}
    sent = render(event(ev.ORDER_COMPLETED, order), config(purchase_batch_size=2))
    assert [[p["item_id"] for p in r.json] for r in sent] == [["0", "1"], ["2", "3"], ["4"]]


def test_review_without_rating_sends_nothing_and_numeric_strings_are_read() -> None:
    assert render(event(ev.PRODUCT_REVIEWED, {"product_id": "a", "review_body": "ok"})) == []
    assert render(event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": "4.5"}))[0].json[
        "value"] == 4.5
    assert render(event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 5}))[0].json[
        "value"] == 5.0
    # value "Should be any positive float number between 0 and 5": 0 is not sent, and why.
    (zero,) = render(event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 0}))
    assert zero.is_skip and "positive" in zero.notes[0]


@pytest.mark.parametrize("duration", ["long", -1, float("inf")])
def test_a_bad_duration_is_left_out_and_the_view_still_sent(duration: Any) -> None:
    (view,) = render(event(ev.PRODUCT_VIEWED, {"product_id": "a", "duration_ms": duration}))
    assert "duration" not in view.json and view.notes and "duration" in view.notes[0]


@pytest.mark.parametrize(("stated", "owner", "sent"), [
    ("advisable", "", True), (None, "advisable", True), ("yespo", "advisable", False),
    (None, "", False), (None, "retailrocket", False)])
def test_recommendation_id_only_for_advisable_blocks(stated: str | None, owner: str,
                                                     sent: bool) -> None:
    # recommendation_id: "the id that was returned to you along with the recommendation data".
    cfg = settings({"base_url": BASE, "app_id": "a", "app_secret": "s"}, owner).sites[
        "shop"].vendors["advisable"]
    props: dict[str, Any] = {"product_id": "a", "list_id": "b1"}
    if stated:
        props["recommendation_vendor"] = stated
    (added,) = render(event(ev.PRODUCT_ADDED, props), cfg)
    assert ("recommendation_id" in added.json) is sent


def test_custom_paths_headers_and_trailing_slash() -> None:
    cfg = config(base_url=BASE + "/", view_path="view", purchase_path="purchase",
                 app_id_header="X-Client", app_secret_header="X-Token")
    (view,) = render(event(ev.PRODUCT_VIEWED, {"product_id": "a"}), cfg)
    assert view.url == f"{BASE}/v1/view"
    assert view.headers == {"Content-Type": "application/json", "X-Client": "app1",
                            "X-Token": "secret1"}
    (batch,) = render(event(ev.ORDER_COMPLETED, ORDER), cfg)
    assert batch.url == f"{BASE}/v1/purchase/batch"


def test_a_retry_is_the_same_request() -> None:
    stored = event(ev.ORDER_COMPLETED, ORDER, user_id=USER, extra={"line_list_ids": {"a": "x"}})
    first = render(stored)
    assert render(StoredEvent.from_dict(stored.to_dict())) == first
    assert [VendorRequest.from_dict(r.to_dict()) for r in first] == first


@pytest.mark.parametrize(("stored", "reason"), [
    (event(ev.PRODUCT_VIEWED, {}), "product_id is required"),
    (event(ev.PRODUCT_ADDED, {"product_id": ["a"]}), "must be a string or number"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 6}), "between 0 and 5"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": -0.5}), "between 0 and 5"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": "good"}), "rating must be a number"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": True}), "rating must be a number"),
    (event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": "nan"}), "finite"),
    (event(ev.ORDER_COMPLETED, {"order_id": "o"}), "needs products"),
    (event(ev.ORDER_COMPLETED, {"products": "a,b"}), "needs products"),
    (event(ev.ORDER_COMPLETED, {"products": [1]}), "products.0. must be an object"),
    (event(ev.ORDER_COMPLETED, {"products": [{"product_id": "a", "price": "ten"}]}),
     "products.0..price must be a number"),
    (event(ev.ORDER_COMPLETED, {"products": [{"product_id": "a", "quantity": 0}]}),
     "quantity must be positive"),
    (event(ev.ORDER_COMPLETED, {"products": [{"price": 1}]}), "product_id is required"),
    (event(ev.IDENTIFY, {}, user_id="shop/42", new_binding=True), "cannot be a path segment"),
    (event(ev.IDENTIFY, {}, user_id="..", new_binding=True), "cannot be a path segment"),
])
def test_mapping_errors(stored: StoredEvent, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        render(stored)


# --- settings ----------------------------------------------------------------------------------

def test_settings_defaults_and_limits() -> None:
    cfg = config()
    assert (cfg.app_id_header, cfg.app_secret_header) == ("x-app-id", "x-app-secret")
    assert (cfg.view_path, cfg.cart_addition_path, cfg.bookmark_path, cfg.rating_path,
            cfg.purchase_path) == ("views", "cart_additions", "bookmarks", "ratings", "purchases")
    assert (cfg.transfer_delete_user, cfg.purchase_batch_size, cfg.rate_limit_per_second) == (
        True, 100, 20)
    assert VENDOR.rate_limits(cfg) == [RateLimit(20, 1.0, scope="app_id")]
    assert AdvisableConfig.secret_fields == ("app_secret",)
    assert VENDOR.mask(f"{cfg.app_secret_header}: secret1", cfg) == "x-app-secret: ***"
    assert VENDOR.default_base_url == "" and VENDOR.max_batch == 1
    assert VENDOR.check_config(cfg) == {}


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"app_id": "a", "app_secret": "s"}, "base_url", "required"),
    ({"base_url": BASE, "app_secret": "s"}, "app_id", "required"),
    ({"base_url": BASE, "app_id": "a"}, "app_secret", "required"),
    ({"base_url": "api.advisable.example", "app_id": "a", "app_secret": "s"}, "base_url",
     "not an http(s) URL"),
    ({"base_url": BASE, "app_id": "a", "app_secret": "s", "transfer_delete_user": "yes"},
     "transfer_delete_user", "must be true or false"),
    ({"base_url": BASE, "app_id": "a", "app_secret": "s", "view_path": 1}, "view_path",
     "must be a string"),
])
def test_settings_refused_with_the_key(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings(table)
    assert [(p.key, reason in p.reason) for p in info.value.problems] == [
        (f"sites.shop.vendors.advisable.{key}", True)]


@pytest.mark.parametrize(("overrides", "key"), [
    ({"base_url": BASE + "/v1/"}, "base_url"),
    ({"app_id_header": "x app id"}, "app_id_header"),
    ({"app_secret_header": "X-App-Id"}, "app_secret_header"),
    ({"rating_path": "v1/ratings"}, "rating_path"),
    ({"bookmark_path": ""}, "bookmark_path"),
    ({"purchase_batch_size": 0}, "purchase_batch_size"),
    ({"rate_limit_per_second": 0}, "rate_limit_per_second"),
])
def test_check_config(overrides: dict[str, Any], key: str) -> None:
    built = AdvisableConfig(**{"base_url": BASE, "app_id": "a", "app_secret": "s", **overrides})
    assert list(VENDOR.check_config(built)) == [key]
    # The settings loader refuses the same file at start, naming the key.
    with pytest.raises(SettingsError) as info:
        config(**overrides)
    assert [p.key for p in info.value.problems] == [f"sites.shop.vendors.advisable.{key}"]


# --- sandbox -----------------------------------------------------------------------------------

def sandbox_client() -> tuple[TestClient, Any]:
    app = create_app(["advisable"])
    return TestClient(app), app.state.sandboxes["advisable"]


def send(client: TestClient, request: VendorRequest) -> Any:
    return client.request(request.method, request.url, headers=request.headers,
                          content=request.body_bytes())


def demo_config() -> AdvisableConfig:
    result = settings(SANDBOX.demo_settings("http://testserver/advisable")).sites["shop"]
    cfg = result.vendors["advisable"]
    assert isinstance(cfg, AdvisableConfig)
    return cfg


def shopper_session() -> list[StoredEvent]:
    """A visitor browses, uses a recommendation block, reviews, logs in and buys."""
    return [
        event(ev.PAGE, {"name": "Home"}),
        event(ev.PRODUCT_LIST_VIEWED, {"category_id": "3", "list_id": "rb1"}),
        event(ev.PRODUCT_CLICKED, {"product_id": "a", "list_id": "rb1"}),
        event(ev.PRODUCT_VIEWED, {"product_id": "a", "price": 10, "duration_ms": 1200},
              list_id="rb1"),
        event(ev.PRODUCTS_SEARCHED, {"query": "boots", "results": 3}),
        event(ev.PRODUCT_ADDED, {"product_id": "a", "quantity": 1}, list_id="rb1"),
        event(ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": "b", "price": 5}),
        event(ev.PRODUCT_REVIEWED, {"product_id": "a", "rating": 4.5}),
        event(ev.IDENTIFY, {"email": "a@b.c"}, user_id=USER, new_binding=True),
        event(ev.IDENTIFY, {"email": "a@b.c"}, user_id=USER),
        event(ev.PRODUCT_VIEWED, {"product_id": 7}, user_id=USER),
        event(ev.PRODUCT_ADDED, {"product_id": 7, "quantity": 2}, user_id=USER),
        event(ev.PRODUCT_REMOVED, {"product_id": 7}, user_id=USER),
        event(ev.CART_VIEWED, {"cart_id": "c1"}, user_id=USER),
        event(ev.ORDER_COMPLETED, ORDER, user_id=USER,
              extra={"line_list_ids": {"a": "rb1"}}),
    ]


def test_sandbox_accepts_a_whole_session() -> None:
    client, state = sandbox_client()
    cfg = demo_config()
    requests = [r for e in shopper_session() for r in VENDOR.requests_for(e, cfg)]
    answers = [send(client, r) for r in requests]
    assert [a.status_code for a in answers] == [201, 201, 201, 201, 200, 201, 201, 201]
    assert [r.path.removeprefix("/advisable") for r in state.records] == [
        "/v1/views", "/v1/cart_additions", "/v1/bookmarks", "/v1/ratings",
        f"/v1/users/{VISITOR}/interactions/transfer/user 42@shop",
        "/v1/views", "/v1/cart_additions", "/v1/purchases/batch",
    ]
    assert all(r.accepted for r in state.records)
    # The four guest interactions moved to the user; the guest is gone.
    assert answers[4].json() == {"transferred": 4, "user_deleted": True}
    assert answers[-1].json()[0]["recommendation_id"] == "rb1"
    assert all(VENDOR.read_response(a.status_code, dict(a.headers), a.content).ok
               for a in answers)


def good(kind: str = "views") -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": VISITOR, "item_id": "a", "timestamp": STAMP_MS}
    if kind == "ratings":
        body["value"] = 3
    return body


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    sent = {"x-app-id": APP_ID, "x-app-secret": DEMO_KEY} if headers is None else headers
    return client.post(f"/advisable{path}", json=body, headers=sent)


@pytest.mark.parametrize("headers", [
    {},
    {"x-app-id": APP_ID},
    {"x-app-secret": DEMO_KEY},
    {"x-app-id": APP_ID, "x-app-secret": "wrong"},
    {"x-app-id": "other", "x-app-secret": DEMO_KEY},
])
def test_sandbox_refuses_bad_auth(headers: dict[str, str]) -> None:
    client, state = sandbox_client()
    for path, body in (("/v1/views", good()), ("/v1/purchases/batch", [good("purchases")]),
                       ("/v1/users/a/interactions/transfer/b", None)):
        answer = post(client, path, body, headers)
        assert answer.status_code == 401, path
        assert answer.json() == {"error": "app id / secret headers missing or invalid"}
    assert [r.status for r in state.records] == [401, 401, 401]


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/views", {"item_id": "a"}, "body.user_id: field required"),
    ("/v1/cart_additions", {"user_id": "u"}, "body.item_id: field required"),
    ("/v1/ratings", good(), "body.value: field required"),
    ("/v1/bookmarks", {**good(), "item_id": 7}, "body.item_id: must be a non-empty string"),
    ("/v1/views", {**good(), "user_id": ""}, "body.user_id: must be a non-empty string"),
    ("/v1/views", {**good(), "timestamp": "2026-11-25"}, "body.timestamp: must be epoch ms"),
    ("/v1/views", {**good(), "timestamp": 1795611600}, "body.timestamp: 1795611600 looks like"),
    ("/v1/views", {**good(), "recommendation_id": 5}, "body.recommendation_id: must be a string"),
    ("/v1/views", {**good(), "duration": "3s"}, "body.duration: must be a number"),
    ("/v1/ratings", {**good(), "value": 5.5}, "body.value: must be between 0 and 5"),
    ("/v1/ratings", {**good(), "value": -1}, "body.value: must be between 0 and 5"),
    ("/v1/ratings", {**good(), "value": "4"}, "body.value: must be a number"),
    ("/v1/purchases", {**good(), "amount": 0}, "body.amount: out of range"),
    ("/v1/purchases", {**good(), "price": -1}, "body.price: out of range"),
    ("/v1/cart_additions", {**good(), "colour": 1}, "body: unknown fields ['colour']"),
    ("/v1/views", {**good(), "value": 3}, "body: unknown fields ['value']"),
    ("/v1/bookmarks", {**good(), "amount": 0}, "body.amount: out of range"),
    ("/v1/views", [good()], "body: expected a JSON object"),
    ("/v1/purchases/batch", [], "body: purchases/batch takes a non-empty JSON array"),
    ("/v1/purchases/batch", good(), "body: purchases/batch takes a non-empty JSON array"),
    ("/v1/purchases/batch", [good(), {"user_id": "u"}], "body[1].item_id: field required"),
    ("/v1/purchases/batch", [{**good(), "amount": "2"}], "body[0].amount: must be a number"),
    ("/v1/purchases/batch", [good()] * 101, "body: at most 100 purchases a batch, got 101"),
    ("/v1/users/u1/interactions/transfer/u1", None, "from_user_id and to_user_id are the same"),
    ("/v1/users/u1/interactions/transfer/u2?delete_user=maybe", None, "delete_user: must be"),
])
def test_sandbox_refuses_bad_bodies(path: str, body: Any, reason: str) -> None:
    client, state = sandbox_client()
    answer = post(client, path, body)
    assert answer.status_code == 422
    assert answer.json()["error"].startswith(reason)
    assert state.records[-1].error.startswith(reason) and not state.records[-1].accepted


def test_sandbox_accepts_both_timestamp_forms_and_full_batch() -> None:
    client, _ = sandbox_client()
    assert post(client, "/v1/views", {**good(), "timestamp": int(STAMP_MS)}).status_code == 201
    assert post(client, "/v1/views", {"user_id": "u", "item_id": "a"}).status_code == 201
    full = post(client, "/v1/purchases/batch", [good("purchases")] * 100)
    assert full.status_code == 201 and len(full.json()) == 100


@pytest.mark.parametrize("path", ["/v1/views", "/v1/cart_additions", "/v1/bookmarks",
                                  "/v1/ratings", "/v1/purchases"])
def test_sandbox_accepts_the_optional_properties_on_every_interaction(path: str) -> None:
    # "These are all optional and are used only in some interactions as you can find in
    # docs": which ones is not said, so none refuses them.
    client, _ = sandbox_client()
    body = {**good("ratings" if path.endswith("ratings") else "views"), "price": 9.5,
            "amount": 2, "duration": 1200}
    assert post(client, path, body).status_code == 201


def test_sandbox_refuses_non_json_and_unknown_paths() -> None:
    client, state = sandbox_client()
    auth = {"x-app-id": APP_ID, "x-app-secret": DEMO_KEY}
    broken = client.post("/advisable/v1/views", content=b"{nope",
                         headers={**auth, "Content-Type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["error"]
    plain = client.post("/advisable/v1/views", content=b"{}",
                        headers={**auth, "Content-Type": "text/plain"})
    assert plain.status_code == 422
    assert post(client, "/v1/likes", good()).status_code == 404
    assert post(client, "/v2/views", good()).status_code == 404
    assert client.get("/advisable/v1/views", headers=auth).status_code == 404
    assert [r.status for r in state.records] == [422, 422, 404, 404, 404]


def test_sandbox_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SANDBOX, "per_second", 3)
    client, state = sandbox_client()
    statuses = [post(client, "/v1/views", good()).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    last = post(client, "/v1/purchases/batch", [good("purchases")])
    assert last.status_code == 429 and int(last.headers["Retry-After"]) >= 1
    outcome = VENDOR.read_response(429, dict(last.headers), last.content)
    assert outcome.retry and outcome.retry_after is not None
    assert state.records[-1].error.startswith("more requests a second")


def test_sandbox_limits_match_the_adapter_defaults() -> None:
    cfg = config()
    assert SANDBOX.per_second == cfg.rate_limit_per_second
    assert SANDBOX.max_batch == cfg.purchase_batch_size


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("POST", "/v1/view", {"x-app-id": APP_ID, "x-app-secret": DEMO_KEY}),
    ("POST", "/v1/cart-additions", {"app-id": APP_ID, "app-secret": DEMO_KEY}),
    ("POST", "/v1/bookmark", {"x-app-id": APP_ID, "Authorization": f"Bearer {DEMO_KEY}"}),
    ("PUT", "/v1/users/a/interactions/transfer/b",
     {"x-application-id": APP_ID, "x-application-secret": DEMO_KEY}),
    ("PATCH", "/v1/users/a/interactions/transfer/b", {"x-app-id": APP_ID,
                                                      "x-app-secret": DEMO_KEY}),
])
def test_sandbox_accepts_every_reasonable_reading(method: str, path: str,
                                                  headers: dict[str, str]) -> None:
    # "its base URL, auth header names and exact plural path names are not public": the
    # sandbox accepts each plausible reading, not only the relay's defaults.
    client, _ = sandbox_client()
    body = None if "transfer" in path else good("views")
    answer = client.request(method, f"/advisable{path}", headers={
        **headers, "Content-Type": "application/json"},
        content=b"" if body is None else orjson.dumps(body))
    assert answer.status_code in (200, 201), answer.text


def test_transfer_method_setting() -> None:
    cfg = config(transfer_method="PUT")
    (transfer,) = render(StoredEvent("shop", {"type": "identify", "userId": "u1"},
                                     Enrichment(visitor_id="v1", user_id="u1",
                                                new_binding=True, binding_accepted=True)),
                         cfg)
    assert transfer.method == "PUT"
    assert "transfer_method" in VENDOR.check_config(
        AdvisableConfig(base_url=BASE, app_id="a", app_secret="s", transfer_method="GET"))
