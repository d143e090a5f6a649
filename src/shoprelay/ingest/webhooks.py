"""The shop platforms' order webhooks: `POST /webhooks/shopify/<site>` and
`POST /webhooks/woocommerce/<site>` (docs/platforms.md).

A shop on Shopify or WooCommerce reports its orders with no code of its own: the platform
posts each order, signed with a per-site secret from the settings, and the relay stores it as
the server's `Order Completed` (`source = "server"`, so `order_source = "server"` holds for
them) through the server path of `ingest.routes` (one durable append, answered after the
fold). What a delivery is answered, and why:

- 404: the site has no secret for that platform (or no such site): the route is off.
- 401: the signature (of the raw body) is missing or wrong; nothing is read or stored.
- 400: the body is not JSON or not an order (no id, a price that is no number).
- 200 with `ignored`: a topic or status that is not a sale (an unpaid order, a product
  update, a test order). Any other non-2xx would make the platform retry, and after enough
  failures disable the webhook.
- 200 with `duplicate`: the order was stored before (a replayed delivery, `orders/create`
  then `orders/paid`, every `order.updated`): nothing is stored again.
- 200 with `stored: 1`: stored; its vendors get it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoprelay.events import stored_user_agent
from shoprelay.ingest.encoding import content_encoding, read_body
from shoprelay.ingest.platforms import Delivery, Malformed, shopify, signature_ok, woocommerce
from shoprelay.ingest.routes import Ingest, ip_of, truncate_ip
from shoprelay.ingest.validation import MAX_BATCH_BYTES, BadRequest, check_messages
from shoprelay.rules import RequestContext
from shoprelay.settings import SiteSettings
from shoprelay.spool.disk import SpoolFull

log = logging.getLogger("shoprelay.webhooks")


@dataclass(frozen=True, slots=True)
class Platform:
    """What differs between the platforms: the secret's setting, the headers, the reader."""

    name: str
    secret_setting: str
    signature_header: str
    topic_header: str
    delivery_header: str
    read: Callable[[str, Any, str], Delivery]
    #: The unsigned ping a platform sends when a webhook is made (raw body, topic), if any.
    is_ping: Callable[[bytes, str], bool] | None = None


PLATFORMS = {
    shopify.PLATFORM: Platform(shopify.PLATFORM, "shopify_webhook_secret",
                               shopify.SIGNATURE_HEADER, shopify.TOPIC_HEADER,
                               shopify.DELIVERY_HEADER, shopify.read),
    woocommerce.PLATFORM: Platform(woocommerce.PLATFORM, "woocommerce_webhook_secret",
                                   woocommerce.SIGNATURE_HEADER, woocommerce.TOPIC_HEADER,
                                   woocommerce.DELIVERY_HEADER, woocommerce.read,
                                   woocommerce.is_ping),
}


class Webhooks:
    """The webhook routes over the relay's ingest (its spool, metrics and debugger)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.settings = ingest.settings

    def routes(self) -> list[Route]:
        prefixes = [""] + ([self.settings.relay.path_prefix]
                           if self.settings.relay.path_prefix else [])
        return [Route(f"{prefix}/webhooks/{name}/{{site}}", self._endpoint(platform),
                      methods=["POST"])
                for prefix in prefixes for name, platform in PLATFORMS.items()]

    def _endpoint(self, platform: Platform) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self.take(request, platform)

        endpoint.__name__ = f"webhook_{platform.name}"
        return endpoint

    async def take(self, request: Request, platform: Platform) -> Response:
        site = self.settings.sites.get(request.path_params["site"])
        secret = getattr(site, platform.secret_setting, "") if site is not None else ""
        if site is None or not secret:
            return _answer(404, error=f"no {platform.name} webhook here: the site is not "
                                      f"configured with {platform.secret_setting}",
                           code="not_found")
        try:
            async with asyncio.timeout(self.settings.relay.body_read_timeout_seconds):
                raw = await read_body(request.stream(),
                                      content_encoding(request.headers.get("content-encoding")),
                                      MAX_BATCH_BYTES)
        except BadRequest as exc:
            return self._refused(exc.status, exc.reason, "bad_request", site)
        except TimeoutError:
            return self._refused(408, "the request body did not arrive in time", "slow_body",
                                 site)
        topic = request.headers.get(platform.topic_header, "").strip()
        if platform.is_ping is not None and platform.is_ping(raw, topic):
            # Nothing to verify or store: the platform only checks that the URL answers.
            return _answer(200, success=True, ping=True)
        if not signature_ok(secret, raw, request.headers.get(platform.signature_header)):
            return self._refused(401, f"missing or wrong {platform.signature_header} (the "
                                      f"base64 HMAC-SHA256 of the raw body under the site's "
                                      f"{platform.secret_setting})", "bad_signature", site)
        delivery_id = request.headers.get(platform.delivery_header, "").strip()[:100]
        try:
            body = orjson.loads(raw)
            delivery = platform.read(topic, body, delivery_id)
        except orjson.JSONDecodeError as exc:
            return self._refused(400, f"the body is not JSON: {exc}", "bad_request", site)
        except Malformed as exc:
            return self._refused(400, f"not an order: {exc}", "bad_request", site)
        if delivery.message is None:
            log.info("webhook ignored: %s", delivery.ignored,
                     extra={"site": site.name, "platform": platform.name, "topic": topic})
            return _answer(200, success=True, stored=0, ignored=delivery.ignored)
        return await self._store(site, delivery)

    async def _store(self, site: SiteSettings, delivery: Delivery) -> Response:
        assert delivery.message is not None
        # The shopper's address and browser, as the platform saw them, are kept as the
        # event's enrichment (truncated with `ip_truncate`), not in the stored message.
        context = delivery.message["context"]
        ip = ip_of(context.pop("ip")) if isinstance(context.get("ip"), str) else None
        agent = context.pop("userAgent", None)
        checked = check_messages([delivery.message], received_at=time.time(), server=True)
        if checked.rejected:
            return self._refused(400, f"not an order: {checked.rejected[0].error}",
                                 "bad_request", site)
        message = checked.accepted[0]
        request_context = RequestContext(
            source="server", ip=truncate_ip(ip) if site.ip_truncate else ip,
            user_agent=stored_user_agent(agent if isinstance(agent, str) else None),
            bot=False, consent={0: None},
            # "": the message names no visitor; the fold finds it (docs/platforms.md).
            hints=[""])
        try:
            result = await self.ingest.store(site.name, [message], request_context, wait=True)
        except SpoolFull as full:
            self.ingest.metrics.rejected.labels("spool_full").inc()
            response = _answer(503, error="the relay cannot store events right now",
                               code="spool_full")
            response.headers["Retry-After"] = str(full.retry_after)
            return response
        order_id = message["properties"]["order_id"]
        answer: dict[str, Any] = {"success": True, "order_id": order_id,
                                  "messageId": message["messageId"]}
        if result is not None and (result.duplicates or result.dropped):
            reasons = [reason for _, reason in result.dropped]
            return _answer(200, **answer, stored=0, duplicate=True,
                           reason=reasons[0] if reasons else
                           f"order {order_id} was stored before (delivery "
                           f"{delivery.delivery_id or 'without id'}): nothing stored again")
        self.ingest.announce(site.name, [message])
        return _answer(200, **answer, stored=1)

    def _refused(self, status: int, reason: str, code: str, site: SiteSettings) -> Response:
        self.ingest.metrics.rejected.labels(code).inc()
        log.info("webhook refused (%d): %s", status, reason.split(":")[0],
                 extra={"site": site.name})
        return _answer(status, error=reason, code=code)


def _answer(status: int, **body: Any) -> Response:
    if "error" in body:
        body = {"success": False, **body, "message": body["error"]}
    response = Response(orjson.dumps(body), status, media_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
