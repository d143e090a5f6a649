"""The relay application: ingest routes, the tracker script, the spool and the forwarder."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette

from shoprelay.delivery.forwarder import DeliveryOptions, Forwarder
from shoprelay.events import StoredEvent
from shoprelay.identity.consent import allows
from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.ingest.routes import Ingest
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.logs import RequestIdMiddleware
from shoprelay.operate.metrics import Metrics
from shoprelay.operate.routes import Operations
from shoprelay.settings import Settings
from shoprelay.spool.base import Router
from shoprelay.spool.sqlite import SqliteSpool
from shoprelay.tracker import TrackerScript
from shoprelay.vendors import VENDORS

log = logging.getLogger("shoprelay")


def spool_path(url: str) -> str:
    """The file of a `sqlite://` spool URL: what follows the `//`, so the contract's
    `sqlite:///var/lib/shoprelay/spool.db` is the absolute /var/lib/shoprelay/spool.db and
    `sqlite://spool.db` is spool.db in the working directory."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"unsupported spool URL {url!r} (this build has sqlite:// only)")
    return url[len("sqlite://"):]


def make_router(settings: Settings) -> Router:
    """Which vendors get an event: enabled, mapping it, allowed by consent, not a held bot."""
    enabled = {
        name: [(vendor_name, VENDORS[vendor_name], config)
               for vendor_name, config in site.vendors.items() if config.enabled]
        for name, site in settings.sites.items()
    }

    def route(event: StoredEvent) -> list[str]:
        site = settings.sites.get(event.site)
        if site is None or (event.enrichment.bot and not site.forward_bots):
            return []
        consent = event.enrichment.consent
        return [name for name, vendor, config in enabled.get(event.site, [])
                if vendor.wants(event, config)
                and allows(consent, config.consent, required=site.consent_required)]

    return route


def create_app(settings: Settings, *, delivery: DeliveryOptions | None = None,
               forward: bool = True) -> Starlette:
    """The relay as an ASGI app. `forward=False` stores without delivering (for tests/tools)."""
    cookie = VisitorCookie(settings.relay.secret, settings.relay.cookie_name,
                           settings.relay.cookie_max_age_days)
    spool = SqliteSpool(
        spool_path(settings.relay.spool),
        router=make_router(settings),
        sync=settings.relay.spool_sync,
        session_timeout=settings.relay.session_timeout_minutes * 60.0,
        alias_for=cookie.visitor_for_anonymous_id,
        new_id=new_visitor_id,
    )
    targets = [(site.name, VENDORS[name], config)
               for site in settings.sites.values()
               for name, config in site.vendors.items() if config.enabled]
    relay = settings.relay
    delivery = delivery or DeliveryOptions(
        timeout=relay.delivery_timeout_seconds, concurrency=relay.delivery_concurrency,
        max_age=relay.delivery_max_age_hours * 3600.0,
        retention=relay.retention_hours * 3600.0)
    metrics = Metrics()
    bus = DebugBus()
    ingest = Ingest(settings, spool, cookie, metrics, bus)
    tracker = TrackerScript()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool.start()
        forwarder = Forwarder(spool, targets, delivery)
        forwarder.bus = bus
        app.state.forwarder = forwarder
        if forward:
            forwarder.start()
        log.info("relay ready: %d site(s), %d vendor queue(s), spool %s",
                 len(settings.sites), len(targets), Path(spool.path).resolve())
        try:
            yield
        finally:
            await forwarder.stop(relay.shutdown_grace_seconds)
            spool.close()

    app = Starlette(lifespan=lifespan)
    operations = Operations(settings, spool, metrics, bus,
                            lambda: getattr(app.state, "forwarder", None))
    app.router.routes.extend([*ingest.routes(), tracker.route(), *operations.routes()])
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.spool = spool
    app.state.cookie = cookie
    return app

