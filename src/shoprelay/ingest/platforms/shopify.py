"""Shopify's order webhooks (`orders/create`, `orders/paid`) as canonical orders.

Shopify signs the raw body (`X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 under the app's or
the store's webhook secret) and names the topic (`X-Shopify-Topic`) and the delivery
(`X-Shopify-Webhook-Id`). The body is the REST Admin API's order object.
"""

from __future__ import annotations

from typing import Any

from shoprelay.ingest.platforms import (
    Delivery,
    Malformed,
    amount,
    as_object,
    order_message,
    plain_id,
    text,
)

PLATFORM = "shopify"
SIGNATURE_HEADER = "x-shopify-hmac-sha256"
TOPIC_HEADER = "x-shopify-topic"
DELIVERY_HEADER = "x-shopify-webhook-id"
#: `orders/paid` is the sale; `orders/create` is one only when the order was paid at once
#: (a card checkout; a bank transfer or cash on delivery is `pending` until it is paid, and
#: its `orders/paid` follows).
PAID_TOPIC, CREATE_TOPIC = "orders/paid", "orders/create"
PAID_STATUSES = frozenset({"paid"})


def read(topic: str, body: Any, delivery_id: str) -> Delivery:
    """A verified delivery's topic and parsed JSON body as what the relay stores."""
    def ignored(reason: str) -> Delivery:
        return Delivery(PLATFORM, topic, delivery_id, ignored=reason)

    if topic not in (PAID_TOPIC, CREATE_TOPIC):
        return ignored(f"topic {topic or '(none)'} is not an order payment "
                       f"(subscribe {PAID_TOPIC})")
    order = as_object(body, "the body")
    order_id = plain_id(order.get("id")) or plain_id(order.get("admin_graphql_api_id"))
    if order_id is None:
        raise Malformed("the order has no id")
    status = text(order.get("financial_status")) or ""
    if topic == CREATE_TOPIC and status not in PAID_STATUSES:
        return ignored(f"order {order_id} is {status or 'not paid'} at creation: it is "
                       f"stored when {PAID_TOPIC} arrives")
    if order.get("test") is True:
        return ignored(f"order {order_id} is a test order (a test notification or a test "
                       "payment gateway): not sent to vendors")
    return Delivery(PLATFORM, topic, delivery_id, message=_message(order, order_id, topic,
                                                                   delivery_id))


def _message(order: dict[str, Any], order_id: str, topic: str,
             delivery_id: str) -> dict[str, Any]:
    customer = order.get("customer") if isinstance(order.get("customer"), dict) else {}
    assert isinstance(customer, dict)
    email = (text(order.get("email")) or text(order.get("contact_email"))
             or text(customer.get("email")))
    name = " ".join(p for p in (text(customer.get("first_name")),
                                text(customer.get("last_name"))) if p)
    lines = order.get("line_items")
    if lines is not None and not isinstance(lines, list):
        raise Malformed("line_items must be a list")
    currency = text(order.get("currency")) or text(order.get("presentment_currency"))
    properties: dict[str, Any] = {
        "order_number": text(order.get("name")) or text(order.get("order_number")),
        "total": amount(order.get("total_price"), "total_price"),
        "revenue": amount(order.get("subtotal_price"), "subtotal_price"),
        "tax": amount(order.get("total_tax"), "total_tax"),
        "discount": amount(order.get("total_discounts"), "total_discounts"),
        "shipping": amount(_shop_money(order.get("total_shipping_price_set")),
                           "total_shipping_price_set"),
        "currency": currency,
        "email": email,
        # The tokens a Shopify custom pixel reports as `checkout_id` / `cart_id`: the link
        # to the shopper's browser (docs/platforms.md, "Which visitor").
        "checkout_id": text(order.get("checkout_token")),
        "cart_id": text(order.get("cart_token")),
        "products": [_line(line, i, currency) for i, line in enumerate(lines or [])
                     if _has_product(line)],
    }
    timestamp = text(order.get("processed_at")) or text(order.get("created_at"))
    message = order_message(platform=PLATFORM, topic=topic, delivery_id=delivery_id,
                            order_id=order_id, properties=properties,
                            user_id=plain_id(customer.get("id")),
                            traits={"email": email or "", "name": name,
                                    "phone": text(customer.get("phone")) or ""},
                            timestamp=timestamp)
    client = order.get("client_details")
    agent = text(client.get("user_agent")) if isinstance(client, dict) else None
    ip = text(order.get("browser_ip")) or (
        text(client.get("browser_ip")) if isinstance(client, dict) else None)
    if agent:
        message["context"]["userAgent"] = agent
    if ip:
        message["context"]["ip"] = ip
    return message


def _has_product(line: Any) -> bool:
    """A line a vendor can name: a custom line item (a gift wrap, a fee) has no product."""
    return isinstance(line, dict) and (plain_id(line.get("product_id")) is not None
                                       or plain_id(line.get("variant_id")) is not None)


def _line(line: dict[str, Any], index: int, currency: str | None) -> dict[str, Any]:
    where = f"line_items[{index}]"
    quantity = amount(line.get("quantity"), f"{where}.quantity")
    out: dict[str, Any] = {
        "product_id": plain_id(line.get("product_id")) or plain_id(line.get("variant_id")),
        "variant_id": plain_id(line.get("variant_id")),
        "sku": text(line.get("sku")),
        "name": text(line.get("title")) or text(line.get("name")),
        "price": amount(line.get("price"), f"{where}.price"),
        "quantity": int(quantity) if quantity is not None and quantity.is_integer()
        else quantity,
        "currency": currency,
    }
    return {k: v for k, v in out.items() if v is not None}


def _shop_money(price_set: Any) -> Any:
    if isinstance(price_set, dict) and isinstance(price_set.get("shop_money"), dict):
        return price_set["shop_money"].get("amount")
    return None
