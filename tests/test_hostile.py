"""Hostile input (issue 12): each test performs an attack over real HTTP with only what an
attacker has — the public write key and loopback traffic — and asserts what the operator
would check afterwards (the answer, the spool, the logs, the debugger)."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from relay_fixtures import ORIGIN, WRITE_KEY, Stack, relay_stack, routed_db, track
from servers import wait_for

from shoprelay.ingest.validation import MAX_DEPTH, MAX_MESSAGE_BYTES, STORE_FACTOR


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False) as running:
        yield running


def post(stack: Stack, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{stack.relay_url}/v1/batch", content=content,
                      headers={"Content-Type": "application/json", **(headers or {})},
                      **kwargs)


def stored(tmp_path: Path) -> tuple[int, int, int]:
    """(messages, bytes of the largest, bytes of all) as the spool holds them."""
    with routed_db(tmp_path / "spool.db") as conn:
        count, largest, total = conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(LENGTH(data)), 0), COALESCE(SUM(LENGTH(data)), 0) "
            "FROM messages").fetchone()
    return int(count), int(largest), int(total)


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def with_deep(body: dict[str, Any], levels: int) -> bytes:
    """`body` as JSON with its "@deep@" string replaced by arrays nested `levels` deep (no
    serialiser writes that deep, which is the point)."""
    return orjson.dumps(body).replace(b'"@deep@"', b"[" * levels + b"]" * levels)


# ---- 1: storage amplification through the batch context ---------------------------------

def test_a_large_batch_context_is_counted_in_each_message(stack: Stack, tmp_path: Path
                                                          ) -> None:
    # The attack as reported: 380 tiny messages and a 100 KB context in a 121 KiB request.
    body = orjson.dumps({"batch": [{"type": "page"}] * 380, "writeKey": WRITE_KEY,
                         "context": {"pad": "x" * 100_000}})
    answer = post(stack, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["accepted"] == 0
    assert len(answer.json()["rejected"]) == 380
    assert "as stored" in answer.json()["rejected"][0]["error"]
    assert stored(tmp_path) == (0, 0, 0)


def test_one_request_stores_a_small_multiple_of_its_body(stack: Stack, tmp_path: Path
                                                         ) -> None:
    # Each message stays under the message limit with the context merged in, but there are
    # thousands of them: the copies would store ~90 MB from a 60 KB body.
    body = orjson.dumps({"batch": [{"type": "page"}] * 3000, "writeKey": WRITE_KEY,
                         "context": {"pad": "x" * 30_000}})
    answer = post(stack, body).json()
    assert 0 < answer["accepted"] < 3000
    refused = answer["rejected"]
    assert len(refused) == 3000 - answer["accepted"]
    assert {r["index"] for r in refused} == set(range(answer["accepted"], 3000))
    assert "batch context is copied into every message" in refused[0]["error"]
    count, largest, total = stored(tmp_path)
    assert count == answer["accepted"] and largest < MAX_MESSAGE_BYTES
    # At most 3 bodies, besides what the relay adds to each stored message itself (its ids
    # and timestamps, and the visitor, session and consent it stores beside the message).
    assert total <= STORE_FACTOR * len(body) + 1024 * count
    # The same context in a few messages is what a real client sends: kept whole.
    small = orjson.dumps({"batch": [track("A"), track("B")], "writeKey": WRITE_KEY,
                          "context": {"library": {"name": "analytics-python"}}})
    assert post(stack, small).json() == {"success": True, "accepted": 2, "rejected": []}


# ---- 4: deep nesting is a per-message 4xx -------------------------------------------------

@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 300, 700, 1020])
def test_deep_nesting_is_refused_per_message_and_its_neighbours_kept(
        stack: Stack, tmp_path: Path, levels: int) -> None:
    deep = track("Deep", "deep-1", blob="@deep@")  # message + properties + the arrays
    body = with_deep({"batch": [track("Before", "before-1"), deep, track("After", "after-1")],
                      "writeKey": WRITE_KEY}, levels - 2)
    answer = post(stack, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    [refusal] = answer.json()["rejected"]
    assert refusal["index"] == 1 and refusal["messageId"] == "deep-1"
    assert f"deeper than {MAX_DEPTH} levels" in refusal["error"]
    assert stored(tmp_path)[0] == 2
    # Alone, it is a 400 with the reason, never a 5xx a client would retry for ever.
    alone = post(stack, with_deep({"batch": [deep], "writeKey": WRITE_KEY}, levels - 2))
    assert alone.status_code == 400 and alone.json()["rejected"][0]["index"] == 0


def test_the_deepest_storable_message_is_stored(stack: Stack, tmp_path: Path) -> None:
    answer = post(stack, {"batch": [track("Deep", blob=nested(MAX_DEPTH - 2))],
                          "writeKey": WRITE_KEY})
    assert answer.json() == {"success": True, "accepted": 1, "rejected": []}
    assert stored(tmp_path)[0] == 1


def test_a_deep_batch_context_refuses_each_message_with_a_reason(stack: Stack) -> None:
    answer = post(stack, with_deep({"batch": [track("A"), track("B")], "writeKey": WRITE_KEY,
                                    "context": {"deep": "@deep@"}}, 400))
    assert answer.status_code == 400
    assert [r["index"] for r in answer.json()["rejected"]] == [0, 1]


# ---- 9: every duplicate key is refused ----------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"batch":[{"type":"track","event":"A","properties":{"q":0,"q":1e6}}],"writeKey":"%s"}',
    b'{"batch":[{"type":"track","event":"A","properties":{"q":1,"q":2}}],"writeKey":"%s"}',
    b'{"batch":[{"type":"track","event":"A","event":"B"}],"writeKey":"%s"}',
    b'{"writeKey":"%s","batch":[],"batch":[{"type":"page"}]}',
    b'{"batch":[{"type":"track","event":"A","properties":{"x":' + b"[" * 1000
    + b'{"q":1,"q":2}' + b"]" * 1000 + b'}}],"writeKey":"%s"}',
])
def test_every_duplicate_key_is_refused(stack: Stack, tmp_path: Path, raw: bytes) -> None:
    answer = post(stack, raw.replace(b"%s", WRITE_KEY.encode()))
    assert answer.status_code == 400, answer.text
    assert "duplicate key" in answer.json()["error"]
    assert stored(tmp_path)[0] == 0


def test_a_key_spelled_inside_a_string_is_no_duplicate(stack: Stack) -> None:
    raw = (b'{"batch":[{"type":"track","event":"A","properties":{"note":"\\"q\\":1,",'
           b'"q":1}}],"writeKey":"' + WRITE_KEY.encode() + b'"}')
    assert post(stack, raw).json()["accepted"] == 1


# ---- 12: a non-IP X-Forwarded-For from a trusted proxy ------------------------------------

ADMIN = "hostile-admin-token-0123456789"


def stored_ips(tmp_path: Path) -> dict[str, str | None]:
    with routed_db(tmp_path / "spool.db") as conn:
        rows = conn.execute("SELECT message_id, data FROM messages").fetchall()
    return {mid: orjson.loads(data)["enrichment"].get("ip") for mid, data in rows}


def test_a_non_ip_forwarded_for_is_not_stored_as_the_client_address(tmp_path: Path) -> None:
    def behind_proxy(table: dict[str, Any]) -> None:
        table["relay"]["trusted_proxies"] = ["127.0.0.1/32"]
        table["relay"]["admin_token"] = ADMIN

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     adjust=behind_proxy) as proxied:
        sent = {
            "plain": "203.0.113.9",
            "with-port": "203.0.113.10:51234",
            "v6": "[2001:db8::7]:443",
            "spoofed-left": "<script>alert(1)</script>, 203.0.113.11",
            "garbage": "not-an-ip",
            "garbage-nearest": "203.0.113.12, evil.example",
            "injection": "1.2.3.4'; DROP TABLE messages; --",
        }
        for message_id, forwarded in sent.items():
            answer = post(proxied, {"batch": [track("A", message_id)], "writeKey": WRITE_KEY},
                          headers={"X-Forwarded-For": forwarded})
            assert answer.status_code == 200, answer.text
        assert stored_ips(tmp_path) == {
            "plain": "203.0.113.9", "with-port": "203.0.113.10", "v6": "2001:db8::7",
            "spoofed-left": "203.0.113.11",
            "garbage": None, "garbage-nearest": None, "injection": None,
        }
        metrics = httpx.get(f"{proxied.relay_url}/metrics",
                            headers={"Authorization": f"Bearer {ADMIN}"}).text
        assert 'shoprelay_headers_refused_total{header="x-forwarded-for"} 3.0' in metrics


# ---- 11: a visitor cookie is bound to its site ---------------------------------------------

def test_a_cookie_from_one_shop_does_not_carry_a_visitor_into_another(tmp_path: Path) -> None:
    def two_shops(table: dict[str, Any]) -> None:
        table["sites"]["shop_b"] = {"write_key": "pk_shop_b", "vendors": {}}

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     adjust=two_shops) as relay:
        at_b = post(relay, {"batch": [track("A", "at-b")], "writeKey": "pk_shop_b"})
        b_cookie = at_b.cookies["sc"]
        at_a = post(relay, {"batch": [track("A", "at-a")], "writeKey": WRITE_KEY},
                    cookies={"sc": b_cookie})
        assert at_a.status_code == 200
        again_b = post(relay, {"batch": [track("A", "again-b")], "writeKey": "pk_shop_b"},
                       cookies={"sc": b_cookie})
        with routed_db(tmp_path / "spool.db") as conn:
            visitors = dict(conn.execute("SELECT message_id, visitor_id FROM messages"))
        # Shop A gave the visitor an id of its own, and a cookie that shop B does not take.
        assert visitors["at-a"] != visitors["at-b"]
        assert visitors["again-b"] == visitors["at-b"]
        assert at_a.cookies["sc"] != b_cookie and again_b.cookies["sc"] == b_cookie
        crossed = post(relay, {"batch": [track("A", "crossed")], "writeKey": "pk_shop_b"},
                       cookies={"sc": at_a.cookies["sc"]})
        with routed_db(tmp_path / "spool.db") as conn:
            [(crossed_visitor,)] = conn.execute(
                "SELECT visitor_id FROM messages WHERE message_id = 'crossed'")
        assert crossed_visitor not in (visitors["at-a"], visitors["at-b"])
        assert crossed.status_code == 200


# ---- 7: vendor keys with URL-reserved characters are masked everywhere --------------------

#: Where each vendor's secret lives in its settings table. Yespo has no secret (the site id
#: is the only thing naming the shop).
SECRET_FIELDS = {"retailrocket": "api_key", "alana": "api_key", "goshops": "api_key",
                 "advisable": "app_secret"}
RESERVED = "+/=?&%# \"\\:@,;<>'{}|^~`[]!$()*"


def secret_for(vendor: str) -> str:
    # The letters make any leak greppable whatever the encoding did to the rest.
    return f"SeCrEt{vendor}{RESERVED}"


def spellings(secret: str) -> list[str]:
    """The secret as it could appear: letters (survive every encoding) and the encodings."""
    from urllib.parse import quote, quote_plus

    letters = secret[:secret.index("+")]
    raw = secret.encode()
    b64 = [base64.b64encode(b"\0" * k + raw).decode()[4 if k else 0:-8] for k in range(3)]
    return [letters, secret, quote(secret, safe=""), quote_plus(secret),
            re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")),
            quote(quote(secret, safe=""), safe=""),
            orjson.dumps(secret).decode()[1:-1], json.dumps(secret)[1:-1],
            html.escape(secret), *b64, *(b.replace("+", "-").replace("/", "_") for b in b64)]


class Collect(threading.Thread):
    """Reads the debugger's event stream until told to stop."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.data = bytearray()
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers={"Authorization": f"Bearer {ADMIN}"},
                          timeout=None) as stream:
            for chunk in stream.iter_raw():
                self.data += chunk
                self.connected.set()
                if self.stop.is_set():
                    return


def test_vendor_keys_with_reserved_characters_never_leave_the_relay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoprelay.cli.common import with_spool as _with_spool
    from shoprelay.operate.logs import JsonFormatter, configure
    from shoprelay.sandbox import SANDBOXES

    for vendor, field in SECRET_FIELDS.items():
        monkeypatch.setattr(SANDBOXES[vendor], field, secret_for(vendor))

    def keys(table: dict[str, Any]) -> None:
        table["relay"]["admin_token"] = ADMIN
        for vendor, field in SECRET_FIELDS.items():
            table["sites"]["demo"]["vendors"][vendor][field] = secret_for(vendor)

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    lines = io.StringIO()
    configure("debug", "json")   # as `shoprelay serve --log-level debug` does
    root.handlers[0].setStream(lines)  # type: ignore[attr-defined]
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    shown = bytearray()            # every byte a browser or an operator's page gets
    try:
        with relay_stack(tmp_path, vendors=[*SECRET_FIELDS, "yespo"], adjust=keys) as relay:
            stream = Collect(f"{relay.relay_url}/debug/stream")
            stream.start()
            assert stream.connected.wait(10)

            def send(event: str, message_id: str) -> None:
                answer = post(relay, {"batch": [
                    {"type": "identify", "userId": "u-1", "traits": {"email": "a@b.example"}},
                    track(event, message_id, product_id="101", price=9.5, quantity=1,
                          currency="EUR", name="Shoe", category="Shoes")],
                    "writeKey": WRITE_KEY}, headers={"Origin": ORIGIN})
                assert answer.status_code == 200, answer.text
                shown.extend(repr(answer.headers.raw).encode() + answer.content)

            send("Product Viewed", "seen-1")
            for vendor in SECRET_FIELDS:
                relay.wait_received(vendor, 1)
            # Then every vendor refuses for good: the request goes to the dead letter.
            for vendor in SECRET_FIELDS:
                httpx.post(f"{relay.sandbox_url}/_sandbox/{vendor}/faults",
                           json={"kind": "status", "status": 400})
            send("Product Added", "added-1")

            def dead() -> list[Any]:
                letters = asyncio.run(_with_spool(relay.settings, lambda s: s.dead_letters()))
                return letters if {d.vendor for d in letters} >= set(SECRET_FIELDS) else []

            letters = wait_for(dead, timeout=30)
            for path in ("/s.js", "/debug", "/openapi.json", "/healthz", "/readyz",
                         "/metrics", "/debug/stream?token=wrong", "/nothing-here"):
                page = httpx.get(f"{relay.relay_url}{path}",
                                 headers={"Authorization": f"Bearer {ADMIN}"}
                                 if "stream" not in path else {})
                shown.extend(repr(page.headers.raw).encode() + page.content)
            stream.stop.set()
            send("Product Viewed", "seen-2")  # wakes the stream reader so it sees `stop`
            stream.join(10)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    events = bytes(stream.data).decode()
    dead_text = orjson.dumps([d.to_dict() for d in letters]).decode()
    # What was checked is really there: vendor requests in the debugger and dead letters.
    assert '"kind":"vendor"' in events and "retailrocket" in events
    assert all(d.request for d in letters), dead_text
    assert "apiKey=***" in dead_text and "apiKey=***" in events
    assert '"logger":"shoprelay' in lines.getvalue()
    for vendor in SECRET_FIELDS:
        for spelling in spellings(secret_for(vendor)):
            for name, text in (("debugger event", events), ("dead letter", dead_text),
                               ("log line", lines.getvalue()),
                               ("browser-facing byte", shown.decode("utf-8", "replace"))):
                assert spelling not in text, f"{vendor}'s key in a {name}: {spelling!r}"


def test_masking_covers_each_encoding_of_a_secret() -> None:
    from shoprelay.masking import mask_secrets

    secret = secret_for("x") + "é€😀"
    user = ["", "u:", "us:", "use:"]
    for spelling in [*spellings(secret)[1:9],  # the text encodings (base64 below, whole)
                     *(base64.b64encode(f"{u}{secret}".encode()).decode() for u in user)]:
        masked = mask_secrets(f"before {spelling} after", [secret])
        assert "***" in masked and "SeCrEt" not in masked, (spelling, masked)
    assert mask_secrets("nothing secret here: %2B \\u0041", [secret]) == (
        "nothing secret here: %2B \\u0041")


# ---- 13: the admin token is never taken from a URL, except on the event stream ------------

def test_the_admin_token_in_a_url_opens_only_the_event_stream(tmp_path: Path) -> None:
    from shoprelay.operate import admin

    def with_token(table: dict[str, Any]) -> None:
        table["relay"]["admin_token"] = ADMIN

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False,
                     adjust=with_token) as relay:
        url = relay.relay_url
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        # The token in a query string (proxy logs, history, Referer) opens nothing else.
        assert httpx.get(f"{url}/metrics?token={ADMIN}").status_code == 401
        assert httpx.get(f"{url}/debug?token={ADMIN}").status_code == 401
        assert httpx.get(f"{url}/metrics", headers=bearer).status_code == 200
        with httpx.stream("GET", f"{url}/debug/stream?token={ADMIN}") as stream:
            assert stream.status_code == 200
        # A browser opens the printed link, gets a cookie for the debugger only, and the
        # page's event stream is let in by that cookie.
        opened = httpx.get(admin.make_link(ADMIN, url))
        assert opened.status_code == 303 and opened.headers["location"] == "/debug"
        set_cookie = opened.headers["set-cookie"]
        assert {"HttpOnly", "SameSite=Strict", "Path=/debug"} <= {
            part.strip() for part in set_cookie.split(";")}
        assert ADMIN not in set_cookie
        session = {admin.COOKIE_NAME: opened.cookies[admin.COOKIE_NAME]}
        page = httpx.get(f"{url}/debug", cookies=session)
        assert page.status_code == 200 and 'EventSource("/debug/stream")' in page.text
        with httpx.stream("GET", f"{url}/debug/stream", cookies=session) as stream:
            assert stream.status_code == 200
        assert httpx.get(f"{url}/metrics", cookies=session).status_code == 401
        # Expired, foreign or forged proofs open nothing.
        old = admin.make_link(ADMIN, url, now=time.time() - admin.LINK_SECONDS - 5)
        other = admin.make_link("another-admin-token-0123456789", url)
        for link in (old, other, f"{url}/debug?link=debug.AAAA.BBBB"):
            refused = httpx.get(link)
            assert refused.status_code == 401 and "set-cookie" not in refused.headers
        forged = {admin.COOKIE_NAME: "debug.AAAA.BBBB"}
        assert httpx.get(f"{url}/debug", cookies=forged).status_code == 401
        assert httpx.get(f"{url}/debug/stream", cookies=forged).status_code == 401


def test_debug_link_command_prints_a_link_the_relay_accepts(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    from shoprelay.cli import main
    from shoprelay.operate import admin

    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nsecret = "{"s" * 20}"\nadmin_token = "{ADMIN}"\n'
                      f'[sites.demo]\nwrite_key = "{WRITE_KEY}"\n')
    assert main(["debug-link", "--config", str(config),
                 "--base-url", "https://relay.example/"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("https://relay.example/debug?link=")
    assert admin.link_valid(printed.split("link=", 1)[1], ADMIN)
    assert ADMIN not in printed


# ---- 10: `shoprelay serve` bounds headers and idle connections -----------------------------

@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`shoprelay serve` as an operator runs it, with short limits so the test is quick."""
    import subprocess
    import sys

    from servers import free_port

    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nsecret = "{"s" * 20}"\nspool = "sqlite://{tmp_path / "spool.db"}"\n'
        "header_read_timeout_seconds = 1.0\nkeep_alive_seconds = 1.0\n"
        f'[sites.demo]\nwrite_key = "{WRITE_KEY}"\n')
    process = subprocess.Popen([sys.executable, "-m", "shoprelay", "serve", "--config",
                                str(config), "--port", str(port), "--log-level", "warning"])
    try:
        wait_for(lambda: _healthy(port), timeout=30)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(30)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _read_until_closed(sock: Any, limit: float = 15.0) -> bytes:
    """Everything the server sends until it closes the connection (`limit` only bounds a
    broken test; the relay's own limits here are one second)."""
    sock.settimeout(limit)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_serve_closes_a_connection_that_sends_nothing(served: tuple[str, int]) -> None:
    import socket

    with socket.create_connection(served) as sock:
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_serve_answers_408_to_headers_that_trickle_in(served: tuple[str, int]) -> None:
    import socket

    with socket.create_connection(served) as sock:
        sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: relay\r\n")
        sock.settimeout(0.25)
        answer = b""
        for _ in range(60):  # one header byte every quarter second: never a whole header
            try:
                sock.sendall(b"X")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # closed by the relay while we were still sending
                break
            if answer:
                break
        answer += _read_until_closed(sock) if answer.endswith(b"\r\n\r\n") else b""
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_serve_refuses_a_70_kb_cookie_and_takes_a_normal_one(served: tuple[str, int]) -> None:
    host, port = served
    url = f"http://{host}:{port}/v1/batch"
    body = {"batch": [track("A")], "writeKey": WRITE_KEY}
    huge = httpx.post(url, json=body, headers={"Cookie": "junk=" + "x" * 70_000})
    assert huge.status_code == 431
    normal = httpx.post(url, json=body, headers={"Cookie": "shop=" + "x" * 8_000})
    assert normal.status_code == 200


def test_serve_closes_an_idle_keep_alive_connection(served: tuple[str, int]) -> None:
    import socket

    with socket.create_connection(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        answer = _read_until_closed(sock)   # the answer, then the close after 1 s idle
    assert answer.startswith(b"HTTP/1.1 200") and b'{"status":"ok"}' in answer
    with socket.create_connection(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        sock.settimeout(15)
        first = sock.recv(65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a second request that never finishes
        answer = first + _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer


def test_the_h11_flavour_has_the_same_limits(tmp_path: Path) -> None:
    """Where httptools is not installed uvicorn speaks h11: the same limits hold there."""
    import select
    import socket

    import uvicorn
    from servers import free_port

    from shoprelay.operate.serving import GuardedH11

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    limited = type("LimitedH11", (GuardedH11,), {"header_read_timeout": 1.0,
                                                  "max_header_bytes": 8192})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=limited,
                                           h11_max_incomplete_event_size=8192,
                                           timeout_keep_alive=1, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"x" * 20_000 + b"\r\n\r\n")
            assert _read_until_closed(sock).startswith(b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(10):  # the same in pieces: h11's own bound answers first
                sock.sendall(b"X-Pad: " + b"x" * 2000 + b"\r\n" if _ else b"GET / HTTP/1.1\r\n")
                # Stop once it has answered: bytes sent after the server closed would make
                # its kernel reset the connection, and a reset may discard the answer.
                if select.select([sock], [], [], 0.02)[0]:
                    break
            assert _read_until_closed(sock)[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(15)
            first = sock.recv(65536)
            # The next request starts (ending the keep-alive wait) but never finishes.
            sock.sendall(b"GET / HTTP/1.1\r\n")
            answer = first + _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer
    finally:
        server.should_exit = True
        thread.join(20)
