"""Order webhooks from Shopify and WooCommerce (issue 21, item 1): the payload mappings on
fixtures written from the platforms' examples, and every answer over real HTTP."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from relay_fixtures import Stack, relay_stack, routed_db, track
from servers import wait_for

from shoprelay.ingest.platforms import Malformed, shopify, sign, signature_ok, woocommerce
from shoprelay.settings import SettingsError, parse

DATA = Path(__file__).parent / "data" / "webhooks"
SHOPIFY_SECRET = "shpss-test-secret-0123456789"
WOO_SECRET = "woo-test-secret-0123456789"
ORDER_ID = "820982911946154508"
VENDORS = ["goshops", "advisable", "alana", "retailrocket", "yespo"]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


# ---- the mappings (pure) ------------------------------------------------------------------

def test_a_paid_shopify_order_maps_to_the_canonical_order() -> None:
    delivery = shopify.read("orders/paid", fixture("shopify_orders_paid.json"), "wh-1")
    message = delivery.message
    assert message is not None and not delivery.ignored
    assert message["messageId"] == f"shopify:order:{ORDER_ID}"
    assert message["event"] == "Order Completed"
    assert message["userId"] == "115310627314723954"
    props = message["properties"]
    assert props["order_id"] == ORDER_ID and props["order_number"] == "#9999"
    assert (props["total"], props["revenue"], props["shipping"], props["discount"],
            props["currency"]) == (403.0, 398.0, 10.0, 20.0, "USD")
    assert props["email"] == "jon@example.com"
    assert props["checkout_id"] == "bd5a8aa1ecd019dd3520ff791ee3a24c"
    assert props["cart_id"] == "Z2NwLWV1cm9wZS13ZXN0NDowMUhCWjNR"
    # The gift wrapping line has no product: no vendor could name it.
    assert props["products"] == [
        {"product_id": "632910392", "variant_id": "808950810", "sku": "IPOD2008PINK",
         "name": "IPod Nano - 8GB", "price": 199.0, "quantity": 1, "currency": "USD"}] * 2
    assert message["context"]["traits"] == {"email": "jon@example.com", "name": "John Smith"}
    assert message["context"]["webhook"] == {"platform": "shopify", "topic": "orders/paid",
                                             "delivery_id": "wh-1"}
    assert message["context"]["ip"] == "216.191.105.146"
    assert message["timestamp"] == "2023-10-05T10:47:42-04:00"


def test_shopify_ids_lose_their_gid_prefix() -> None:
    order = fixture("shopify_orders_paid.json")
    del order["id"]
    order["customer"]["id"] = "gid://shopify/Customer/7"
    message = shopify.read("orders/paid", order, "")
    assert message.message is not None
    assert message.message["properties"]["order_id"] == ORDER_ID
    assert message.message["userId"] == "7"


def test_which_shopify_deliveries_store_an_order() -> None:
    paid = fixture("shopify_orders_paid.json")
    pending = fixture("shopify_orders_create_pending.json")
    assert shopify.read("orders/create", paid, "").message is not None
    assert "stored when orders/paid arrives" in shopify.read("orders/create", pending,
                                                             "").ignored
    assert shopify.read("orders/paid", pending, "").message is not None
    assert "not an order payment" in shopify.read("orders/updated", paid, "").ignored
    test_order = dict(paid, test=True)
    assert "test order" in shopify.read("orders/paid", test_order, "").ignored
    with pytest.raises(Malformed, match="no id"):
        shopify.read("orders/paid", {"name": "#1"}, "")
    with pytest.raises(Malformed, match="total_price"):
        shopify.read("orders/paid", dict(paid, total_price="lots"), "")
    with pytest.raises(Malformed, match="JSON object"):
        shopify.read("orders/paid", [paid], "")


def test_a_processing_woocommerce_order_maps_to_the_canonical_order() -> None:
    delivery = woocommerce.read("order.created", fixture("woocommerce_order_processing.json"),
                                "d-1")
    message = delivery.message
    assert message is not None
    assert message["messageId"] == "woocommerce:order:727"
    assert message["userId"] == "25"
    props = message["properties"]
    assert (props["order_id"], props["order_number"], props["total"], props["revenue"],
            props["currency"]) == ("727", "727", 29.35, 18.0, "USD")
    assert props["email"] == "john.doe@example.com"
    assert props["cart_id"] == "a0b3c4d5e6f708192a3b4c5d6e7f8091"
    assert [(p["product_id"], p.get("variant_id"), p["price"], p["quantity"])
            for p in props["products"]] == [("93", None, 3.0, 2), ("22", "23", 12.0, 1)]
    assert message["timestamp"] == "2017-03-22T19:28:08Z"
    assert message["context"]["traits"]["phone"] == "(555) 555-5555"


def test_which_woocommerce_deliveries_store_an_order() -> None:
    order = fixture("woocommerce_order_processing.json")
    assert woocommerce.read("order.updated", dict(order, status="completed"),
                            "").message is not None
    for status in ("pending", "on-hold", "cancelled", "refunded", "failed"):
        assert "processing or completed" in woocommerce.read(
            "order.updated", dict(order, status=status), "").ignored
    assert "not an order" in woocommerce.read("product.updated", order, "").ignored
    guest = woocommerce.read("order.created", dict(order, customer_id=0), "").message
    assert guest is not None and "userId" not in guest
    ping = (DATA / "woocommerce_ping.txt").read_bytes()
    assert woocommerce.is_ping(ping, "")
    assert not woocommerce.is_ping(ping, "order.created")
    assert not woocommerce.is_ping(b'{"id": 1}', "")


def test_the_signature_is_of_the_raw_body() -> None:
    raw = b'{"id": 1}'
    assert signature_ok("secret-0123456789", raw, sign("secret-0123456789", raw))
    assert not signature_ok("secret-0123456789", raw + b" ", sign("secret-0123456789", raw))
    assert not signature_ok("secret-0123456789", raw, sign("another-secret-0123", raw))
    assert not signature_ok("secret-0123456789", raw, None)
    assert not signature_ok("secret-0123456789", raw, "é")


# ---- settings ---------------------------------------------------------------------------

def test_check_config_refuses_short_and_reused_webhook_secrets() -> None:
    def site(**keys: Any) -> dict[str, Any]:
        return {"relay": {"secret": "relay-secret-0123456789"},
                "sites": {"a": {"write_key": "pk_a", **keys}}}

    with pytest.raises(SettingsError, match="shopify_webhook_secret: must be a secret"):
        parse(site(shopify_webhook_secret="short"), env={})
    with pytest.raises(SettingsError, match="woocommerce_webhook_secret: must be a secret"):
        parse(site(server_key="server-key-0123456789",
                   woocommerce_webhook_secret="server-key-0123456789"), env={})
    with pytest.raises(SettingsError, match="the same value as relay.secret"):
        parse(site(shopify_webhook_secret="relay-secret-0123456789"), env={})
    # A webhook secret is enough for order_source = "server": orders come from the platform.
    settings = parse(site(shopify_webhook_secret="shpss-0123456789abcdef",
                          order_source="server"), env={})
    assert settings.sites["a"].shopify_webhook_secret == "shpss-0123456789abcdef"


# ---- over real HTTP -----------------------------------------------------------------------

def webhook_settings(table: dict[str, Any]) -> None:
    site = table["sites"]["demo"]
    site["shopify_webhook_secret"] = SHOPIFY_SECRET
    site["woocommerce_webhook_secret"] = WOO_SECRET
    site["order_source"] = "server"


def post_shopify(stack: Stack, order: dict[str, Any] | bytes, *, topic: str = "orders/paid",
                 delivery: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
                 secret: str = SHOPIFY_SECRET, site: str = "demo") -> httpx.Response:
    raw = order if isinstance(order, bytes) else orjson.dumps(order)
    return httpx.post(f"{stack.relay_url}/webhooks/shopify/{site}", content=raw, headers={
        "Content-Type": "application/json", "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(secret, raw), "X-Shopify-Shop-Domain": "demo.myshopify.com",
        "X-Shopify-Webhook-Id": delivery, "X-Shopify-API-Version": "2025-10"})


def post_woo(stack: Stack, raw: bytes, *, topic: str = "order.created",
             signed: bool = True) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-WC-Webhook-Topic": topic,
               "X-WC-Webhook-Resource": "order", "X-WC-Webhook-Event": topic.split(".")[-1],
               "X-WC-Webhook-Delivery-ID": "9f1e", "X-WC-Webhook-ID": "17"}
    if signed:
        headers["X-WC-Webhook-Signature"] = sign(WOO_SECRET, raw)
    return httpx.post(f"{stack.relay_url}/webhooks/woocommerce/demo", content=raw,
                      headers=headers)


def stored(stack: Stack) -> tuple[int, int]:
    """(messages stored, intake rows) as the spool file holds them now."""
    path = stack.settings.relay.spool.removeprefix("sqlite://")
    conn = sqlite3.connect(path)
    try:
        def count(table: str) -> int:
            try:
                return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

        return count("messages"), count("intake")
    finally:
        conn.close()


def purchases(stack: Stack, vendor: str, order_id: str) -> int:
    """How many requests the vendor's sandbox accepted that name the order."""
    return sum(1 for record in stack.received(vendor) if order_id in json.dumps(record))


def stored_visitor(stack: Stack, message_id: str) -> str:
    conn = routed_db(stack.settings.relay.spool.removeprefix("sqlite://"))
    try:
        row = conn.execute("SELECT visitor_id FROM messages WHERE message_id=?",
                           (message_id,)).fetchone()
        assert row is not None, f"{message_id} is not stored"
        return str(row[0])
    finally:
        conn.close()


def stored_event(stack: Stack, message_id: str) -> dict[str, Any]:
    conn = routed_db(stack.settings.relay.spool.removeprefix("sqlite://"))
    try:
        row = conn.execute("SELECT data FROM messages WHERE message_id=?",
                           (message_id,)).fetchone()
        assert row is not None, f"{message_id} is not stored"
        data: dict[str, Any] = orjson.loads(row[0])
        return data
    finally:
        conn.close()


def test_a_signed_shopify_order_reaches_every_vendor_on_the_shoppers_visitor(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings) as stack:
        order = fixture("shopify_orders_paid.json")
        # The shopper's browser, as a Shopify custom pixel reports it: the checkout with its
        # token, then its own copy of the order (held back: order_source = "server").
        browser = httpx.Client(base_url=stack.relay_url)
        first = browser.post("/v1/batch", json={"writeKey": "pk_demo_shop", "batch": [
            track("Checkout Started", "pixel-cs", checkout_id=order["checkout_token"])]})
        assert first.status_code == 200, first.text
        copy_answer = browser.post("/v1/batch", json={"writeKey": "pk_demo_shop", "batch": [
            track("Order Completed", "pixel-oc", order_id=ORDER_ID, total=403,
                  checkout_id=order["checkout_token"])]}).json()
        assert "held back" in copy_answer["dropped"][0]["reason"]

        answer = post_shopify(stack, order)
        assert answer.status_code == 200, answer.text
        assert answer.json() | {"messageId": None} == {
            "success": True, "stored": 1, "order_id": ORDER_ID, "messageId": None}
        for vendor in VENDORS:
            wait_for(lambda v=vendor: purchases(stack, v, ORDER_ID) or
                     purchases(stack, v, "632910392") and v == "advisable", timeout=20)
        assert (stored_visitor(stack, f"shopify:order:{ORDER_ID}")
                == stored_visitor(stack, "pixel-cs"))
        event = stored_event(stack, f"shopify:order:{ORDER_ID}")
        assert event["enrichment"]["source"] == "server"
        assert event["enrichment"]["user_id"] == "115310627314723954"
        assert event["enrichment"]["ip"] == "216.191.105.146"
        assert "ip" not in event["message"]["context"]
        assert event["message"]["context"]["webhook"]["delivery_id"] == (
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")


def test_ip_truncate_holds_for_the_address_a_webhook_names(tmp_path: Path) -> None:
    def truncating(table: dict[str, Any]) -> None:
        webhook_settings(table)
        table["sites"]["demo"]["ip_truncate"] = True

    with relay_stack(tmp_path, adjust=truncating, forward=False) as stack:
        assert post_shopify(stack, fixture("shopify_orders_paid.json")).json()["stored"] == 1
        event = stored_event(stack, f"shopify:order:{ORDER_ID}")
        assert event["enrichment"]["ip"] == "216.191.105.0"
        assert "216.191.105.146" not in json.dumps(event)


def test_a_bad_or_missing_signature_is_401_and_stores_nothing(tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings, forward=False) as stack:
        order = fixture("shopify_orders_paid.json")
        before = stored(stack)
        wrong = post_shopify(stack, order, secret="another-secret-0123456789")
        assert wrong.status_code == 401 and wrong.json()["code"] == "bad_signature"
        raw = orjson.dumps(order)
        unsigned = httpx.post(f"{stack.relay_url}/webhooks/shopify/demo", content=raw,
                              headers={"X-Shopify-Topic": "orders/paid"})
        assert unsigned.status_code == 401
        # The raw body is what is signed: the same JSON re-encoded is another body.
        resigned = httpx.post(f"{stack.relay_url}/webhooks/shopify/demo",
                              content=json.dumps(order, indent=1).encode(),
                              headers={"X-Shopify-Topic": "orders/paid",
                                       "X-Shopify-Hmac-Sha256": sign(SHOPIFY_SECRET, raw)})
        assert resigned.status_code == 401
        woo = post_woo(stack, (DATA / "woocommerce_order_processing.json").read_bytes(),
                       signed=False)
        assert woo.status_code == 401
        assert stored(stack) == before


def test_a_replayed_delivery_is_stored_and_sent_once(tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings, vendors=["goshops"]) as stack:
        order = fixture("shopify_orders_paid.json")
        assert post_shopify(stack, order).json()["stored"] == 1
        sent = wait_for(lambda: purchases(stack, "goshops", ORDER_ID), timeout=20)
        messages = stored(stack)[0]
        for topic in ("orders/paid", "orders/create"):
            # The same delivery again, then the other topic of the same order.
            again = post_shopify(stack, order, topic=topic)
            assert again.status_code == 200
            assert again.json()["duplicate"] is True and again.json()["stored"] == 0
        assert stored(stack)[0] == messages
        # A later order is delivered after the replays were refused: the first was not resent.
        later = copy.deepcopy(order)
        later["id"], later["name"] = 820982911946154510, "#10001"
        del later["admin_graphql_api_id"]
        assert post_shopify(stack, later, delivery="other").json()["stored"] == 1
        wait_for(lambda: purchases(stack, "goshops", "820982911946154510"), timeout=20)
        assert purchases(stack, "goshops", ORDER_ID) == sent


def test_a_malformed_payload_is_400_with_the_reason_and_stores_nothing(
        tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings, forward=False) as stack:
        before = stored(stack)
        not_json = post_shopify(stack, b'{"id": 1,')
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        no_id = post_shopify(stack, {"name": "#1", "financial_status": "paid"})
        assert no_id.status_code == 400 and "no id" in no_id.json()["error"]
        bad_price = fixture("shopify_orders_paid.json")
        bad_price["line_items"][0]["price"] = "free"
        answer = post_shopify(stack, bad_price)
        assert answer.status_code == 400 and "line_items[0].price" in answer.json()["error"]
        assert stored(stack) == before


def test_ignored_topics_and_statuses_are_200_and_store_nothing(tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings, forward=False) as stack:
        before = stored(stack)
        pending = post_shopify(stack, fixture("shopify_orders_create_pending.json"),
                               topic="orders/create")
        assert pending.status_code == 200 and "orders/paid" in pending.json()["ignored"]
        other = post_shopify(stack, fixture("shopify_orders_paid.json"),
                             topic="orders/updated")
        assert other.status_code == 200 and other.json()["stored"] == 0
        on_hold = fixture("woocommerce_order_processing.json") | {"status": "on-hold"}
        woo = post_woo(stack, orjson.dumps(on_hold), topic="order.updated")
        assert woo.status_code == 200 and "on-hold" in woo.json()["ignored"]
        assert stored(stack) == before


def test_woocommerce_ping_and_paid_order(tmp_path: Path) -> None:
    with relay_stack(tmp_path, adjust=webhook_settings, vendors=["goshops", "yespo"]) as stack:
        before = stored(stack)
        # What WooCommerce sends when the webhook is saved: a form body, no signature.
        ping = httpx.post(f"{stack.relay_url}/webhooks/woocommerce/demo",
                          content=(DATA / "woocommerce_ping.txt").read_bytes(),
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "User-Agent": "WooCommerce/8.5.1 Hookshot (WordPress/6.4)"})
        assert ping.status_code == 200 and ping.json() == {"success": True, "ping": True}
        assert stored(stack) == before
        answer = post_woo(stack, (DATA / "woocommerce_order_processing.json").read_bytes())
        assert answer.status_code == 200 and answer.json()["stored"] == 1
        for vendor in ("goshops", "yespo"):
            wait_for(lambda v=vendor: purchases(stack, v, "727"), timeout=20)
        updated = post_woo(stack, (DATA / "woocommerce_order_processing.json").read_bytes(),
                           topic="order.updated")
        assert updated.json()["duplicate"] is True


def test_a_site_without_the_platforms_secret_answers_404(tmp_path: Path) -> None:
    def only_shopify(table: dict[str, Any]) -> None:
        table["sites"]["demo"]["shopify_webhook_secret"] = SHOPIFY_SECRET

    with relay_stack(tmp_path, adjust=only_shopify, forward=False) as stack:
        woo = post_woo(stack, (DATA / "woocommerce_order_processing.json").read_bytes())
        assert woo.status_code == 404
        assert post_shopify(stack, fixture("shopify_orders_paid.json"),
                            site="nosuchsite").status_code == 404
