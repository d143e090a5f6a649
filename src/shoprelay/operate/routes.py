"""Operator routes: /healthz, /readyz, /metrics, /debug (live debugger), /debug/trace (one
message's trace), /admin/health (vendor health page and .json), /openapi.json.

/healthz and /readyz are open (load balancers call them; /readyz tells only ready or not
unless the admin token comes with the request); /metrics and /debug need the admin
token (`relay.admin_token`) as a bearer token. A browser cannot send that header, so the
debugger page also takes a short-lived signed link (`shoprelay debug-link`), traded for a
cookie its event stream sends by itself (see operate.admin); `?token=` is accepted on the
event stream only, for EventSource clients outside the page. Without a configured token those
routes answer 404: an operator turns them on deliberately.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from shoprelay.operate import admin, health, trace
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.debugger import page as debugger_page
from shoprelay.operate.metrics import CONTENT_TYPE, Metrics
from shoprelay.proxies import TrustedProxies
from shoprelay.routing import route_reasons
from shoprelay.settings import Settings


class Operations:
    def __init__(self, settings: Settings, spool: Any, metrics: Metrics, bus: DebugBus,
                 forwarder: Callable[[], Any], api_document: dict[str, Any]) -> None:
        """`api_document`: the ingest API's OpenAPI document (shoprelay.ingest.openapi), served
        here with the other documents for operators and tools."""
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.bus = bus
        self.forwarder = forwarder
        self._openapi = api_document
        self.proxies = TrustedProxies(settings.relay.trusted_proxies)
        self._reasons = route_reasons(settings)

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/debug", self.debug_page, methods=["GET"]),
            Route("/debug/stream", self.debug_stream, methods=["GET"]),
            Route("/debug/trace", self.debug_trace, methods=["GET"]),
            # Under /debug too, where the debugger's cookie lets a browser in.
            Route("/debug/health", self.health_page, methods=["GET"]),
            Route("/debug/health.json", self.health_json, methods=["GET"]),
            Route("/admin/health", self.health_page, methods=["GET"]),
            Route("/admin/health.json", self.health_json, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the spool answers and can write, the rules stage keeps up with the
        intake and no vendor's backlog is older than its threshold.

        Without the admin token the answer says only that (`{"status": "ok"}` or
        `{"status": "not_ready"}`): the route is open for load balancers, and the details
        (a paused vendor's answer, its address, partner ids) are the operator's."""
        status, body = await self._readiness()
        code = 200 if status in ("ok", "vendor_paused") else 503
        if not self._authorised(request, debugger=True):
            body = {"status": "ok" if code == 200 else "not_ready"}
        return JSONResponse(body, code, headers={"Cache-Control": "no-store"})

    async def _readiness(self) -> tuple[str, dict[str, Any]]:
        try:
            stats = await self.spool.stats()
        except Exception as exc:  # the spool is unreachable: that is the answer
            return "unavailable", {"status": "unavailable", "spool": type(exc).__name__}
        now = time.time()
        ages = {vendor: round(now - first, 1) for vendor, first in stats.oldest_queued.items()}
        limit = self.settings.relay.ready_max_backlog_seconds
        late = {vendor: age for vendor, age in ages.items() if age > limit}
        # A paused vendor (credential or address refused) is reported, but does not make the
        # relay unready by itself: ingest still stores every event, and taking the relay out
        # of rotation would lose them. Its backlog still counts against the threshold.
        # What a pause is about (`refuses`) and the events refused alone: operate.health.
        paused, refused = health.readiness(getattr(self.forwarder(), "workers", []))
        intake_age = (round(now - stats.intake_oldest, 1)
                      if stats.intake_oldest is not None else None)
        intake_limit = self.settings.relay.ready_max_intake_seconds
        behind = intake_age is not None and intake_age > intake_limit
        # A spool that cannot write (its disk is full) refuses every request with 503: the
        # relay is out of rotation until it writes again (shoprelay.spool.disk).
        disk = getattr(self.spool, "disk_full", None)
        status = ("disk_full" if disk is not None else "not_routing" if behind
                  else "backlogged" if late else "vendor_paused" if paused else "ok")
        body = {"status": status, "oldest_queued_seconds": ages,
                "max_backlog_seconds": limit, "paused_vendors": paused,
                "refused_events": refused,
                "intake": {"pending": stats.intake, "oldest_seconds": intake_age,
                           "max_seconds": intake_limit}}
        if disk is not None:
            body["disk_full"] = disk.to_dict()
        return status, body

    def _authorised(self, request: Request, *, debugger: bool = False,
                    query_token: bool = False) -> bool:
        """The bearer token always; for the debugger its cookie too; `?token=` only where the
        caller says a browser cannot send a header (the event stream)."""
        token = self.settings.relay.admin_token
        if not token:
            return False
        if admin.bearer_matches(request.headers.get("authorization", ""), token):
            return True
        if debugger and admin.session_valid(request.cookies.get(admin.COOKIE_NAME), token):
            return True
        return query_token and admin.query_token_matches(
            request.query_params.get("token", ""), token)

    def _refusal(self, *, hint: bool = False) -> Response:
        if not self.settings.relay.admin_token:
            return Response("not found", 404, media_type="text/plain")
        text = "admin token required (Authorization: Bearer)"
        if hint:
            text += "; in a browser, open the link `shoprelay debug-link` prints"
        return Response(text, 401, {"WWW-Authenticate": "Bearer"}, media_type="text/plain")

    async def metrics_page(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._refusal()
        stats = await self.spool.stats()
        body = self.metrics.render(self.forwarder(), stats)
        body += health.render_metrics(await self._health()).encode()
        return Response(body, media_type=CONTENT_TYPE)

    async def _health(self) -> list[dict[str, Any]]:
        now = time.time()
        return health.vendor_status(self.settings, await self.spool.vendor_figures(now),
                                    trace.pauses_of(self.forwarder()), now)

    async def health_page(self, request: Request) -> Response:
        if not self._authorised(request, debugger=True):
            return self._refusal()
        return HTMLResponse(health.render_html(await self._health(), time.time()),
                            headers={"Cache-Control": "no-store"})

    async def health_json(self, request: Request) -> Response:
        if not self._authorised(request, debugger=True):
            return self._refusal()
        return JSONResponse({"vendors": await self._health()},
                            headers={"Cache-Control": "no-store"})

    async def debug_trace(self, request: Request) -> Response:
        """`?message_id=` | `?order_id=` | `?visitor_id=` (with optional `&site=`): the
        traces found, newest first (what `shoprelay trace --json` prints)."""
        if not self._authorised(request, debugger=True):
            return self._refusal()
        query = request.query_params
        keys = {k: query.get(k) for k in ("message_id", "order_id", "visitor_id")}
        if sum(v is not None for v in keys.values()) != 1:
            return JSONResponse({"error": "give one of message_id, order_id, visitor_id"}, 400)
        site = query.get("site")
        if site is not None and site not in self.settings.sites:
            return JSONResponse({"error": f"no site {site!r}"}, 404)
        found = await trace.find_traces(
            self.settings, self.spool, self._reasons, site=site,
            pauses=trace.pauses_of(self.forwarder()), message_id=keys["message_id"],
            order_id=keys["order_id"], visitor_id=keys["visitor_id"])
        return JSONResponse({"traces": found}, headers={"Cache-Control": "no-store"})

    async def debug_page(self, request: Request) -> Response:
        token = self.settings.relay.admin_token
        link = request.query_params.get("link")
        if link and admin.link_valid(link, token):
            # Trade the link for the cookie and drop it from the address bar (and history).
            response = RedirectResponse(admin.COOKIE_PATH, 303,
                                        headers={"Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})
            response.headers["Set-Cookie"] = admin.session_cookie(
                token, secure=self.proxies.is_https(request))
            return response
        if not self._authorised(request, debugger=True):
            return self._refusal(hint=bool(token))
        vendors = {name: sorted(site.vendors) for name, site in self.settings.sites.items()}
        return HTMLResponse(debugger_page(vendors), headers={"Cache-Control": "no-store",
                                                             "Referrer-Policy": "no-referrer"})

    async def debug_stream(self, request: Request) -> Response:
        if not self._authorised(request, debugger=True, query_token=True):
            return self._refusal()
        return StreamingResponse(self.bus.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)
