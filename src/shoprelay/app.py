"""The relay as an ASGI app: the ingest routes, the tracker script and the operator routes
over the spool, with delivery in this process or in one of its own.

What the settings make (spool, cookie, forwarder) is `shoprelay.runtime`'s; this module only
puts it together behind Starlette and runs it for the app's lifespan.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette

from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.ingest.openapi import document as api_document
from shoprelay.ingest.routes import Ingest
from shoprelay.ingest.webhooks import Webhooks
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.logs import RequestIdMiddleware
from shoprelay.operate.metrics import Metrics
from shoprelay.operate.routes import Operations
from shoprelay.runtime import (
    close_spool,
    make_forwarder,
    open_spool,
    spool_place,
    targets_of,
    visitor_cookie,
)
from shoprelay.settings import Settings
from shoprelay.tracker import ShopifyPixel, TrackerScript

log = logging.getLogger("shoprelay")


def create_app(settings: Settings, *, delivery: DeliveryOptions | None = None,
               forward: bool = True, config_path: str | None = None,
               log_level: str = "info") -> Starlette:
    """The relay as an ASGI app. `forward=False` stores without delivering (for tests/tools).
    With `relay.delivery_process` and the settings file's `config_path`, delivery runs in a
    process of its own (shoprelay.delivery.process)."""
    cookie = visitor_cookie(settings)
    spool = open_spool(settings)
    targets = targets_of(settings)
    relay = settings.relay
    separate = forward and relay.delivery_process and config_path is not None
    metrics = Metrics()
    bus = DebugBus()
    ingest = Ingest(settings, spool, cookie, metrics, bus)
    tracker = TrackerScript()
    pixel = ShopifyPixel(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool.start()
        forwarder: Any
        if separate:
            from shoprelay.delivery.process import DeliveryProcess

            assert config_path is not None
            forwarder = DeliveryProcess(config_path, targets, log_level=log_level,
                                        grace=relay.shutdown_grace_seconds, bus=bus)
            app.state.forwarder = forwarder
            # The delivery process runs the rules stage too: each append wakes it.
            spool.on_new_intake = forwarder.wake
            spool.on_new_work = forwarder.wake  # a replay from this process, say
            await forwarder.start()
        else:
            forwarder = make_forwarder(settings, spool, delivery)
            forwarder.bus = bus
            app.state.forwarder = forwarder
            spool.route_intake()  # the rules stage, behind the request path
            if forward:
                spool.claim_delivery()  # SQLite: refuse a second delivering process
                forwarder.start()
        log.info("relay ready: %d site(s), %d vendor queue(s), spool %s",
                 len(settings.sites), len(targets), spool_place(settings))
        try:
            yield
        finally:
            await forwarder.stop(relay.shutdown_grace_seconds)
            await close_spool(spool)

    app = Starlette(lifespan=lifespan)
    operations = Operations(settings, spool, metrics, bus,
                            lambda: getattr(app.state, "forwarder", None), api_document())
    app.router.routes.extend([*ingest.routes(), *Webhooks(ingest).routes(),
                              *tracker.routes(relay.path_prefix, relay.tracker_file),
                              *pixel.routes(),
                              *operations.routes()])
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.spool = spool
    app.state.cookie = cookie
    return app


def from_environment() -> Starlette:
    """The app for `uvicorn --factory shoprelay.app:from_environment [--workers N]`: the
    settings file is named by SHOPRELAY_CONFIG (each worker process loads it). Logging is set
    up as `shoprelay serve` does (JSON lines, no access log, no vendor URLs from httpx)."""
    from shoprelay import settings as settings_module
    from shoprelay.operate.logs import configure

    path = os.environ.get("SHOPRELAY_CONFIG")
    if not path:
        raise RuntimeError("set SHOPRELAY_CONFIG to the settings file")
    settings = settings_module.load(path)
    configure(os.environ.get("SHOPRELAY_LOG_LEVEL", "info"), settings.relay.log_format)
    return create_app(settings)
