"""Hostile input, second round (issue 22, "Smaller"; Build item 5): each finding performed over
real HTTP with what its sender has (the public write key, a vendor's own answer, a settings
file), and checked where the operator would look (the answer, the dead letters, the traces,
the debugger, the log, the vendor's received requests)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from relay_fixtures import ORIGIN, SECRET, WRITE_KEY, Stack, relay_stack, track
from servers import free_port, serve, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from test_delivery_support import BROWSER_UA

from shoprelay.identity.cookie import VisitorCookie

ADMIN = "smaller-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def with_admin(table: dict[str, Any]) -> None:
    table["relay"]["admin_token"] = ADMIN


def post(url: str, batch: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY},
                      headers={"Origin": ORIGIN, "User-Agent": BROWSER_UA}, timeout=30,
                      **kwargs)


def traces(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.relay_url}/debug/trace", params={"message_id": message_id},
                       headers=AUTH)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["traces"]
    return found


class Stream(threading.Thread):
    """The live debugger's event stream, read until told to stop."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.data = url, bytearray()
        self.stop, self.connected = threading.Event(), threading.Event()

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers=AUTH, timeout=None) as stream:
            for chunk in stream.iter_raw():
                self.data += chunk
                self.connected.set()
                if self.stop.is_set():
                    return


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Every log line the relay writes (JSON, debug level) while the block runs."""
    from shoprelay.operate.logs import configure

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    lines = io.StringIO()
    configure("debug", "json")
    root.handlers[0].setStream(lines)  # type: ignore[attr-defined]
    try:
        yield lines
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


# ---- a vendor answer is masked wherever it is kept -----------------------------------------

#: Short on purpose: the whole key is masked however short it is.
SHORT_KEY = "k7Q"


def echoing_vendor() -> Starlette:
    """A vendor that refuses every request with a 400 quoting the URL it was called at (and,
    as some APIs do, a hint of the key in a field of its own)."""
    async def refuse(request: Request) -> Response:
        key = request.query_params.get("apiKey", "")
        body = {"error": f"bad request: POST {request.url}", "apiKey": f"{key[:2]}…",
                "echo": str(request.url)}
        return Response(orjson.dumps(body), 400, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", refuse, methods=["POST"])])


def test_a_vendor_answer_echoing_the_key_is_masked_in_letters_traces_debugger_and_logs(
        tmp_path: Path) -> None:
    from shoprelay.cli.common import with_spool

    with serve(echoing_vendor(), lifespan="off") as echo:
        def keyed(table: dict[str, Any]) -> None:
            with_admin(table)
            rr = table["sites"]["demo"]["vendors"]["retailrocket"]
            rr.update(base_url=f"{echo}/1.0", api_key=SHORT_KEY)

        with json_log() as lines, relay_stack(tmp_path, vendors=["retailrocket"],
                                               adjust=keyed) as stack:
            stream = Stream(f"{stack.relay_url}/debug/stream")
            stream.start()
            assert stream.connected.wait(10)
            answer = post(stack.relay_url, [track("Product Viewed", "echoed-1",
                                                  product_id="101", price=5)])
            assert answer.status_code == 200, answer.text

            def letters() -> list[Any]:
                return asyncio.run(with_spool(stack.settings, lambda s: s.dead_letters()))

            dead = wait_for(letters, timeout=30)
            trace = orjson.dumps(traces(stack, "echoed-1")).decode()
            stream.stop.set()
            post(stack.relay_url, [track("Product Viewed", "wake-1", product_id="1")])
            stream.join(10)
    dead_text = orjson.dumps([d.to_dict() for d in dead]).decode()
    # What is checked is there: the refusal, with the URL it quoted.
    assert "bad request: POST" in dead_text and "apiKey=***" in dead_text, dead_text
    assert "apiKey=***" in trace and '"kind":"vendor"' in bytes(stream.data).decode()
    for name, text in (("dead letter", dead_text), ("trace", trace),
                       ("debugger event", bytes(stream.data).decode()),
                       ("log line", lines.getvalue())):
        assert SHORT_KEY not in text, f"the key in a {name}"
        assert f"apiKey={SHORT_KEY[:2]}" not in text, f"two characters of the key in a {name}"
        assert f"{SHORT_KEY[:2]}…" not in text, f"the vendor's hint of the key in a {name}"


# ---- amounts that overflow are refused, the rest of the batch kept -------------------------

def test_an_overflowing_quantity_is_refused_and_the_visitor_keeps_working(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["yespo"]) as stack:
        batch = [track("Product Added", "add-big", product_id="7", price=10, quantity=1e308),
                 track("Product Added", "add-inf", product_id="7", price=10, quantity="inf"),
                 track("Product Added", "add-price", product_id="7", price="NaN", quantity=1),
                 track("Product Added", "add-ok", product_id="7", price=10, quantity=2)]
        answer = post(stack.relay_url, batch)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["accepted"] == 1, body
        refused = {r["messageId"]: r["error"] for r in body["rejected"]}
        assert set(refused) == {"add-big", "add-inf", "add-price"}, refused
        assert "quantity" in refused["add-big"] and "1e+308" in refused["add-big"]
        assert "quantity" in refused["add-inf"] and "price" in refused["add-price"]
        # The same visitor goes on: its cart holds the good line only, and it reaches Yespo.
        again = post(stack.relay_url, [track("Product Added", "add-again", product_id="7",
                                             price=10, quantity=1e308),
                                       track("Cart Viewed", "cart-1")],
                     cookies=answer.cookies)
        assert again.status_code == 200 and again.json()["accepted"] == 1, again.text
        carts = wait_for(lambda: [r for r in stack.received("yespo")
                                  if "StatusCart" in orjson.dumps(r["body"]).decode()],
                         timeout=20)
        lines = carts[-1]["body"]["StatusCart"]["Products"]
        assert lines == [{"productKey": "7", "price": "10", "quantity": 2}], lines


# ---- a messageId that cannot go in a header ------------------------------------------------

def test_a_message_id_that_cannot_go_in_a_header_is_left_out_of_it(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["goshops"], adjust=with_admin) as stack:
        ids = ["plain-1", "café-2", "plain-3"]
        answer = post(stack.relay_url, [track("Product Viewed", mid, product_id=str(i))
                                        for i, mid in enumerate(ids)])
        assert answer.status_code == 200 and answer.json()["accepted"] == 3, answer.text
        wait_for(lambda: {str(i) for i in range(3)} <= delivered_items(stack), timeout=20)
        wait_for(lambda: traces(stack, "café-2")[0]["vendors"]["goshops"]["outcome"]
                 == "sent", timeout=20)
        received = stack.received("goshops")
        # Each event once (no round failed and sent a neighbour again) ...
        items = [i for r in received for i in items_of(r["body"])]
        assert sorted(items) == ["0", "1", "2"], items
        # ... the header carries what can go in one, and the trace says what was left out.
        headers = ",".join(h for r in received for k, h in r["headers"].items()
                           if k.lower() == "x-shoprelay-message-ids")
        assert "plain-1" in headers and "plain-3" in headers and "caf" not in headers
        request = traces(stack, "café-2")[0]["vendors"]["goshops"]["request"]
        assert "left out 1 messageId" in request, request


def items_of(body: Any) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "item":
                    found.append(str(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return found


def delivered_items(stack: Stack) -> set[str]:
    return {i for r in stack.received("goshops") for i in items_of(r["body"])}


# ---- text logs: one record, one line -------------------------------------------------------

def test_a_message_id_with_a_newline_cannot_forge_a_text_log_line(tmp_path: Path) -> None:
    from shoprelay.sandbox import create_app as create_sandbox_app
    from shoprelay.sandbox import demo_vendor_settings

    forged = "2026-12-03 12:00:00,000 ERROR shoprelay.delivery FORGED"
    with serve(create_sandbox_app(), lifespan="off") as sandbox_url:
        goshops = demo_vendor_settings(sandbox_url, ["goshops"])["goshops"]
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[relay]\nsecret = "{SECRET}"\nspool = "sqlite://{tmp_path / "spool.db"}"\n'
            'log_format = "text"\n'
            f'[sites.demo]\nwrite_key = "{WRITE_KEY}"\n[sites.demo.vendors.goshops]\n'
            + "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in goshops.items()))
        port = free_port()
        log = tmp_path / "relay.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "shoprelay", "serve", "--config", str(config),
                 "--port", str(port), "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
            try:
                url = f"http://127.0.0.1:{port}"
                wait_for(lambda: up(url), timeout=30)
                # An order with one line Go Shops cannot take: that line is dead-lettered
                # alone, and the log names the message it belongs to.
                order = track("Order Completed", f"order-1\n{forged}", order_id="o-1",
                              products=[{"product_id": "5", "price": 3}, "not a line"])
                answer = post(url, [order])
                assert answer.status_code == 200, answer.text
                wait_for(lambda: "dead-lettered alone" in log.read_text(), timeout=30)
            finally:
                process.terminate()
                process.wait(30)
    text = log.read_text()
    assert not [line for line in text.splitlines() if line.startswith(forged)], text
    [line] = [line for line in text.splitlines() if "dead-lettered alone" in line]
    assert "order-1\\n2026-12-03" in line and "FORGED" in line, line


def up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---- /readyz without the token -------------------------------------------------------------

def test_readyz_without_the_token_says_only_ready_or_not(tmp_path: Path) -> None:
    def refused_key(table: dict[str, Any]) -> None:
        with_admin(table)
        table["sites"]["demo"]["vendors"]["retailrocket"]["api_key"] = "not-the-key"

    with relay_stack(tmp_path, vendors=["retailrocket"], adjust=refused_key) as stack:
        post(stack.relay_url, [track("Product Viewed", "p-1", product_id="1")])
        # The vendor refuses the key: it is paused, with its answer, address and partner id.
        detail = wait_for(lambda: (r := httpx.get(f"{stack.relay_url}/readyz", headers=AUTH)
                                   ).json()["paused_vendors"] and r, timeout=30)
        assert detail.status_code == 200 and detail.json()["status"] == "vendor_paused"
        assert "demo/retailrocket" in detail.json()["paused_vendors"], detail.text
        partner = stack.settings.sites["demo"].vendors["retailrocket"].partner_id  # type: ignore[attr-defined]
        public = httpx.get(f"{stack.relay_url}/readyz")
        assert public.status_code == 200 and public.json() == {"status": "ok"}, public.text
        for leak in (partner, stack.sandbox_url, "127.0.0.1", "retailrocket", "401"):
            assert leak not in public.text, leak


# ---- check-config: one key, one role ---------------------------------------------------------

def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "shoprelay", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


RELAY = '[relay]\nsecret = "relay-secret-0123456789"\nspool = "sqlite://spool.db"\n'


def test_check_config_refuses_a_key_used_in_two_roles(tmp_path: Path) -> None:
    crossed = check_config(tmp_path, RELAY + (
        '[sites.a]\nwrite_key = "pk_a_public_key_0001"\n'
        '[sites.b]\nwrite_key = "pk_b_public_key_0002"\nserver_key = "pk_a_public_key_0001"\n'))
    assert crossed.returncode == 1, crossed
    assert "sites.b.server_key" in crossed.stderr and "sites.a.write_key" in crossed.stderr
    secret = check_config(tmp_path, RELAY + (
        '[sites.a]\nwrite_key = "pk_a_public_key_0001"\nserver_key = "server-key-of-a-0123"\n'
        '[sites.b]\nwrite_key = "pk_b_public_key_0002"\n'
        'identify_secret = "server-key-of-a-0123"\n'))
    assert secret.returncode == 1 and "sites.b.identify_secret" in secret.stderr, secret
    token = check_config(tmp_path, RELAY + 'admin_token = "pk_a_public_long_enough"\n' + (
        '[sites.a]\nwrite_key = "pk_a_public_long_enough"\n'))
    assert token.returncode == 1 and "relay.admin_token" in token.stderr, token
    fine = check_config(tmp_path, RELAY + (
        '[sites.a]\nwrite_key = "pk_a_public_key_0001"\nserver_key = "server-key-of-a-0123"\n'
        '[sites.b]\nwrite_key = "pk_b_public_key_0002"\nserver_key = "server-key-of-b-0123"\n'))
    assert fine.returncode == 0, fine.stderr


# ---- Yespo's cookies.sc is the relay's visitor, not the client's choice ----------------------

def test_a_client_chosen_context_sc_does_not_become_yespos_cookie(tmp_path: Path) -> None:
    victim = "CDA68358-94FB-4D83-9655-3FEB3C4114A3"
    with relay_stack(tmp_path, vendors=["yespo"]) as stack:
        answer = post(stack.relay_url, [{**track("Product Viewed", "sc-1", product_id="3",
                                                 price=4), "context": {"sc": victim}}])
        assert answer.status_code == 200, answer.text
        [received] = stack.wait_received("yespo", 1)
        cookies = received["body"]["GeneralInfo"]["cookies"]
        # The relay's visitor: the one its signed cookie names.
        visitor = VisitorCookie(SECRET).read(answer.cookies["sc"], "demo")
        assert visitor and cookies["sc"] == visitor != victim, cookies
