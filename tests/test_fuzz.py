"""Fuzzing: random and malformed input never breaks the relay, and adapters never produce a
request their vendor's sandbox refuses. Example counts are bounded so the suite stays fast."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_fixtures import WRITE_KEY, relay_stack
from starlette.testclient import TestClient

from shoprelay import events as ev
from shoprelay.events import StoredEvent
from shoprelay.identity.state import VisitorState, apply
from shoprelay.ingest.openapi import document
from shoprelay.sandbox import SANDBOXES, demo_vendor_settings
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.settings import parse
from shoprelay.vendors import VENDORS
from shoprelay.vendors.base import MappingError

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with relay_stack(tmp_path_factory.mktemp("fuzz"), vendors=["retailrocket"],
                     forward=False) as stack:
        yield stack.relay_url


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False,
                                                                         allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=4),
    max_leaves=12)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "identify", "alias", "group", "screen",
                                 "bogus"]) | json_values,
        "event": st.sampled_from([ev.PRODUCT_VIEWED, ev.ORDER_COMPLETED, ""]) | json_values,
        "messageId": st.text(max_size=120) | json_values,
        "timestamp": st.sampled_from(["2026-11-25T10:00:00Z", "yesterday"]) | json_values,
        "userId": json_values, "anonymousId": json_values,
        "properties": json_values, "traits": json_values, "context": json_values,
    })


@FUZZ
@given(batch=st.lists(message_like | json_values, min_size=1, max_size=8))
def test_random_messages_never_cause_a_server_error(relay: str, batch: list[Any]) -> None:
    answer = httpx.post(f"{relay}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY})
    assert answer.status_code in (200, 400), answer.text
    body = answer.json()
    if answer.status_code == 200 or "rejected" in body and body["rejected"]:
        assert body["accepted"] + len(body["rejected"]) == len(batch)
        assert all(r["error"] for r in body["rejected"])


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes_get_a_4xx_with_a_reason(relay: str, raw: bytes) -> None:
    answer = httpx.post(f"{relay}/v1/batch?writeKey={WRITE_KEY}", content=raw,
                        headers={"Content-Type": "text/plain"})
    assert 400 <= answer.status_code < 500 or answer.status_code == 200
    if answer.status_code >= 400:
        assert answer.json()["error"]


@FUZZ
@given(levels=st.integers(1, 1022), where=st.sampled_from(["properties", "context", "traits"]),
       position=st.integers(0, 2), container=st.sampled_from([b"[", b'{"k":']))
def test_any_nesting_depth_is_stored_or_refused_per_message(
        relay: str, levels: int, where: str, position: int, container: bytes) -> None:
    closing = b"]" if container == b"[" else b"}"
    batch = [{"type": "track", "event": f"E{i}", "properties": {}} for i in range(3)]
    batch[position] = {"type": "identify", "userId": "u", where: {"deep": "@deep@"}}
    raw = orjson.dumps({"batch": batch, "writeKey": WRITE_KEY}).replace(
        b'"@deep@"', container * levels + b"0" + closing * levels)
    answer = httpx.post(f"{relay}/v1/batch", content=raw,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code < 500, answer.text
    body = answer.json()
    if answer.status_code == 200:
        assert body["accepted"] + len(body["rejected"]) == 3
        assert all(r["index"] == position and r["error"] for r in body["rejected"])
    else:  # beyond what JSON parsers read at all: the request, with the reason
        assert answer.status_code == 400 and "depth" in body["error"]


@FUZZ
@given(key=st.text(min_size=1, max_size=8), first=json_values, second=json_values,
       spacing=st.sampled_from([(b"", b""), (b" ", b"\n"), (b"\t", b" ")]),
       escaped=st.booleans())
def test_a_duplicate_key_is_refused_however_it_is_spelled(
        relay: str, key: str, first: Any, second: Any, spacing: tuple[bytes, bytes],
        escaped: bool) -> None:
    before, after = spacing
    name = orjson.dumps(key)
    # The same key spelled differently still names the same member: "\u0061" is "a".
    other = (b'"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c
                            for c in key).encode() + b'"') if escaped else name
    properties = (b"{" + name + before + b":" + after + orjson.dumps(first) + b"," + before
                  + other + b":" + orjson.dumps(second) + b"}")
    raw = (b'{"batch":[{"type":"track","event":"E","properties":' + properties
           + b'}],"writeKey":"' + WRITE_KEY.encode() + b'"}')
    answer = httpx.post(f"{relay}/v1/batch", content=raw,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert "duplicate key" in answer.json()["error"]


# ---- adapters against their sandboxes ---------------------------------------------------------

ids = st.integers(1, 10**9)
prices = st.floats(0.01, 10**6, allow_nan=False).map(lambda p: round(p, 2)) | st.integers(0, 10**6)
words = st.text(string.ascii_letters + string.digits + " -_äöü", min_size=1, max_size=20)
product = st.fixed_dictionaries({"product_id": ids, "price": prices},
                                 optional={"quantity": st.integers(1, 9),
                                           "currency": st.just("USD"),
                                           "name": words, "sku": words})
block = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40)


def track(event: str, props: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict]:
    return props.map(lambda p: {"type": "track", "event": event, "properties": p})


canonical = st.one_of(
    st.fixed_dictionaries({"type": st.just("page"), "name": st.sampled_from(["Home", "Cart"])}),
    track(ev.PRODUCT_LIST_VIEWED, st.fixed_dictionaries(
        {"category_id": ids, "category": words}, optional={"products": st.lists(product,
                                                                                max_size=3)})),
    track(ev.PRODUCT_LIST_VIEWED, st.fixed_dictionaries(
        {"list_id": block, "products": st.lists(product, min_size=1, max_size=3)})),
    track(ev.PRODUCT_VIEWED, product.map(lambda p: {**p, "category": "A > B"})),
    track(ev.PRODUCTS_SEARCHED, st.fixed_dictionaries({"query": words,
                                                       "results": st.integers(0, 50)})),
    track(ev.PRODUCT_ADDED, product),
    track(ev.PRODUCT_ADDED, st.tuples(product, block).map(lambda t: {**t[0], "list_id": t[1]})),
    track(ev.PRODUCT_REMOVED, product),
    track(ev.CART_VIEWED, st.fixed_dictionaries({"products": st.lists(product, max_size=3)})),
    track(ev.PRODUCT_ADDED_TO_WISHLIST, product),
    track(ev.PRODUCT_CLICKED, st.tuples(product, block).map(lambda t: {**t[0], "list_id": t[1]})),
    track(ev.PROMOTION_VIEWED, st.fixed_dictionaries({"promotion_id": block})),
    track(ev.PRODUCT_REVIEWED, st.fixed_dictionaries({"product_id": ids,
                                                      "rating": st.integers(0, 5)})),
    track(ev.ORDER_COMPLETED, st.fixed_dictionaries(
        {"order_id": ids.map(str), "revenue": prices, "currency": st.just("EUR"),
         "products": st.lists(product, min_size=1, max_size=3)})),
    st.fixed_dictionaries({"type": st.just("identify"),
                           "userId": st.text(string.ascii_letters + string.digits + "-_",
                                             min_size=1, max_size=30),
                           "traits": st.fixed_dictionaries({}, optional={
                               "email": st.emails(), "name": words})}),
)


@settings(max_examples=60, deadline=None)
@given(session=st.lists(canonical, min_size=1, max_size=12))
def test_adapters_never_send_what_their_sandbox_refuses(session: list[dict[str, Any]]) -> None:
    sandbox = TestClient(create_sandbox_app())
    tables = demo_vendor_settings("http://testserver")
    configs = parse({"relay": {"secret": "x" * 20},
                     "sites": {"s": {"write_key": "k", "vendors": tables}}}).sites["s"].vendors
    state = VisitorState()
    counter = itertools.count()
    for i, message in enumerate(session):
        message = {**message, "messageId": f"m{i}", "timestamp": "2026-11-25T10:00:00+01:00"}
        enrichment = apply(state, message, visitor_id="a" * 32, received_at=1_700_000_000 + i,
                           session_timeout=1800, new_id=lambda: f"{next(counter):032x}")
        stored = StoredEvent("s", message, enrichment)
        for name, vendor in VENDORS.items():
            config = configs[name]
            if not vendor.wants(stored, config):
                continue
            try:
                requests = vendor.requests_for(stored, config)
            except MappingError:
                continue  # refused on our side, with a reason: never sent
            for request in requests:
                if request.is_skip:
                    assert request.notes  # not sent, and the reason is recorded
                    continue
                answer = sandbox.request(request.method, request.url, headers=request.headers,
                                         content=request.body_bytes())
                assert 200 <= answer.status_code < 300, (name, request.json, answer.text)
                if name == "alana":
                    assert answer.json()["errors"] == 0, (request.json, answer.text)
    assert set(SANDBOXES) == set(VENDORS)


# ---- schemathesis against the OpenAPI document -----------------------------------------------

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def relay_for_schema(relay: str) -> str:
    return relay


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_operations_never_answer_5xx(case: schemathesis.Case, relay_for_schema: str
                                             ) -> None:
    if case.query is None or "writeKey" not in case.query:
        case.query = {**(case.query or {}), "writeKey": WRITE_KEY}
    response = case.call(base_url=relay_for_schema)
    assert response.status_code < 500, response.text
    if response.status_code == 405:                  # schemathesis tries other methods too
        assert "POST" in response.headers["allow"][0]
    elif response.status_code >= 400:
        assert "application/json" in str(response.headers.get("content-type")), (
            response.status_code, response.text)
        assert response.json().get("error") or response.json()["rejected"]
