"""WooCommerce's order webhooks (`order.created`, `order.updated`) as canonical orders.

WooCommerce signs the raw body (`X-WC-Webhook-Signature`: base64 HMAC-SHA256 under the
webhook's secret) and names the topic (`X-WC-Webhook-Topic`) and the delivery
(`X-WC-Webhook-Delivery-ID`). The body is the REST API's order object (v3). When a webhook
is saved, WooCommerce first sends a ping: an unsigned form body `webhook_id=N`, which must be
answered 200 or the webhook is not activated.
"""

from __future__ import annotations

import re
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

PLATFORM = "woocommerce"
SIGNATURE_HEADER = "x-wc-webhook-signature"
TOPIC_HEADER = "x-wc-webhook-topic"
DELIVERY_HEADER = "x-wc-webhook-delivery-id"
TOPICS = frozenset({"order.created", "order.updated"})
#: A WooCommerce order is paid once it is `processing` (paid, to be shipped) or `completed`;
#: `pending`, `on-hold` (awaiting a transfer), `failed`, `cancelled`, `refunded` are not sales.
PAID_STATUSES = frozenset({"processing", "completed"})
_PING = re.compile(rb"webhook_id=\d{1,20}")


def is_ping(raw: bytes, topic: str) -> bool:
    """WooCommerce's ping on webhook creation (`WC_Webhook::deliver_ping`)."""
    return not topic and _PING.fullmatch(raw.strip()) is not None


def read(topic: str, body: Any, delivery_id: str) -> Delivery:
    """A verified delivery's topic and parsed JSON body as what the relay stores."""
    def ignored(reason: str) -> Delivery:
        return Delivery(PLATFORM, topic, delivery_id, ignored=reason)

    if topic not in TOPICS:
        return ignored(f"topic {topic or '(none)'} is not an order (subscribe "
                       "order.created and order.updated)")
    order = as_object(body, "the body")
    order_id = plain_id(order.get("id"))
    if order_id is None:
        raise Malformed("the order has no id")
    status = text(order.get("status")) or ""
    if status not in PAID_STATUSES:
        return ignored(f"order {order_id} is {status or 'without status'}: it is stored "
                       "once it is processing or completed")
    billing = order.get("billing") if isinstance(order.get("billing"), dict) else {}
    assert isinstance(billing, dict)
    lines = order.get("line_items")
    if lines is not None and not isinstance(lines, list):
        raise Malformed("line_items must be a list")
    currency = text(order.get("currency"))
    total = amount(order.get("total"), "total")
    tax = amount(order.get("total_tax"), "total_tax")
    shipping = amount(order.get("shipping_total"), "shipping_total")
    email = text(billing.get("email"))
    properties: dict[str, Any] = {
        "order_number": text(order.get("number")),
        "total": total,
        # Segment's revenue: the order's value without its tax and shipping.
        "revenue": None if total is None else round(total - (tax or 0) - (shipping or 0), 2),
        "tax": tax,
        "shipping": shipping,
        "discount": amount(order.get("discount_total"), "discount_total"),
        "currency": currency,
        "email": email,
        # WooCommerce's cart hash (its `woocommerce_cart_hash` cookie while shopping).
        "cart_id": text(order.get("cart_hash")),
        "products": [_line(line, i, currency) for i, line in enumerate(lines or [])
                     if isinstance(line, dict) and plain_id(line.get("product_id"))],
    }
    name = " ".join(p for p in (text(billing.get("first_name")),
                                text(billing.get("last_name"))) if p)
    timestamp = _gmt(order.get("date_paid_gmt")) or _gmt(order.get("date_created_gmt"))
    message = order_message(platform=PLATFORM, topic=topic, delivery_id=delivery_id,
                            order_id=order_id, properties=properties,
                            user_id=plain_id(order.get("customer_id")),
                            traits={"email": email or "", "name": name,
                                    "phone": text(billing.get("phone")) or ""},
                            timestamp=timestamp)
    if agent := text(order.get("customer_user_agent")):
        message["context"]["userAgent"] = agent
    if ip := text(order.get("customer_ip_address")):
        message["context"]["ip"] = ip
    return Delivery(PLATFORM, topic, delivery_id, message=message)


def _line(line: dict[str, Any], index: int, currency: str | None) -> dict[str, Any]:
    where = f"line_items[{index}]"
    quantity = amount(line.get("quantity"), f"{where}.quantity")
    price = amount(line.get("price"), f"{where}.price")
    if price is None and quantity:
        line_total = amount(line.get("total"), f"{where}.total")
        price = None if line_total is None else round(line_total / quantity, 2)
    out: dict[str, Any] = {
        "product_id": plain_id(line.get("product_id")),
        "variant_id": plain_id(line.get("variation_id")),
        "sku": text(line.get("sku")),
        "name": text(line.get("name")),
        "price": price,
        "quantity": int(quantity) if quantity is not None and quantity.is_integer()
        else quantity,
        "currency": currency,
    }
    return {k: v for k, v in out.items() if v is not None}


def _gmt(value: Any) -> str | None:
    """WooCommerce's `*_gmt` dates carry no zone ("2017-03-22T16:28:08"): they are UTC."""
    stamp = text(value)
    if stamp is None:
        return None
    return stamp if stamp.endswith("Z") or "+" in stamp[10:] else stamp + "Z"
