"""The browser-facing ingestion routes (CONTRACT §1): Segment's HTTP tracking API shape.

A request is answered 200 only after its accepted messages are committed to the spool, so an
acknowledged event is never lost. Each message is judged on its own; the answer lists the
rejected ones with their index and reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoprelay.events import stored_user_agent
from shoprelay.identity.bots import is_bot
from shoprelay.identity.consent import consent_of, refuses_everything
from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.ingest.encoding import content_encoding, read_body
from shoprelay.ingest.limits import PerAddressLimit
from shoprelay.ingest.validation import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    SHORT_TYPES,
    BadRequest,
    check_messages,
    message_floor,
    parse_body,
)
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.metrics import Metrics
from shoprelay.proxies import TrustedProxies
from shoprelay.rules import IngestResult, RequestContext, SitePolicy, early_refusals
from shoprelay.settings import Settings, SiteSettings, domain_matches
from shoprelay.spool.base import Spool
from shoprelay.spool.disk import SpoolFull
from shoprelay.vendors import VENDORS

log = logging.getLogger("shoprelay.ingest")
#: Exactly what the tested clients send: analytics.js's Basic auth, and RudderStack's JS SDK v3
#: (its XHR queue adds `AnonymousId` and `SentAt` to every request, `Rsa-Recovered` to one
#: reclaimed from another tab's storage, and the four `Rsa-Retry-*`/`Rsa-Since-*` on retries).
_CORS_ALLOW_HEADERS = ", ".join([
    "Content-Type", "Authorization", "AnonymousId", "SentAt", "Rsa-Recovered",
    "Rsa-Retry-Attempt", "Rsa-Retry-Reason", "Rsa-Since-First-Attempt",
    "Rsa-Since-Last-Attempt"])
#: Cookie-less anonymousIds remembered as handed a cookie (until routed, an alias is not
#: in the spool yet); the oldest are forgotten first.
_MINTED_KEPT = 20_000
#: How long a server request waits for its fold before it is answered without it.
_ROUTED_WAIT = 10.0
_REQUEST_REASONS = {400: "malformed", 413: "too_large", 401: "unknown_key",
                    415: "unsupported_encoding"}
_ERROR_CODES = {400: "bad_request", 401: "unknown_key", 403: "origin_not_allowed",
                408: "slow_body", 413: "too_large", 415: "unsupported_encoding",
                429: "rate_limited", 503: "spool_full"}


class Ingest:
    def __init__(self, settings: Settings, spool: Spool, cookie: VisitorCookie,
                 metrics: Metrics | None = None, bus: DebugBus | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.cookie = cookie
        self.metrics = metrics or Metrics()
        self.bus = bus or DebugBus()
        self.per_address = PerAddressLimit(settings.relay.ingest_per_ip_per_minute)
        self._all_origins = {o for s in settings.sites.values() for o in s.allowed_origins}
        self.proxies = TrustedProxies(settings.relay.trusted_proxies)
        self._refusal_logged = -1e9
        #: Per site: event name → how many of its vendors map it (the most work rows a
        #: message of that name makes: what ingest charges it for them).
        self._fanout = {name: _fanout(site) for name, site in settings.sites.items()}
        #: (site, anonymousId) a cookie was handed out for by this process (see `_mint`).
        self._minted: OrderedDict[tuple[str, str], None] = OrderedDict()

    def routes(self) -> list[Route]:
        prefixes = [""] + ([self.settings.relay.path_prefix]
                           if self.settings.relay.path_prefix else [])
        return [route for prefix in prefixes for route in self._routes(prefix)]

    def _routes(self, prefix: str) -> list[Route]:
        routes = [Route(f"{prefix}/v1/{path}", self.batch, methods=["POST", "OPTIONS"])
                  for path in ("batch", "b")]
        # RudderStack's beacon transport: sendBeacon, text/plain, `?writeKey=` in the URL.
        routes.append(Route(f"{prefix}/beacon/v1/batch", self.batch,
                            methods=["POST", "OPTIONS"]))
        for short, kind in SHORT_TYPES.items():
            for path in (kind, short):
                routes.append(Route(f"{prefix}/v1/{path}", self._single(kind),
                                    methods=["POST", "OPTIONS"]))
        return routes

    async def batch(self, request: Request) -> Response:
        return await self._timed(request, "")

    def _single(self, kind: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self._timed(request, kind)

        endpoint.__name__ = f"ingest_{kind}"
        return endpoint

    # ---- the request -----------------------------------------------------------------------

    async def _timed(self, request: Request, kind: str) -> Response:
        started = time.perf_counter()
        response = await self._handle(request, kind)
        self.metrics.latency.labels(kind or "batch").observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: Request, kind: str) -> Response:
        origin = request.headers.get("origin")
        if request.method == "OPTIONS":
            return self._preflight(origin)
        server_site = self.settings.site_for_server_key(_basic_user(request))
        client_ip = self._client_ip(request)
        if server_site is None:
            # A refused X-Forwarded-For still counts against the proxy that sent it.
            wait = self.per_address.hit(client_ip or _peer(request))
            if wait is not None:
                self.metrics.rejected.labels("rate_limited").inc()
                response = self._error(429, "too many requests from this address", origin)
                response.headers["Retry-After"] = str(int(wait + 0.999))
                return response
        limit = MAX_MESSAGE_BYTES if kind else MAX_BATCH_BYTES
        try:
            async with asyncio.timeout(self.settings.relay.body_read_timeout_seconds):
                raw = await _read_limited(request, limit)
            body = parse_body(raw)
        except BadRequest as exc:
            self.metrics.rejected.labels(_REQUEST_REASONS.get(exc.status, "bad_request")).inc()
            return self._error(exc.status, exc.reason, origin)
        except TimeoutError:
            self.metrics.rejected.labels("slow_body").inc()
            return self._error(408, "the request body did not arrive in time", origin)

        site = server_site or self.settings.site_for_key(_write_key(request, body))
        if site is None:
            self.metrics.rejected.labels("unknown_key").inc()
            return self._error(401, "unknown or missing write key", origin)
        server = server_site is not None
        if (not server and origin and site.allowed_origins
                and origin.rstrip("/") not in site.allowed_origins):
            self.metrics.rejected.labels("origin").inc()
            return self._error(403, f"origin {origin} is not allowed for this write key", None)

        received_at = time.time()
        if kind:
            messages: Any = [body]
        else:
            messages = body.get("batch")
            if not isinstance(messages, list) or not messages:
                return self._error(400, "batch must be a non-empty array of messages", origin,
                                   site)
        _default_anonymous_id(messages, request.headers.get("anonymousid"))
        header_agent = request.headers.get("user-agent")
        checked = check_messages(messages, batch_context=body.get("context"),
                                 received_at=received_at, type_hint=kind,
                                 body_bytes=len(raw), server=server,
                                 floor=message_floor(len(stored_user_agent(header_agent) or "")),
                                 fanout=self._fanout.get(site.name))
        accepted = checked.accepted
        gpc = request.headers.get("sec-gpc", "").strip() == "1"
        consents = {i: consent_of(m, gpc) for i, m in enumerate(accepted)}
        # A request whose every message refuses consent gets no cookie, and none is read.
        no_consent = bool(accepted) and all(refuses_everything(c) for c in consents.values())
        if site.consent_required and not server:
            no_consent = no_consent or all(c is None for c in consents.values())
        cookie_visitor = visitor = new_visitor = None
        if not server and not no_consent:
            cookie_visitor = self.cookie.read(request.cookies.get(self.cookie.name), site.name)
            visitor = cookie_visitor
            if cookie_visitor is None and accepted:
                visitor, new_visitor = await self._mint(site.name, accepted)
        hints: list[str | None] | None = (
            [self._server_visitor(m, site.name) for m in accepted] if server else None)
        dropped: list[tuple[int, str]] = []
        if accepted:
            user_agent = header_agent
            ip = client_ip
            if server:
                # The backend speaks for the visitor: take what it says the browser was.
                first = accepted[0].get("context") or {}
                ip = ip_of(first["ip"]) if isinstance(first.get("ip"), str) else None
                user_agent = first.get("userAgent") if isinstance(first.get("userAgent"),
                                                                    str) else None
            context = RequestContext(
                source="server" if server else "browser", cookie_visitor=cookie_visitor,
                ip=truncate_ip(ip) if site.ip_truncate else ip,
                # Cut as stored on the events, so the intake keeps no more of it either; the
                # bot flag is decided on the whole header first.
                user_agent=stored_user_agent(user_agent),
                bot=False if server else is_bot(user_agent), consent=consents, hints=hints,
                new_visitor=new_visitor)
            # Accept first, think after: one durable append, then the answer. The rules
            # stage folds it behind the request (shoprelay.spool: the intake).
            try:
                result = await self.store(site.name, accepted, context, wait=server)
            except SpoolFull as full:
                return self._full(full, origin, site)
            if result is not None:
                # The shop's backend hears the fold's answer (an order already reported).
                dropped = result.dropped
            else:
                dropped = early_refusals(SitePolicy.of(site), context.source, accepted,
                                         received_at)
        for rejection in checked.rejected:
            self.metrics.rejected.labels(rejection.code).inc()
        if checked.rejected:
            # Codes and indexes only: a message's content may hold personal data.
            log.info("rejected %d of %d message(s)", len(checked.rejected),
                     len(checked.rejected) + len(accepted),
                     extra={"site": site.name,
                            "reasons": sorted({r.code for r in checked.rejected})})
        self.announce(site.name, accepted)
        # An order copy dropped as already reported is not "accepted": the client hears why.
        duplicates = sum(1 for _, reason in dropped if reason.startswith("duplicate"))
        answer: dict[str, Any] = {
            "success": not checked.rejected,
            "accepted": len(accepted) - duplicates,
            "rejected": [r.to_dict() for r in checked.rejected],
        }
        if dropped:
            answer["dropped"] = [
                {"messageId": accepted[index].get("messageId"), "reason": reason}
                for index, reason in dropped]
        status = 200 if accepted else 400
        if not accepted:
            answer |= {"code": "invalid_messages", "message": checked.rejected[0].error}
        response = Response(orjson.dumps(answer), status, media_type="application/json")
        self._cors(response, origin, site)
        if visitor and not server and not no_consent:
            response.headers.append("Set-Cookie",
                                    self.cookie.header(visitor, site.name,
                                                       secure=self.proxies.is_https(request),
                                                       domain=_cookie_domain(site, request)))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def store(self, site: str, messages: list[dict[str, Any]], context: RequestContext,
                    *, wait: bool) -> IngestResult | None:
        """One durable append of a request's accepted messages (raises `SpoolFull`); with
        `wait` (a server: the server API, a platform's webhook) the fold's answer, or None
        when it took longer than `_ROUTED_WAIT`."""
        ticket = await self.spool.append(site, messages, context, wait=wait)
        return await self._routed(ticket) if wait else None

    def announce(self, site: str, accepted: list[dict[str, Any]]) -> None:
        """Count stored messages and show them on the live debugger."""
        if not accepted:
            return
        self.metrics.accepted.labels(site).inc(len(accepted))
        if self.bus.active:
            for message in accepted:
                self.bus.publish("message", {"site": site, "type": message.get("type"),
                                             "event": message.get("event"),
                                             "message": message})

    async def _mint(self, site: str, messages: list[dict[str, Any]]
                    ) -> tuple[str | None, str | None]:
        """For a cookie-less browser request: the visitor its answer's cookie names (None:
        no cookie), and the new visitor the fold is to use (None: the fold finds it).

        A request whose first message brings no anonymousId gets a new visitor. One that
        does gets the visitor its anonymousId derives (`visitor_for_anonymous_id`, the one
        the rules will bind it to) unless that anonymousId already belongs to a visitor, or
        a cookie for it was handed out here moments ago and is not routed yet: an
        anonymousId is no credential, so only the request that first brings it is given the
        cookie (the rules find the visitor of later cookie-less requests by the alias)."""
        anonymous_id = messages[0].get("anonymousId")
        if not isinstance(anonymous_id, str) or not anonymous_id:
            visitor = new_visitor_id()
            return visitor, visitor
        key = (site, anonymous_id)
        if key in self._minted or await self.spool.alias(site, anonymous_id) is not None:
            return None, None
        self._minted[key] = None
        if len(self._minted) > _MINTED_KEPT:
            self._minted.popitem(last=False)
        return self.cookie.visitor_for_anonymous_id(site, anonymous_id), None

    def _full(self, full: SpoolFull, origin: str | None, site: SiteSettings) -> Response:
        """The spool cannot store (its disk is full): 503 with `Retry-After`, so clients
        keep their events and send them again later. Nothing of the request was stored, and
        nothing is logged here (the spool logs the condition once a minute)."""
        self.metrics.rejected.labels("spool_full").inc()
        response = self._error(503, "the relay cannot store events right now (its disk is "
                               "full); nothing of this request was stored, send it again "
                               "later", origin, site)
        response.headers["Retry-After"] = str(full.retry_after)
        return response

    async def _routed(self, ticket: str) -> IngestResult | None:
        """Wait for the rules stage to fold a server request (it usually takes a few
        milliseconds); None after `_ROUTED_WAIT` seconds: the answer then gives only what
        needs no fold, and the request stays in the intake to be routed."""
        delay, deadline = 0.001, time.monotonic() + _ROUTED_WAIT
        while True:
            try:
                result = await self.spool.routed(ticket)
            except SpoolFull:
                return None  # stored: it is answered, and folded once there is room
            if result is not None:
                return result
            if time.monotonic() > deadline:
                log.warning("server request not routed within %.0f s: answered before "
                            "its fold", _ROUTED_WAIT)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _server_visitor(self, message: dict[str, Any], site: str) -> str:
        """For the server API: the visitor named by the `sc` cookie value the shop's backend
        passed on in `context.visitorCookie` (verified), or "" to find it by user id."""
        context = message.get("context")
        value = context.pop("visitorCookie", None) if isinstance(context, dict) else None
        return (self.cookie.read(value, site) if isinstance(value, str) else None) or ""

    # ---- helpers ---------------------------------------------------------------------------

    def _preflight(self, origin: str | None) -> Response:
        if not origin or origin.rstrip("/") not in self._all_origins:
            return self._error(403, f"origin {origin!r} is not allowed to send here", None)
        response = Response(status_code=204)
        response.headers.update({
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        })
        return response

    @staticmethod
    def _cors(response: Response, origin: str | None, site: SiteSettings | None) -> None:
        if origin and site is not None and origin.rstrip("/") in site.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"

    def _error(self, status: int, reason: str, origin: str | None,
               site: SiteSettings | None = None) -> Response:
        # `code` and `message` too: Segment's and RudderStack's Python libraries read those
        # two keys of any answer that is not 200 (and fail with a KeyError without them).
        body = {"success": False, "error": reason, "code": _ERROR_CODES.get(status, "error"),
                "message": reason, "accepted": 0, "rejected": []}
        response = Response(orjson.dumps(body), status, media_type="application/json")
        if origin and site is None and origin.rstrip("/") in self._all_origins:
            # Let the page read why (its write key may be wrong) without leaking to others.
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        self._cors(response, origin, site)
        return response

    def _client_ip(self, request: Request) -> str | None:
        """The client's address; X-Forwarded-For is believed only from trusted proxies, and
        only as far as it holds IP addresses: a proxy passes on whatever the client wrote in
        front of its own entry, and that is never stored as an address (None instead)."""
        peer = _peer(request)
        if not self.proxies.trusts(peer):
            return peer
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        # Walk from the nearest hop back; the first untrusted address is the client.
        for hop in reversed(hops):
            address = ip_of(hop)
            if address is None:
                self.metrics.refused_headers.labels("x-forwarded-for").inc()
                now = time.monotonic()
                if now - self._refusal_logged > 60:  # a flood of them is one line a minute
                    self._refusal_logged = now
                    log.info("a trusted proxy passed on a non-IP X-Forwarded-For hop; "
                             "no client address stored (shoprelay_headers_refused_total)")
                return None
            if not self.proxies.trusts(address):
                return address
        return ip_of(hops[0]) if hops else peer



async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, inflated if it is gzip or deflate; the limit holds for the inflated bytes."""
    encoding = content_encoding(request.headers.get("content-encoding"))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body is {declared} bytes; the limit is {limit}")
    return await read_body(request.stream(), encoding, limit)


def _fanout(site: SiteSettings) -> dict[str, int]:
    counts: dict[str, int] = {}
    for vendor, config in site.vendors.items():
        if config.enabled:
            for name in VENDORS[vendor].handles:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _cookie_domain(site: SiteSettings, request: Request) -> str:
    """The site's cookie domain when it covers the host this request was sent to, else ""
    (host-only): browsers drop a cookie whose Domain does not cover the answering host, so a
    relay also reached another way (its address, a second name) still keeps its visitors."""
    if site.cookie_domain and domain_matches(request.url.hostname, site.cookie_domain):
        return site.cookie_domain
    return ""


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def ip_of(hop: str) -> str | None:
    """An X-Forwarded-For hop as an address ("1.2.3.4", "1.2.3.4:5678", "[2001:db8::1]:443"
    or "2001:db8::1", in canonical form), or None if it is not one."""
    text = hop.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _basic_user(request: Request) -> str | None:
    """The user name of HTTP Basic auth (Segment's libraries put the key there)."""
    auth = request.headers.get("authorization", "")
    if auth[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def _default_anonymous_id(messages: list[Any], header: str | None) -> None:
    """RudderStack's `AnonymousId` header (base64 of the id, as its JS SDK sends it; a plain id
    is taken as is) names the anonymous id of messages whose body has none."""
    if not header or not header.strip():
        return
    value = header.strip()
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
        if decoded.isprintable() and decoded.strip():
            value = decoded
    except (binascii.Error, UnicodeDecodeError):
        pass
    if len(value) > 100:
        return
    for message in messages:
        if isinstance(message, dict) and not message.get("anonymousId"):
            message["anonymousId"] = value


def _write_key(request: Request, body: dict[str, Any]) -> str | None:
    key = body.get("writeKey")
    if isinstance(key, str) and key:
        return key
    return _basic_user(request) or request.query_params.get("writeKey")


def truncate_ip(ip: str | None) -> str | None:
    """Zero the host part: the last octet of IPv4, the last 80 bits of IPv6."""
    if not ip:
        return ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
