"""Rules that hold across vendors (issue 13), each with the sentence behind it.

Table-driven: one row per (rule, vendor); a row fails when its adapter breaks the rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from shoprelay import events as ev
from shoprelay.events import CartLine, Enrichment, StoredEvent
from shoprelay.identity.state import VisitorState, apply
from shoprelay.settings import SettingsError, parse
from shoprelay.vendors import VENDORS
from shoprelay.vendors.advisable import AdvisableConfig
from shoprelay.vendors.alana import AlanaConfig
from shoprelay.vendors.base import MappingError, VendorConfig
from shoprelay.vendors.goshops import GoShopsConfig
from shoprelay.vendors.retailrocket import RetailRocketConfig
from shoprelay.vendors.yespo import YespoConfig

CONFIGS: dict[str, VendorConfig] = {
    "advisable": AdvisableConfig(base_url="http://127.0.0.1:1", app_id="a", app_secret="s"),
    "alana": AlanaConfig(api_key="k", default_currency="USD"),
    "goshops": GoShopsConfig(project="p", api_key="k"),
    "retailrocket": RetailRocketConfig(partner_id="p", api_key="k"),
    "yespo": YespoConfig(site_id="S"),
}
#: Where each vendor's body names the product.
PRODUCT_KEYS = {"advisable": "item_id", "alana": "productId", "goshops": "item",
                "retailrocket": "productId", "yespo": "productKey"}


def stored(name: str, props: dict[str, Any], **enrichment: Any) -> StoredEvent:
    message = {"type": "track", "event": name, "properties": props, "messageId": "m1",
               "timestamp": "2026-12-01T10:00:00Z"}
    return StoredEvent("shop", message, Enrichment(visitor_id="v1", **enrichment))


def product_of(vendor: str, body: Any) -> Any:
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == PRODUCT_KEYS[vendor]:
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body)
    return found[0] if found else None


# "One event, many vendors: the same product_id / sku fallback in every adapter."
@pytest.mark.parametrize("vendor", sorted(CONFIGS))
@pytest.mark.parametrize(("props", "expected"), [
    ({"product_id": 17, "sku": "99"}, "17"),
    ({"sku": "17"}, "17"),
    ({"product_id": None, "sku": "17"}, "17"),
    ({"product_id": "", "sku": "17"}, "17"),
    ({"product_id": "  ", "sku": "17"}, "17"),
])
def test_one_product_id_fallback_in_every_adapter(vendor: str, props: dict[str, Any],
                                                  expected: str) -> None:
    event = stored(ev.PRODUCT_VIEWED, {**props, "price": 5})
    [request] = VENDORS[vendor].requests_for(event, CONFIGS[vendor])
    assert str(product_of(vendor, request.json)) == expected


# "A non-finite or non-numeric price never reaches a vendor."
@pytest.mark.parametrize("vendor", ["advisable", "retailrocket", "yespo"])
@pytest.mark.parametrize("price", ["NaN", "Infinity", "-inf", "cheap"])
def test_a_non_finite_price_never_reaches_a_vendor(vendor: str, price: str) -> None:
    event = stored(ev.ORDER_COMPLETED, {"order_id": "o1", "revenue": 1, "products": [
        {"product_id": 1, "price": price, "quantity": 1}]})
    try:
        requests = VENDORS[vendor].requests_for(event, CONFIGS[vendor])
    except MappingError:
        return  # refused with the reason: fine, nothing was sent
    for request in requests:
        text = request.body_bytes().decode()
        assert "NaN" not in text and "Infinity" not in text and "null" not in text
        assert "cheap" not in text


# "A malformed optional field (in_stock, results, a duration_ms) is dropped from that
# vendor's request and the drop recorded, instead of dead-lettering the whole event."
@pytest.mark.parametrize(("vendor", "name", "props", "absent"), [
    ("yespo", ev.PRODUCT_VIEWED, {"product_id": 1, "price": 5, "in_stock": "maybe"},
     "isInStock"),
    ("yespo", ev.PRODUCT_ADDED_TO_WISHLIST, {"product_id": 1, "price": 5, "in_stock": 7},
     "isInStock"),
    ("alana", ev.PRODUCTS_SEARCHED, {"query": "tea", "results": "many"}, "results"),
    ("advisable", ev.PRODUCT_VIEWED, {"product_id": 1, "duration_ms": "long"}, "duration"),
])
def test_a_malformed_optional_field_is_dropped_and_recorded(
        vendor: str, name: str, props: dict[str, Any], absent: str) -> None:
    [request] = VENDORS[vendor].requests_for(stored(name, props), CONFIGS[vendor])
    assert f'"{absent}"' not in request.body_bytes().decode()
    assert request.notes, "the drop must be recorded"


# Retail Rocket: "Привязка каналов коммуникации используется для доставки персонализированного
# контента пользователю"; Yespo: email "should be sent at least in the personal account" to
# send triggers. Both mail the address: a hash cannot be mailed.
@pytest.mark.parametrize(("vendor", "table", "refused"), [
    ("retailrocket", {"partner_id": "p", "api_key": "k"}, True),
    ("yespo", {"site_id": "S"}, True),
    ("alana", {"api_key": "k"}, False),
    ("goshops", {"project": "p", "api_key": "k"}, False),
    ("advisable", {"base_url": "http://127.0.0.1:1", "app_id": "a", "app_secret": "s"}, False),
])
def test_hash_pii_is_refused_for_vendors_that_mail_the_address(
        vendor: str, table: dict[str, Any], refused: bool) -> None:
    settings = {"relay": {"secret": "s" * 32}, "sites": {"shop": {
        "write_key": "pk", "vendors": {vendor: {**table, "hash_pii": True}}}}}
    if not refused:
        parse(settings, env={})
        return
    with pytest.raises(SettingsError) as caught:
        parse(settings, env={})
    [problem] = caught.value.problems
    assert problem.key.endswith(f"{vendor}.hash_pii") and "hash" in problem.reason


def test_site_recommendation_vendor_must_name_a_vendor() -> None:
    settings = {"relay": {"secret": "s" * 32}, "sites": {"shop": {
        "write_key": "pk", "recommendation_vendor": "acme", "vendors": {}}}}
    with pytest.raises(SettingsError) as caught:
        parse(settings, env={})
    assert [p.key for p in caught.value.problems] == ["sites.shop.recommendation_vendor"]


# ---- identity facts: the state fold --------------------------------------------------------

def fold(messages: list[dict[str, Any]]) -> list[Enrichment]:
    state = VisitorState()
    ids = iter(f"id{i}" for i in range(1000))
    return [apply(state, m, visitor_id="v1", received_at=100.0 + i, session_timeout=1800,
                  new_id=lambda: next(ids)) for i, m in enumerate(messages)]


def identify(user: str | None = None, **traits: str) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "identify", "traits": traits}
    if user:
        message["userId"] = user
    return message


def test_identity_calls_on_every_new_identity_fact_and_never_for_a_repeat() -> None:
    # Retail Rocket: setContact "при регистрации, успешной авторизации, оформлении заказа и
    # других местах ..., когда пользователь может оставить email адрес"; Yespo: "Email should
    # be sent at least in the personal account, on the page 'Thank you for the order' and
    # during registration".
    messages = [
        identify(email="a@b.example"),                    # newsletter sign-up: email only
        identify(email="a@b.example"),                    # the same again
        identify("u1", email="a@b.example"),              # registration: a user id
        identify("u1", email="a@b.example"),              # same login again
        identify("u1", phone="+100"),                     # a phone
        {"type": "track", "event": "Order Completed",
         "properties": {"order_id": "o1", "email": "new@b.example", "products": []}},
        {"type": "track", "event": "Order Completed",
         "properties": {"order_id": "o2", "email": "new@b.example", "products": []}},
        {"type": "track", "event": "Signed Out", "properties": {}},
        identify("u1"),                                   # logs in again
    ]
    flags = [e.new_identity for e in fold(messages)]
    assert flags == [True, False, True, False, True, True, False, False, True]


def test_guest_checkout_email_reaches_the_identity_calls() -> None:
    order = {"type": "track", "event": "Order Completed",
             "properties": {"order_id": "o1", "email": "g@b.example",
                            "products": [{"product_id": 1, "price": 2}]}}
    [enrichment] = fold([order])
    event = StoredEvent("shop", {**order, "timestamp": "2026-12-01T10:00:00Z"}, enrichment)
    calls = VENDORS["retailrocket"].requests_for(event, CONFIGS["retailrocket"])
    assert calls[0].url.split("?")[0].endswith("/setContact")
    assert calls[0].json["email"] == "g@b.example"
    yespo = VENDORS["yespo"].requests_for(event, CONFIGS["yespo"])
    assert yespo[0].json["GeneralInfo"]["user_email"] == "g@b.example"


# ---- recommendation blocks: owner and session ----------------------------------------------

def test_the_product_block_link_lasts_for_the_session_only_and_keeps_its_vendor() -> None:
    # CONTRACT §3: "The link from a product to the block it was shown or clicked in lasts for
    # the visitor's session."
    state = VisitorState()
    ids = iter(f"s{i}" for i in range(100))

    def at(t: float, message: dict[str, Any]) -> Enrichment:
        return apply(state, message, visitor_id="v1", received_at=t, session_timeout=1800,
                     new_id=lambda: next(ids))

    shown = {"type": "track", "event": "Product List Viewed", "properties": {
        "list_id": "blk1", "recommendation_vendor": "advisable",
        "products": [{"product_id": "p1"}]}}
    view = {"type": "track", "event": "Product Viewed", "properties": {"product_id": "p1"}}
    at(0, shown)
    same_session = at(60, view)
    assert (same_session.list_id, same_session.list_vendor) == ("blk1", "advisable")
    next_session = at(60 + 3600, view)
    assert next_session.list_id is None and next_session.list_vendor is None


def test_states_stored_by_the_old_code_still_load() -> None:
    old = {"user_id": "u1", "email": None, "phone": None, "name": None, "cart": [
        {"product_id": "1", "quantity": 1, "price": 2.0, "currency": None}],
        "cart_id": "c1", "blocks": {"1": "blk-old"}, "session_id": "s1",
        "session_started": 1.0, "last_seen": 2.0, "campaign": None}
    state = VisitorState.from_dict(orjson.loads(orjson.dumps(old)))
    assert state.cart == [CartLine("1", 1, 2.0, None)] and state.announced == {}
    enrichment = apply(state, {"type": "track", "event": "Product Added",
                               "properties": {"product_id": "1"}},
                       visitor_id="v1", received_at=3.0, session_timeout=1800,
                       new_id=lambda: "x")
    # An old link has no session: it counts as expired rather than as anybody's block.
    assert enrichment.list_id is None
    assert VisitorState.from_dict(state.to_dict()).to_dict() == state.to_dict()


# ---- Yespo beside eS.JS; the command line --------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoprelay", *args], capture_output=True,
                          text=True, timeout=60)


def settings_file(tmp_path: Path, relay: str, vendors: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'[relay]\nsecret = "{"s" * 32}"\nspool = "sqlite://{tmp_path}/spool.db"\n'
                    f'{relay}\n[sites.shop]\nwrite_key = "pk"\n{vendors}\n')
    return path


def test_check_config_warns_when_the_relay_cookie_collides_with_es_js(tmp_path: Path) -> None:
    # Yespo: "Cookie sc is a cookie generated by our script if it is installed on your site";
    # the relay's own cookie is called "sc" by default.
    yespo = '[sites.shop.vendors.yespo]\nsite_id = "S"'
    default = run_cli("check-config", str(settings_file(tmp_path, "", yespo)))
    assert default.returncode == 0 and "eS.JS" in default.stderr
    renamed = run_cli("check-config", str(settings_file(tmp_path, 'cookie_name = "sr_vid"',
                                                        yespo)))
    assert renamed.returncode == 0 and "warning" not in renamed.stderr
    hashed = run_cli("check-config", str(settings_file(
        tmp_path, "", yespo + "\nhash_pii = true")))
    assert hashed.returncode == 1 and "hash_pii" in hashed.stderr


def test_cookies_sc_carries_es_js_id_when_the_shops_backend_sends_it() -> None:
    event = stored(ev.PRODUCT_VIEWED, {"product_id": 1, "price": 2})
    [plain] = VENDORS["yespo"].requests_for(event, CONFIGS["yespo"])
    assert plain.json["GeneralInfo"]["cookies"] == {"sc": "v1"}
    event.message["context"] = {"sc": "CDA68358-94FB-4D83-9655-3FEB3C4114A3"}
    # From a browser's body the value is the sender's choice: the relay's visitor it is.
    [browser] = VENDORS["yespo"].requests_for(event, CONFIGS["yespo"])
    assert browser.json["GeneralInfo"]["cookies"] == {"sc": "v1"}
    server = stored(ev.PRODUCT_VIEWED, {"product_id": 1, "price": 2}, source="server")
    server.message["context"] = {"sc": "CDA68358-94FB-4D83-9655-3FEB3C4114A3"}
    [beside] = VENDORS["yespo"].requests_for(server, CONFIGS["yespo"])
    assert beside.json["GeneralInfo"]["cookies"] == {
        "sc": "CDA68358-94FB-4D83-9655-3FEB3C4114A3"}


def test_shoprelay_prints_the_user_behind_a_contact_id() -> None:
    out = run_cli("vendors", "contact-id", "user-42", "user42")
    assert out.returncode == 0
    encoded = out.stdout.split("contactExternalId ")[1].split()[0]
    back = run_cli("vendors", "contact-id", encoded)
    assert "contact id of user 'user-42'" in back.stdout
    assert "user42\tuser 'user42' -> contactExternalId user42" in out.stdout
