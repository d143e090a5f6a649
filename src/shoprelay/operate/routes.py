"""Operator routes: /healthz, /readyz, /metrics, /debug (live debugger), /debug/trace (one
message's trace), /admin/health (vendor health page and .json), /openapi.json.

/healthz and /readyz are open (load balancers call them); /metrics and /debug need the admin
token (`relay.admin_token`) as a bearer token, or as `?token=` for the debugger page, whose
EventSource cannot send headers. Without a configured token those routes answer 404: an
operator turns them on deliberately.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shoprelay.operate import health, openapi, trace
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.debugger import page as debugger_page
from shoprelay.operate.metrics import CONTENT_TYPE, Metrics
from shoprelay.settings import Settings


class Operations:
    def __init__(self, settings: Settings, spool: Any, metrics: Metrics, bus: DebugBus,
                 forwarder: Callable[[], Any]) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.bus = bus
        self.forwarder = forwarder
        self._openapi = openapi.document()
        self._reasons: Any = None

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/debug", self.debug_page, methods=["GET"]),
            Route("/debug/stream", self.debug_stream, methods=["GET"]),
            Route("/debug/trace", self.debug_trace, methods=["GET"]),
            Route("/admin/health", self.health_page, methods=["GET"]),
            Route("/admin/health.json", self.health_json, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the spool answers and no vendor's backlog is older than the threshold."""
        try:
            stats = await self.spool.stats()
        except Exception as exc:  # the spool is unreachable: that is the answer
            return JSONResponse({"status": "unavailable", "spool": type(exc).__name__}, 503)
        now = time.time()
        ages = {vendor: round(now - first, 1) for vendor, first in stats.oldest_queued.items()}
        limit = self.settings.relay.ready_max_backlog_seconds
        late = {vendor: age for vendor, age in ages.items() if age > limit}
        body = {"status": "backlogged" if late else "ok", "oldest_queued_seconds": ages,
                "max_backlog_seconds": limit}
        return JSONResponse(body, 503 if late else 200)

    def _authorised(self, request: Request) -> bool:
        token = self.settings.relay.admin_token
        if not token:
            return False
        given = request.headers.get("authorization", "")
        if given[:7].lower() == "bearer ":
            given = given[7:].strip()
        else:
            given = request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def _refusal(self) -> Response:
        if not self.settings.relay.admin_token:
            return Response("not found", 404, media_type="text/plain")
        return Response("admin token required", 401, {"WWW-Authenticate": "Bearer"},
                        media_type="text/plain")

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
        if not self._authorised(request):
            return self._refusal()
        return HTMLResponse(health.render_html(await self._health(), time.time()),
                            headers={"Cache-Control": "no-store"})

    async def health_json(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._refusal()
        return JSONResponse({"vendors": await self._health()},
                            headers={"Cache-Control": "no-store"})

    async def debug_trace(self, request: Request) -> Response:
        """`?message_id=` | `?order_id=` | `?visitor_id=` (with optional `&site=`): the
        traces found, newest first (what `shoprelay trace --json` prints)."""
        if not self._authorised(request):
            return self._refusal()
        query = request.query_params
        keys = {k: query.get(k) for k in ("message_id", "order_id", "visitor_id")}
        if sum(v is not None for v in keys.values()) != 1:
            return JSONResponse({"error": "give one of message_id, order_id, visitor_id"}, 400)
        site = query.get("site")
        if site is not None and site not in self.settings.sites:
            return JSONResponse({"error": f"no site {site!r}"}, 404)
        if self._reasons is None:
            from shoprelay.app import route_reasons  # the app imports this module

            self._reasons = route_reasons(self.settings)
        found = await trace.find_traces(self.settings, self.spool, self._reasons, site=site,
                                        pauses=trace.pauses_of(self.forwarder()), **keys)
        return JSONResponse({"traces": found}, headers={"Cache-Control": "no-store"})

    async def debug_page(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._refusal()
        vendors = {name: sorted(site.vendors) for name, site in self.settings.sites.items()}
        return HTMLResponse(debugger_page(vendors), headers={"Cache-Control": "no-store"})

    async def debug_stream(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._refusal()
        return StreamingResponse(self.bus.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)
