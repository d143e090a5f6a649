"""The ingestion routes over real HTTP: CONTRACT §1, answered only once durably stored."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import orjson
import pytest
from relay_fixtures import ORIGIN, WRITE_KEY, relay_stack, routed_db, track

from shoprelay.identity.cookie import VisitorCookie


@pytest.fixture()
def stack(tmp_path: Path):
    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False) as running:
        yield running


def stored_count(tmp_path: Path) -> int:
    with routed_db(tmp_path / "spool.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def test_batch_keeps_good_messages_beside_bad_ones(stack, tmp_path: Path) -> None:
    batch = [
        track("Product Viewed", "m1", product_id=1),
        {"type": "track", "messageId": "m2"},  # no event name
        "not an object",
        {"type": "bogus", "messageId": "m4"},
        {"type": "page", "messageId": "m5", "timestamp": "yesterday"},
        {"type": "identify", "userId": "u1", "messageId": "m6"},
    ]
    answer = httpx.post(f"{stack.relay_url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY})
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 2 and body["success"] is False
    assert [(r["index"], r["messageId"]) for r in body["rejected"]] == [
        (1, "m2"), (2, None), (3, "m4"), (4, "m5")]
    assert "event name" in body["rejected"][0]["error"]
    assert "ISO-8601" in body["rejected"][3]["error"]
    assert stored_count(tmp_path) == 2


def test_all_bad_is_a_400_with_reasons(stack) -> None:
    answer = httpx.post(f"{stack.relay_url}/v1/batch",
                        json={"batch": [{"type": "track"}], "writeKey": WRITE_KEY})
    assert answer.status_code == 400
    assert answer.json()["rejected"][0]["error"] == "a track message needs an event name"


def test_write_key_from_body_basic_auth_or_query(stack, tmp_path: Path) -> None:
    message = track("Product Viewed", product_id=1)
    basic = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert httpx.post(f"{stack.relay_url}/v1/t", json=message,
                      headers={"Authorization": basic}).status_code == 200
    assert httpx.post(f"{stack.relay_url}/v1/track?writeKey={WRITE_KEY}",
                      json=message).status_code == 200
    assert httpx.post(f"{stack.relay_url}/v1/b",
                      json={"batch": [message], "writeKey": WRITE_KEY}).status_code == 200
    unknown = httpx.post(f"{stack.relay_url}/v1/track?writeKey=nope", json=message)
    assert unknown.status_code == 401 and "write key" in unknown.json()["error"]
    missing = httpx.post(f"{stack.relay_url}/v1/track", json=message)
    assert missing.status_code == 401
    assert stored_count(tmp_path) == 3


def test_text_plain_body_as_sendbeacon_sends_it(stack, tmp_path: Path) -> None:
    body = orjson.dumps({"batch": [track("Product Viewed", product_id=1)], "writeKey": WRITE_KEY})
    answer = httpx.post(f"{stack.relay_url}/v1/batch", content=body,
                        headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1


@pytest.mark.parametrize("route", ["page", "p", "identify", "i", "alias", "a", "group", "g",
                                   "screen", "s", "track", "t"])
def test_single_message_routes(stack, route: str) -> None:
    kind = {"p": "page", "i": "identify", "a": "alias", "g": "group", "s": "screen",
            "t": "track"}.get(route, route)
    message = {"writeKey": WRITE_KEY, "userId": "u1", "event": "Thing", "previousId": "x",
               "groupId": "g", "traits": {"a": 1}}
    answer = httpx.post(f"{stack.relay_url}/v1/{route}", json=message)
    assert answer.status_code == 200, answer.text
    wrong = {**message, "type": "track" if kind != "track" else "page"}
    assert httpx.post(f"{stack.relay_url}/v1/{route}", json=wrong).status_code == 400


def test_malformed_json_and_size_limits(stack) -> None:
    url = f"{stack.relay_url}/v1/batch"
    bad = httpx.post(url, content=b'{"batch": [', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    huge = {"batch": [track("X", blob="x" * 1000)] * 600, "writeKey": WRITE_KEY}
    assert httpx.post(url, json=huge).status_code == 413
    big_message = track("X", blob="x" * 33_000)
    assert httpx.post(f"{stack.relay_url}/v1/track?writeKey={WRITE_KEY}",
                      json=big_message).status_code == 413
    in_batch = httpx.post(url, json={"batch": [big_message, track("Y")], "writeKey": WRITE_KEY})
    assert in_batch.status_code == 200
    assert in_batch.json()["accepted"] == 1
    assert "limit is 32768" in in_batch.json()["rejected"][0]["error"]


def test_cookie_is_set_signed_and_kept(stack) -> None:
    url = f"{stack.relay_url}/v1/batch"
    first = httpx.post(url, json={"batch": [track("A")], "writeKey": WRITE_KEY})
    header = first.headers["set-cookie"]
    assert header.startswith("sc=") and "HttpOnly" in header and "SameSite=Lax" in header
    assert "Max-Age=63072000" in header and "Secure" not in header
    value = first.cookies["sc"]
    cookie = VisitorCookie("test-secret-of-enough-length")
    visitor = cookie.read(value, "demo")
    assert visitor and len(visitor) == 32
    again = httpx.post(url, json={"batch": [track("B")], "writeKey": WRITE_KEY},
                       cookies={"sc": value})
    assert cookie.read(again.cookies["sc"], "demo") == visitor
    tampered = httpx.post(url, json={"batch": [track("C")], "writeKey": WRITE_KEY},
                          cookies={"sc": value[:-2] + "xx"})
    assert tampered.status_code == 200
    fresh = cookie.read(tampered.cookies["sc"], "demo")
    assert fresh and fresh != visitor
    https = httpx.post(url, json={"batch": [track("D")], "writeKey": WRITE_KEY},
                       headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in https.headers["set-cookie"]  # 127.0.0.1 is not a trusted proxy here


def test_anonymous_id_without_cookie_stays_one_visitor(stack, tmp_path: Path) -> None:
    url = f"{stack.relay_url}/v1/batch"
    a = httpx.post(url, json={"batch": [{**track("A"), "anonymousId": "anon-7"}],
                              "writeKey": WRITE_KEY})
    b = httpx.post(url, json={"batch": [{**track("B"), "anonymousId": "anon-7"}],
                              "writeKey": WRITE_KEY})
    # The first request made the visitor, so it gets the cookie; the second is only an
    # anonymousId claiming that visitor: it is counted as the same visitor but gets no cookie
    # (an anonymousId is no credential; issue 12).
    assert "sc" in a.cookies and "sc" not in b.cookies
    with routed_db(tmp_path / "spool.db") as conn:
        visitors = {r[0] for r in conn.execute("SELECT visitor_id FROM messages")}
    assert len(visitors) == 1


def test_duplicate_message_ids_are_stored_once(stack, tmp_path: Path) -> None:
    url = f"{stack.relay_url}/v1/batch"
    batch = {"batch": [track("A", "dup-1"), track("A", "dup-1")], "writeKey": WRITE_KEY}
    assert httpx.post(url, json=batch).json()["accepted"] == 2
    assert httpx.post(url, json=batch).status_code == 200
    assert stored_count(tmp_path) == 1


def test_cors_for_configured_origins_only(stack) -> None:
    url = f"{stack.relay_url}/v1/batch"
    preflight = httpx.options(url, headers={"Origin": ORIGIN,
                                            "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    evil = httpx.options(url, headers={"Origin": "https://evil.example",
                                       "Access-Control-Request-Method": "POST"})
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    ok = httpx.post(url, json={"batch": [track("A")], "writeKey": WRITE_KEY},
                    headers={"Origin": ORIGIN})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.post(url, json={"batch": [track("A")], "writeKey": WRITE_KEY},
                         headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403


def test_tracker_script_is_served_with_etag(stack) -> None:
    first = httpx.get(f"{stack.relay_url}/s.js")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/javascript")
    assert "max-age" in first.headers["cache-control"]
    assert b"sendBeacon" in first.content
    again = httpx.get(f"{stack.relay_url}/s.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
