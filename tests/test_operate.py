"""Operating the relay: health, readiness, metrics, the live debugger, edges, request ids."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from relay_fixtures import WRITE_KEY, relay_stack, track
from servers import wait_for

TOKEN = "admin-token-0123456789abcdef"


def with_admin(table: dict[str, Any]) -> None:
    table["relay"]["admin_token"] = TOKEN


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


@pytest.fixture()
def stack(tmp_path: Path):
    with relay_stack(tmp_path, vendors=["retailrocket", "goshops"], adjust=with_admin) as running:
        yield running


def test_health_and_readiness(stack) -> None:
    assert httpx.get(f"{stack.relay_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.relay_url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


def test_readiness_fails_when_a_backlog_grows_old(tmp_path: Path) -> None:
    def strict(table: dict[str, Any]) -> None:
        table["relay"]["ready_max_backlog_seconds"] = 0.5
        table["relay"]["admin_token"] = TOKEN

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False, adjust=strict) as stack:
        httpx.post(f"{stack.relay_url}/v1/batch",
                   json={"batch": [track("Product Viewed", product_id=1)], "writeKey": WRITE_KEY})
        answer = wait_for(lambda: (r := httpx.get(f"{stack.relay_url}/readyz")).status_code == 503
                          and r)
        # Open to load balancers, it says no more than that; the operator's token, the rest.
        assert answer.json() == {"status": "not_ready"}
        answer = httpx.get(f"{stack.relay_url}/readyz",
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.json()["status"] == "backlogged"
        assert answer.json()["oldest_queued_seconds"]["retailrocket"] > 0.5


def test_metrics_need_the_token_and_count_what_happened(stack) -> None:
    url = f"{stack.relay_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    httpx.post(f"{stack.relay_url}/v1/batch", json={"writeKey": WRITE_KEY, "batch": [
        track("Product Viewed", product_id=1), track("Product Viewed", product_id="x"),
        {"type": "track"}, {"type": "nope"}]})
    httpx.post(f"{stack.relay_url}/v1/batch", json={"writeKey": "wrong", "batch": [track("A")]})
    stack.wait_received("retailrocket", 1)
    stack.wait_received("goshops", 2)

    def scraped() -> str:
        return httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).text

    text = wait_for(lambda: (t := scraped()) and metric(
        t, "shoprelay_vendor_delivered_total", site="demo", vendor="goshops") == 2 and t)
    assert metric(text, "shoprelay_messages_accepted_total", site="demo") == 2
    assert metric(text, "shoprelay_messages_rejected_total", reason="no_event") == 1
    assert metric(text, "shoprelay_messages_rejected_total", reason="bad_type") == 1
    assert metric(text, "shoprelay_messages_rejected_total", reason="unknown_key") == 1
    assert metric(text, "shoprelay_vendor_delivered_total", site="demo",
                  vendor="retailrocket") == 1
    assert metric(text, "shoprelay_vendor_dead_lettered_total", site="demo",
                  vendor="retailrocket") == 1       # "x" is no Retail Rocket product id
    assert metric(text, "shoprelay_vendor_queued", vendor="retailrocket") == 0
    assert metric(text, "shoprelay_spool_bytes") > 0
    assert 'shoprelay_request_duration_seconds_bucket{le="0.5",route="batch"}' in text


def test_admin_routes_are_off_without_a_token(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False) as stack:
        assert httpx.get(f"{stack.relay_url}/metrics").status_code == 404
        assert httpx.get(f"{stack.relay_url}/debug").status_code == 404


def test_live_debugger_streams_messages_and_vendor_requests(stack) -> None:
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def retailrocket_sent() -> bool:
        return any(e["kind"] == "vendor" and e["vendor"] == "retailrocket" for e in seen)

    def listen() -> None:
        with httpx.stream("GET", f"{stack.relay_url}/debug/stream?token={TOKEN}",
                          timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append(orjson.loads(line[6:]))
                # Closing as soon as what is asserted has come: an open stream holds the
                # relay's shutdown until the next 15 s heartbeat.
                if stop.is_set() or retailrocket_sent():
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)
    page = httpx.get(f"{stack.relay_url}/debug", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and "EventSource" in page.text
    httpx.post(f"{stack.relay_url}/v1/batch",
               json={"batch": [track("Product Viewed", "dbg-1", product_id=5)],
                     "writeKey": WRITE_KEY})
    wait_for(retailrocket_sent)
    stop.set()
    [message] = [e for e in seen if e["kind"] == "message"]
    assert message["message"]["messageId"] == "dbg-1"
    [sent] = [e for e in seen if e["kind"] == "vendor" and e["vendor"] == "retailrocket"]
    assert sent["status"] == 200 and sent["body"]["productId"] == 5
    assert "sandbox-key" not in orjson.dumps(seen).decode()    # the api key is masked
    assert "apiKey=***" in sent["url"]


def test_per_address_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    def limited(table: dict[str, Any]) -> None:
        table["relay"]["ingest_per_ip_per_minute"] = 5

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False, adjust=limited) as stack:
        codes = [httpx.post(f"{stack.relay_url}/v1/track?writeKey={WRITE_KEY}",
                            json=track("A")) for _ in range(7)]
        assert [c.status_code for c in codes] == [200] * 5 + [429] * 2
        assert 1 <= int(codes[-1].headers["retry-after"]) <= 60
        assert "too many requests" in codes[-1].json()["error"]


def test_a_slow_body_is_cut_off_with_408(tmp_path: Path) -> None:
    def impatient(table: dict[str, Any]) -> None:
        table["relay"]["body_read_timeout_seconds"] = 0.5

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False, adjust=impatient) as stack:
        port = int(stack.relay_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 100\r\n\r\n{\"batch\":")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"did not arrive in time" in answer


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"batch": [], "writeKey": "x", "writeKey": "y"}', "duplicate key 'writeKey'"),
    (b'{"batch": [{"type": "track", "event": "A", "event": "B"}]}', "duplicate key 'event'"),
    (b'{"batch": [\xff\xfe]}', "malformed JSON"),
    (b"[" * 2000 + b"]" * 2000, "malformed JSON"),
    (b'{"batch": [{"type": "track", "event": "A", "properties": {"n": 1e999999}}]}',
     "number is infinity"),
    (b'{"batch": [{"type": "track", "event": "A", "userId": 123456789012345678901234567890}]}',
     "number out of range"),
    (b'{"batch": "not a list", "writeKey": "pk_demo_shop"}', "batch must be a non-empty array"),
    (b"NaN", "malformed JSON"),
])
def test_hostile_bodies_get_a_4xx_with_a_reason(stack, body: bytes, reason: str) -> None:
    answer = httpx.post(f"{stack.relay_url}/v1/batch", content=body,
                        headers={"Content-Type": "text/plain"})
    assert 400 <= answer.status_code < 500
    assert reason in answer.json()["error"]


def test_wrong_types_are_rejected_per_message(stack) -> None:
    batch = [{"type": "track", "event": ["A"]}, {"type": "track", "event": "A", "properties": 5},
             {"type": "identify", "userId": {"id": 1}}, {"type": "page", "timestamp": 12},
             track("Fine")]
    answer = httpx.post(f"{stack.relay_url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY})
    body = answer.json()
    assert answer.status_code == 200 and body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [0, 1, 2, 3]
    assert all(r["error"] for r in body["rejected"])


def test_request_ids_and_openapi(stack) -> None:
    answer = httpx.get(f"{stack.relay_url}/healthz", headers={"X-Request-ID": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    generated = httpx.get(f"{stack.relay_url}/healthz").headers["x-request-id"]
    assert len(generated) == 16
    spec = httpx.get(f"{stack.relay_url}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/batch", "/v1/b", "/v1/track", "/v1/t", "/v1/identify"} <= set(spec["paths"])


def test_the_relay_only_calls_urls_from_its_settings(stack) -> None:
    hostile = [track("Product Added", product_id="1/../../evil?apiKey=x"),
               track("Product Viewed", product_id="http://attacker.example/"),
               {"type": "identify", "userId": "../../admin"},
               track("Products Searched", query="x", url="http://attacker.example")]
    httpx.post(f"{stack.relay_url}/v1/batch", json={"batch": hostile, "writeKey": WRITE_KEY})
    time.sleep(1.5)
    for vendor in ("retailrocket", "goshops"):
        for record in stack.received(vendor, accepted_only=False):
            assert record["path"].split("/")[1] == vendor
    rr_paths = {r["path"] for r in stack.received("retailrocket", accepted_only=False)}
    assert rr_paths <= {"/retailrocket/1.0/setContact", "/retailrocket/1.0/search"}
    spool = stack.app.state.spool
    dead = asyncio.run(spool.dead_letters())
    assert {d.event.name for d in dead} >= {"Product Added", "Product Viewed"}


def test_serve_writes_json_log_lines_with_request_ids(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from servers import free_port

    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(f"""
[relay]
secret = "{'s' * 32}"
spool = "sqlite://{tmp_path / 'spool.db'}"
[sites.demo]
write_key = "{WRITE_KEY}"
""")
    log = (tmp_path / "relay.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "shoprelay", "serve", "--config", str(config),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), timeout=30)
        answer = httpx.post(f"{url}/v1/batch", headers={"X-Request-ID": "rid-42"},
                            json={"batch": [track("Fine"), {"type": "track"}],
                                  "writeKey": WRITE_KEY})
        assert answer.headers["x-request-id"] == "rid-42"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    lines = [orjson.loads(line) for line in (tmp_path / "relay.log").read_text().splitlines()
             if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    [rejected] = [line for line in lines if line["msg"].startswith("rejected")]
    assert rejected["request_id"] == "rid-42"
    assert rejected["reasons"] == ["no_event"] and rejected["site"] == "demo"


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False
