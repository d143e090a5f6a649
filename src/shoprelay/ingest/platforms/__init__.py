"""The shop platforms' order webhooks read as canonical `Order Completed` messages.

Pure functions, one module per platform (`shopify`, `woocommerce`): a verified delivery's
topic and body in, a `Delivery` out (the message to store, or why nothing is stored). The
routes that take the deliveries are `shoprelay.ingest.webhooks`; docs/platforms.md says
what each platform sends and how a shop sets it up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from shoprelay.events import ORDER_COMPLETED


class Malformed(ValueError):
    """A delivery the relay cannot read as an order (400 with the reason: the platform
    shows it in its delivery log)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery, read: the canonical message to store, or `ignored`, why the
    delivery stores nothing (answered 200 all the same, so the platform does not retry)."""

    platform: str
    topic: str
    delivery_id: str
    message: dict[str, Any] | None = None
    ignored: str = ""


def signature_ok(secret: str, raw: bytes, given: str | None) -> bool:
    """Whether `given` is the base64 HMAC-SHA256 of the raw body under `secret` (what both
    Shopify and WooCommerce send), compared in constant time."""
    if not given or not secret:
        return False
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    return hmac.compare_digest(expected, given.strip().encode("ascii", "replace"))


def sign(secret: str, raw: bytes) -> str:
    """The signature header value the platforms send for `raw` (the demo and tests sign
    with it)."""
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


def amount(value: Any, what: str) -> float | None:
    """A money amount or count as the platforms write them (Shopify: strings like "10.00",
    WooCommerce: strings or numbers); None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Malformed(f"{what} is not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Malformed(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise Malformed(f"{what} is not a number: {value!r}")
    return number


def plain_id(value: Any) -> str | None:
    """A platform id as the relay keeps it: the number as text, without Shopify's
    `gid://shopify/<Type>/` prefix (a Shopify custom pixel reports the same number); None for
    none (WooCommerce writes 0 for "no customer", "no variation")."""
    if value is None or isinstance(value, bool) or value in (0, "0", ""):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if text.startswith("gid://"):
        text = text.rsplit("/", 1)[-1].split("?", 1)[0]
    return text or None


def order_message(*, platform: str, topic: str, delivery_id: str, order_id: str,
                  properties: dict[str, Any], user_id: str | None,
                  traits: dict[str, Any], timestamp: str | None) -> dict[str, Any]:
    """The canonical `Order Completed` of a platform's order. Its messageId is the
    platform's and the order id's, so every delivery of one order (a retry, `orders/create`
    then `orders/paid`, WooCommerce's repeated `order.updated`) is one message to the relay's
    dedup, and its order id is the one a browser copy of the order reports."""
    props = {"order_id": order_id,
             **{k: v for k, v in properties.items() if v not in (None, "", [])}}
    context: dict[str, Any] = {"webhook": {"platform": platform, "topic": topic,
                                           "delivery_id": delivery_id}}
    kept_traits = {k: v for k, v in traits.items() if isinstance(v, str) and v.strip()}
    if kept_traits:
        context["traits"] = kept_traits
    message: dict[str, Any] = {"type": "track", "event": ORDER_COMPLETED,
                               "messageId": f"{platform}:order:{order_id}",
                               "properties": props, "context": context}
    if user_id:
        message["userId"] = user_id
    if timestamp:
        message["timestamp"] = timestamp
    return message


def as_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} must be a JSON object")
    return value


def text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list | bool):
        return None
    out = str(value).strip()
    return out or None
