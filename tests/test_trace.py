"""Traces over real HTTP: for each outcome a shop developer asks about, a message is sent to a
real relay delivering to the sandboxes, and its trace (from /debug/trace, and from the
`shoprelay trace` command for the JSON and by-order/by-visitor look-ups) explains it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from servers import wait_for
from test_delivery_support import (
    BROWSER_UA,
    WRITE_KEY,
    Relay,
    fault,
    post,
    relay,
    sandbox,
    view,
    wait_delivered,
    write_settings,
)

from shoprelay.delivery.forwarder import DeliveryOptions

TOKEN = "trace-admin-token-0123456789"
VENDORS = ["goshops", "retailrocket"]


@contextmanager
def stack(tmp_path: Path, *, forward: bool = True, relay_table: dict[str, Any] | None = None,
          overrides: dict[str, dict[str, Any]] | None = None,
          retry: float = 0.2) -> Iterator[tuple[Relay, str]]:
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=VENDORS,
                             relay={"admin_token": TOKEN, **(relay_table or {})},
                             overrides=overrides)
        options = DeliveryOptions(idle_poll=0.1, first_retry=retry, max_retry=retry * 2,
                                  timeout=5.0)
        with relay(cfg, delivery=options, forward=forward) as r:
            yield r, sb


def traces(r: Relay, **query: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{r.url}/debug/trace", params=query,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["traces"])


def outcome(r: Relay, message_id: str, vendor: str) -> dict[str, Any]:
    [trace] = traces(r, message_id=message_id)
    return dict(trace["vendors"][vendor])


def test_a_sent_event_shows_the_request_with_secrets_masked_the_answer_and_time(
        tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        post(r.url, [view(1, visitor="a")])
        wait_delivered(sb, "goshops", {1})
        sent = wait_for(lambda: (o := outcome(r, "m1", "goshops"))["outcome"] == "sent" and o)
        assert sent["status"] == 200 and sent["at"] and sent["reason"] is None
        assert sent["request"].startswith("POST http://127.0.0.1")
        assert sent["answer"] is not None
        # Retail Rocket takes its key in the URL: the trace shows it masked.
        wait_delivered(sb, "retailrocket", {1})
        rr = wait_for(lambda: (o := outcome(r, "m1", "retailrocket"))["outcome"] == "sent"
                      and o)
        secret = r.app.state.settings.sites["shop"].vendors["retailrocket"].api_key
        assert secret not in rr["request"] and "apiKey=" in rr["request"]


def test_no_mapping_for_this_vendor(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        # Retail Rocket has no call for a cart view (its document lists none).
        post(r.url, [{"type": "track", "event": "Cart Viewed", "messageId": "c1",
                      "anonymousId": "a", "properties": {"products": []}}])
        got = outcome(r, "c1", "retailrocket")
        assert got["outcome"] == "not sent"
        assert got["reason"] == "no mapping: retailrocket has no mapping for 'Cart Viewed'"


def test_not_in_the_vendors_events_allow_list(tmp_path: Path) -> None:
    with stack(tmp_path, overrides={"goshops": {"events": ["Order Completed"]}}) as (r, sb):
        post(r.url, [view(1, visitor="a")])
        got = outcome(r, "m1", "goshops")
        assert (got["outcome"], got["reason"]) == ("not sent",
                                                   "not in goshops's events allow-list")


def test_consent_refused_names_the_category(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        message = view(1, visitor="a")
        message["context"] = {"consent": {"marketing": False}}
        post(r.url, [message])
        got = outcome(r, "m1", "goshops")
        assert got["reason"] == "consent refused for category 'marketing'"


def test_held_back_as_a_bot(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        answer = httpx.post(f"{r.url}/v1/batch",
                            json={"batch": [view(1, visitor="a")], "writeKey": WRITE_KEY},
                            headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot)"})
        assert answer.status_code == 200
        [trace] = traces(r, message_id="m1")
        assert trace["bot"] is True
        assert {v["reason"] for v in trace["vendors"].values()} == {
            "held back as a bot (forward_bots = false)"}


def test_deduplicated_as_a_resend(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        post(r.url, [view(1, visitor="a")])
        post(r.url, [view(1, visitor="a")])
        wait_delivered(sb, "goshops", {1})
        [trace] = traces(r, message_id="m1")
        assert [n["note"] for n in trace["notes"]] == [
            "deduplicated: a resend of this messageId (stored once, sent once)"]


def test_deduplicated_as_an_order_already_seen_by_order_id(tmp_path: Path) -> None:
    order = {"type": "track", "event": "Order Completed", "anonymousId": "a",
             "properties": {"order_id": "A-9", "total": 5, "currency": "USD",
                            "products": [{"product_id": 1, "price": 5, "quantity": 1}]}}
    with stack(tmp_path) as (r, sb):
        post(r.url, [dict(order, messageId="first")])
        post(r.url, [dict(order, messageId="again")])
        found = {t["messageId"]: t for t in traces(r, order_id="A-9")}
        assert set(found) == {"first", "again"}
        assert found["again"]["stored"] is False
        assert found["again"]["vendors"]["goshops"]["reason"] == (
            "deduplicated: order A-9 was already reported by message first")


def test_vendor_paused(tmp_path: Path) -> None:
    """The pause state is read through `PauseState.pause_reason` on the forwarder (issue 13
    keeps it there); here the relay stores without delivering and the pause is set on it."""
    with stack(tmp_path, forward=False) as (r, sb):
        post(r.url, [view(1, visitor="a")])
        forwarder = r.app.state.forwarder
        forwarder.pause_reason = (lambda site, vendor: "HTTP 401: the api_key was refused"
                                  if vendor == "goshops" else None)
        got = outcome(r, "m1", "goshops")
        assert (got["outcome"], got["reason"]) == (
            "paused", "vendor paused: HTTP 401: the api_key was refused")
        assert outcome(r, "m1", "retailrocket")["outcome"] == "queued"


def test_waiting_for_a_retry_says_when(tmp_path: Path) -> None:
    with stack(tmp_path, retry=60) as (r, sb):
        fault(sb, "goshops", kind="status", status=503, count=5)
        post(r.url, [view(1, visitor="a")])
        got = wait_for(lambda: (o := outcome(r, "m1", "goshops"))["outcome"] == "retrying" and o)
        assert got["status"] == 503 and got["next_at"]
        assert got["reason"].startswith(f"waiting for a retry at {got['next_at']} (attempt 2)")
        assert "last failure: HTTP 503" in got["reason"]


def test_dead_lettered_says_why(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        fault(sb, "goshops", kind="status", status=400, count=1)
        post(r.url, [view(1, visitor="a")])
        got = wait_for(lambda: (o := outcome(r, "m1", "goshops"))["outcome"] == "dead-lettered"
                       and o)
        assert got["reason"] == "dead-lettered: HTTP 400" and got["status"] == 400
        assert "injected fault" in got["answer"]


def test_the_command_finds_by_message_order_and_visitor_newest_first(tmp_path: Path) -> None:
    with stack(tmp_path) as (r, sb):
        answer = post(r.url, [view(1, visitor="a"), view(2, visitor="a")])
        visitor = httpx.Cookies(answer.cookies).get("sc")
        assert visitor
        wait_delivered(sb, "goshops", {1, 2})
        cfg = str(tmp_path / "s.toml")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "shoprelay", "trace", "--config", cfg,
                                   *args], capture_output=True, text=True, timeout=60)

        one = run("m2", "--json")
        assert one.returncode == 0, one.stderr
        [trace] = orjson.loads(one.stdout)
        assert trace["messageId"] == "m2" and trace["event"] == "Product Viewed"
        assert trace["vendors"]["goshops"]["outcome"] == "sent"
        visitor_id = trace["visitor_id"]
        text = run("--visitor", visitor_id)
        assert text.returncode == 0
        assert text.stdout.index("messageId=m2") < text.stdout.index("messageId=m1")
        assert "goshops" in text.stdout and "sent" in text.stdout
        missing = run("nope")
        assert missing.returncode == 1 and "no such message" in missing.stderr


@pytest.mark.parametrize("query", [{}, {"message_id": "m1", "order_id": "x"}])
def test_the_trace_route_needs_one_key_and_the_token(tmp_path: Path,
                                                     query: dict[str, str]) -> None:
    with stack(tmp_path) as (r, sb):
        assert httpx.get(f"{r.url}/debug/trace", params={"message_id": "m1"},
                         headers={"User-Agent": BROWSER_UA}).status_code == 401
        answer = httpx.get(f"{r.url}/debug/trace", params=query,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 400 and "give one of" in answer.json()["error"]
