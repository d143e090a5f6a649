"""Identity, consent and privacy over real HTTP: what each vendor sandbox receives."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from relay_fixtures import SECRET, WRITE_KEY, relay_stack, routed_db, track
from servers import wait_for

from shoprelay.identity.cookie import VisitorCookie

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/156.0.0.0 Safari/537.36")
SERVER_KEY = "sk_backend_secret_0123456789"


class Device:
    """A browser: keeps the relay's cookie between requests, sends a real browser's UA."""

    def __init__(self, relay_url: str, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(base_url=relay_url,
                                   headers={"User-Agent": CHROME, **(headers or {})})

    def send(self, *messages: dict[str, Any], headers: dict[str, str] | None = None
             ) -> httpx.Response:
        answer = self.client.post("/v1/batch", json={"batch": list(messages),
                                                     "writeKey": WRITE_KEY}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer

    @property
    def visitor(self) -> str | None:
        return VisitorCookie(SECRET).read(self.client.cookies.get("sc"), "demo")


def identify(user_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "traits": traits}


def settle(stack, vendor: str, count: int) -> list[dict]:
    """Wait for `count` accepted requests, then a moment more: nothing extra may arrive."""
    if count:
        stack.wait_received(vendor, count)
    time.sleep(0.8)
    records = stack.received(vendor)
    assert len(records) == count, [r["path"] for r in records]
    return records


def stored(tmp_path: Path, column: str = "data") -> list[Any]:
    import orjson

    with routed_db(tmp_path / "spool.db") as conn:
        rows = conn.execute(f"SELECT {column} FROM messages ORDER BY id").fetchall()
    return [orjson.loads(r[0]) if column == "data" else r[0] for r in rows]


# ---- stitching and identity calls -------------------------------------------------------------

def test_stitching_across_login_logout_and_two_devices(tmp_path: Path) -> None:
    # One call a request: on a slow machine queued views would otherwise merge into
    # visitorEvents batches, and this test reads each call's own body.
    with relay_stack(tmp_path, adjust=one_call_each) as stack:
        laptop, phone = Device(stack.relay_url), Device(stack.relay_url)
        laptop.send(track("Product Viewed", product_id=1, price=10.0))
        laptop.send(identify("u1", email="ada@example.com", phone="+44 20 7946 0000"))
        laptop.send(identify("u1"))                              # a repeat: no new binding
        laptop.send(track("Product Viewed", product_id=2, price=10.0))
        phone.send(track("Product Viewed", product_id=3, price=10.0))
        phone.send(identify("u1", email="ada@example.com"))      # same user, another device
        phone.send(track("Product Viewed", product_id=4, price=10.0))
        laptop.send(track("Signed Out"))                         # logout
        laptop.send(track("Product Viewed", product_id=5, price=10.0))
        laptop.send(identify("u1"))                              # logs in again: new binding
        assert laptop.visitor and phone.visitor and laptop.visitor != phone.visitor

        # Each visitor's events arrive in order; the two devices' lanes interleave freely.
        rr = settle(stack, "retailrocket", 8)                    # 5 views + 3 setContact
        seen: dict[str, list[Any]] = {}
        for record in rr:
            body = record["body"]
            seen.setdefault(body["sessionExternalId"], []).append(
                body.get("productId", body.get("contactExternalId")))
        # The Retail Rocket session id never changes on login or logout.
        assert seen == {laptop.visitor: [1, "u1", 2, 5, "u1"], phone.visitor: [3, "u1", 4]}

        yespo = settle(stack, "yespo", 8)
        assert sum(r["body"]["GeneralInfo"]["eventName"] == "CustomerData" for r in yespo) == 3

        transfers = Counter(r["path"] for r in settle(stack, "advisable", 8)
                            if "/interactions/transfer/" in r["path"])
        assert transfers == {
            f"/advisable/v1/users/{laptop.visitor}/interactions/transfer/u1": 2,
            f"/advisable/v1/users/{phone.visitor}/interactions/transfer/u1": 1}

        customers = {r["body"]["data"]["item"]: r["body"]["data"]["customer"]
                     for r in settle(stack, "goshops", 5)}
        assert customers == {"1": laptop.visitor, "2": "u1", "3": phone.visitor, "4": "u1",
                             "5": laptop.visitor}

        alana = {e["productId"]: (e["visitorId"], e.get("userId"))
                 for r in settle_alana(stack, 5) for e in r["body"]["events"]}
        assert alana == {"1": (laptop.visitor, None), "2": (laptop.visitor, "u1"),
                         "3": (phone.visitor, None), "4": (phone.visitor, "u1"),
                         "5": (laptop.visitor, None)}


def settle_alana(stack, events: int) -> list[dict]:
    wait_for(lambda: sum(len(r["body"]["events"]) for r in stack.received("alana")) >= events)
    time.sleep(0.8)
    records = stack.received("alana")
    assert sum(len(r["body"]["events"]) for r in records) == events
    return records


def test_sessions_are_on_every_event_and_roll_over_on_a_new_campaign(tmp_path: Path) -> None:
    with relay_stack(tmp_path, forward=False) as stack:
        device = Device(stack.relay_url)
        device.send(track("Product Viewed", product_id=1, price=10.0),
                    track("Product Viewed", product_id=2, price=10.0))
        device.send({**track("Product Viewed", product_id=3, price=10.0),
                     "context": {"campaign": {"source": "newsletter", "medium": "email"}}})
        events = [row["enrichment"] for row in stored(tmp_path)]
        sessions = [e["session_id"] for e in events]
        assert sessions[0] == sessions[1] != sessions[2]
        assert all(len(s) == 32 for s in sessions)
        assert events[2]["campaign"] == {"source": "newsletter", "medium": "email"}
        assert events[2]["session_started"] >= events[0]["session_started"]


# ---- consent -----------------------------------------------------------------------------------

def one_call_each(table: dict[str, Any]) -> None:
    """These tests count Retail Rocket's calls one request each: no visitorEvents batches."""
    table["sites"]["demo"]["vendors"]["retailrocket"]["visitor_events"] = False


def consent_settings(table: dict[str, Any]) -> None:
    site = table["sites"]["demo"]
    site["consent_required"] = True
    site["vendors"]["retailrocket"]["consent"] = "analytics"   # this shop files RR as analytics
    one_call_each(table)


def with_consent(message: dict[str, Any], **consent: bool) -> dict[str, Any]:
    return {**message, "context": {"consent": consent}}


def test_consent_gates_each_vendor_by_its_category(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket", "goshops"],
                     adjust=consent_settings) as stack:
        device = Device(stack.relay_url)
        # Consent unknown:
        nothing = device.send(track("Product Viewed", product_id=1, price=10.0))
        assert "set-cookie" not in nothing.headers
        refused = device.send(with_consent(track("Product Viewed", product_id=2, price=10.0),
                                           marketing=False, analytics=False))
        assert "set-cookie" not in refused.headers
        analytics = device.send(with_consent(track("Product Viewed", product_id=3, price=10.0),
                                             marketing=False, analytics=True))
        assert "set-cookie" in analytics.headers
        device.send(with_consent(track("Product Viewed", product_id=4, price=10.0),
                                 marketing=True, analytics=True))
        rr = settle(stack, "retailrocket", 2)
        assert [r["body"]["productId"] for r in rr] == [3, 4]
        gs = settle(stack, "goshops", 1)
        assert gs[0]["body"]["data"]["item"] == "4"
        assert len(stored(tmp_path)) == 4                      # held back, never lost


def test_an_explicit_refusal_holds_even_without_consent_required(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["goshops"]) as stack:
        device = Device(stack.relay_url)
        device.send(with_consent(track("Product Viewed", product_id=1, price=10.0),
                                 marketing=False))
        device.send(track("Product Viewed", product_id=2, price=10.0))     # unstated: allowed here
        assert [r["body"]["data"]["item"] for r in settle(stack, "goshops", 1)] == ["2"]


def test_global_privacy_control_refuses_marketing(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket", "goshops"],
                     adjust=consent_settings) as stack:
        device = Device(stack.relay_url, headers={"Sec-GPC": "1"})
        device.send(with_consent(track("Product Viewed", product_id=1, price=10.0),
                                 marketing=True, analytics=True))
        other = Device(stack.relay_url)
        other.send(with_consent(track("Product Viewed", product_id=2, price=10.0),
                                marketing=True, analytics=True, gpc=True))
        assert [r["body"]["productId"] for r in settle(stack, "retailrocket", 2)] == [1, 2]
        settle(stack, "goshops", 0)
        assert stored(tmp_path)[0]["enrichment"]["consent"]["marketing"] is False


# ---- bots, IPs, PII -----------------------------------------------------------------------------

def test_bot_traffic_is_stored_but_held_back(tmp_path: Path) -> None:
    def hold_bots(table: dict[str, Any]) -> None:
        table["sites"]["demo"]["forward_bots"] = False

    with relay_stack(tmp_path, vendors=["retailrocket"], adjust=hold_bots) as stack:
        Device(stack.relay_url, {"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}
               ).send(track("Product Viewed", product_id=1, price=10.0))
        Device(stack.relay_url, {"User-Agent": CHROME.replace("Chrome/", "HeadlessChrome/")}
               ).send(track("Product Viewed", product_id=2, price=10.0))
        Device(stack.relay_url).send(track("Product Viewed", product_id=3, price=10.0))
        assert [r["body"]["productId"] for r in settle(stack, "retailrocket", 1)] == [3]
        assert [row["enrichment"].get("bot", False) for row in stored(tmp_path)] == [
            True, True, False]


@pytest.mark.parametrize(("trusted", "truncate", "expected"), [
    (["127.0.0.1"], False, "203.0.113.9"),
    ([], False, "127.0.0.1"),            # a spoofed X-Forwarded-For from an untrusted peer
    (["127.0.0.0/8"], True, "203.0.113.0"),
])
def test_client_ip_only_from_trusted_proxies(tmp_path: Path, trusted: list[str], truncate: bool,
                                             expected: str) -> None:
    def proxies(table: dict[str, Any]) -> None:
        table["relay"]["trusted_proxies"] = trusted
        table["sites"]["demo"]["ip_truncate"] = truncate

    with relay_stack(tmp_path, vendors=["retailrocket"], forward=False, adjust=proxies) as stack:
        device = Device(stack.relay_url, {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
        answer = device.send(track("Product Viewed", product_id=1, price=10.0),
                             headers={"X-Forwarded-Proto": "https"})
        assert stored(tmp_path)[0]["enrichment"]["ip"] == expected
        assert ("Secure" in answer.headers["set-cookie"]) == bool(trusted)


def test_hash_pii_is_refused_for_vendors_that_mail_the_address(tmp_path: Path) -> None:
    # Retail Rocket and Yespo use the email as a delivery address (setContact "используется для
    # доставки персонализированного контента"; Yespo mails abandoned-cart triggers): a hash
    # cannot be mailed, so such settings are refused at start, with the reason.
    from shoprelay.settings import SettingsError
    from shoprelay.vendors.base import VendorConfig, contact_value

    for vendor in ("retailrocket", "yespo"):
        def hashing(table: dict[str, Any], v: str = vendor) -> None:
            table["sites"]["demo"]["vendors"][v]["hash_pii"] = True

        with pytest.raises(SettingsError) as caught, relay_stack(
                tmp_path, vendors=[vendor], adjust=hashing):
            pass
        assert [p.key for p in caught.value.problems] == [
            f"sites.demo.vendors.{vendor}.hash_pii"]
    # The hashing itself stays for the other vendors: of the normalised value.
    import hashlib

    hashed = VendorConfig(hash_pii=True)
    assert contact_value(" Ada@Example.com ", hashed) == hashlib.sha256(
        b"ada@example.com").hexdigest()
    assert contact_value("+44 20 7946 0000", hashed, "phone") == hashlib.sha256(
        b"+442079460000").hexdigest()
    with relay_stack(tmp_path, vendors=["retailrocket", "yespo"]) as stack:
        Device(stack.relay_url).send(identify("u9", email=" Ada@Example.com "))
        [customer] = settle(stack, "yespo", 1)
        # The address as the relay compares it (trimmed, lower-cased: issue 22), not hashed.
        assert customer["body"]["GeneralInfo"]["user_email"] == "ada@example.com"


# ---- the server-side API -----------------------------------------------------------------------

def server_post(relay_url: str, *messages: dict[str, Any], key: str = SERVER_KEY
                ) -> httpx.Response:
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    return httpx.post(f"{relay_url}/v1/batch", json={"batch": list(messages)},
                      headers={"Authorization": auth})


def with_server_key(table: dict[str, Any]) -> None:
    table["sites"]["demo"]["server_key"] = SERVER_KEY
    one_call_each(table)


def order(order_id: str, message_id: str, **extra: Any) -> dict[str, Any]:
    message = track("Order Completed", message_id, order_id=order_id, revenue=12.5,
                    currency="USD", products=[{"product_id": 7, "price": 12.5, "quantity": 1}])
    return {**message, **extra}


def test_server_order_and_browser_order_reach_each_vendor_once(tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=with_server_key) as stack:
        browser = Device(stack.relay_url)
        browser.send(identify("u5"), order("o-1", "browser-o-1"))
        answer = server_post(stack.relay_url, order("o-1", "server-o-1", userId="u5"))
        assert answer.status_code == 200 and "set-cookie" not in answer.headers
        # An order only the backend saw, attributed through the user binding.
        server_post(stack.relay_url, order("o-2", "server-o-2", userId="u5"))
        # And one where the backend passed on the visitor's cookie value.
        server_post(stack.relay_url, order("o-3", "server-o-3", context={
            "visitorCookie": browser.client.cookies["sc"]}))
        rr = settle(stack, "retailrocket", 4)                  # setContact + 3 orders
        orders = [r["body"] for r in rr if r["path"].endswith("/order")]
        assert [(o["transaction"], o["sessionExternalId"]) for o in orders] == [
            ("o-1", browser.visitor), ("o-2", browser.visitor), ("o-3", browser.visitor)]
        assert len(settle(stack, "goshops", 3)) == 3
        assert len(settle_alana(stack, 3)) >= 1


def test_server_key_is_checked(tmp_path: Path) -> None:
    with relay_stack(tmp_path, vendors=["retailrocket"], adjust=with_server_key) as stack:
        wrong = server_post(stack.relay_url, order("o-9", "m9"), key="sk_wrong_key_0000000000")
        assert wrong.status_code == 401


def test_no_pii_in_the_log_output_of_a_full_session(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from servers import free_port

    email, phone, ip = "grace.hopper@example.com", "+1 555 0100 999", "203.0.113.77"
    with relay_stack(tmp_path / "sandbox", vendors=["retailrocket", "yespo"],
                     forward=False) as sandboxes:
        config = tmp_path / "relay.toml"
        port = free_port()
        rr_url = f"{sandboxes.sandbox_url}/retailrocket/1.0"
        config.write_text(f"""
[relay]
secret = "${{SECRET}}"
spool = "sqlite://{tmp_path / 'spool.db'}"
trusted_proxies = ["127.0.0.1"]
[sites.demo]
write_key = "{WRITE_KEY}"
[sites.demo.vendors.retailrocket]
partner_id = "sandbox-partner"
api_key = "${{RR_KEY}}"
base_url = "{rr_url}"
visitor_events = false
[sites.demo.vendors.yespo]
site_id = "wrong-site"
base_url = "{sandboxes.sandbox_url}/yespo/api/v2"
""")
        env = {**os.environ, "SECRET": "s" * 32, "RR_KEY": "sandbox-key"}
        log = (tmp_path / "relay.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "shoprelay", "serve", "--config",
                                 str(config), "--port", str(port), "--log-level", "debug"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _up(url), timeout=30)
            device = Device(url, {"X-Forwarded-For": ip})
            device.send(track("Product Viewed", product_id=1, price=10.0))
            device.send(identify("u1", email=email, phone=phone, name="Grace"))
            device.send(order("o-1", "m-o-1"))
            device.send(track("Product Viewed", product_id="not-a-number"))
            wait_for(lambda: len(sandboxes.received("retailrocket")) >= 3)
            # Yespo refuses them all (wrong site id): the refusals are logged, without PII.
            wait_for(lambda: len(sandboxes.refused("yespo")) >= 3)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        output = (tmp_path / "relay.log").read_text()
        assert "relay ready" in output                       # the log was really captured
        for secret in (email, phone, ip, "Grace", "sandbox-key", "s" * 32):
            assert secret not in output, secret


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False
