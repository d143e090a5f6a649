"""The relay application: ingest routes, the tracker script, the spool and the forwarder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.applications import Starlette

from shoprelay.delivery.forwarder import DeliveryOptions, Forwarder
from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.ingest.routes import Ingest
from shoprelay.ingest.rules import SitePolicy
from shoprelay.operate.debugger import DebugBus
from shoprelay.operate.logs import RequestIdMiddleware
from shoprelay.operate.metrics import Metrics
from shoprelay.operate.routes import Operations
from shoprelay.routing import make_router
from shoprelay.settings import Settings
from shoprelay.spool.base import Router
from shoprelay.spool.sqlite import SqliteSpool
from shoprelay.tracker import TrackerScript
from shoprelay.vendors import VENDORS

log = logging.getLogger("shoprelay")


#: The header naming a vendor request's messages (`relay.vendor_message_id_header`).
MESSAGE_ID_HEADER = "X-Shoprelay-Message-Ids"


def spool_path(url: str) -> str:
    """The file of a `sqlite://` spool URL: what follows the `//`, so the contract's
    `sqlite:///var/lib/shoprelay/spool.db` is the absolute /var/lib/shoprelay/spool.db and
    `sqlite://spool.db` is spool.db in the working directory."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite:// spool URL: {url!r}")
    return url[len("sqlite://"):]


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def redacted(url: str) -> str:
    """A Redis URL fit for logs: a password in it (redis://:secret@host) is masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def make_spool(settings: Settings, router: Router, cookie: VisitorCookie) -> Any:
    """The spool the settings name: `sqlite://FILE` (one process) or `redis://HOST:PORT/DB`
    (any number of processes and hosts sharing one Redis)."""
    relay = settings.relay

    def policy(site: str) -> SitePolicy:
        found = settings.sites.get(site)
        if found is None:
            return SitePolicy()
        return SitePolicy(order_source=found.order_source,
                          identify_secret=found.identify_secret)

    if is_redis(relay.spool):
        from shoprelay.spool.redis import RedisSpool  # redis-py only when it is used

        return RedisSpool(
            relay.spool, router=router,
            session_timeout=relay.session_timeout_minutes * 60.0,
            alias_for=cookie.visitor_for_anonymous_id, new_id=new_visitor_id,
            policy=policy,
            prefix=relay.redis_prefix, partitions=relay.redis_partitions,
            retention=relay.retention_hours * 3600.0,
            max_age=relay.delivery_max_age_hours * 3600.0,
            lease_seconds=relay.redis_lease_seconds,
            # A visitor not seen within retention is forgotten, as the SQLite spool prunes it.
            state_ttl=(relay.retention_hours * 3600.0 if relay.retention_hours > 0
                       else relay.cookie_max_age_days * 86400.0))
    return SqliteSpool(
        spool_path(relay.spool), router=router, sync=relay.spool_sync,
        session_timeout=relay.session_timeout_minutes * 60.0,
        alias_for=cookie.visitor_for_anonymous_id, new_id=new_visitor_id,
        policy=policy)


async def close_spool(spool: Any) -> None:
    """Redis hands its partitions on and closes its connections on the loop; SQLite joins
    its writer thread."""
    aclose = getattr(spool, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        spool.close()


def limiter_factory(settings: Settings, spool: Any) -> Any:
    """With the Redis spool, vendor limits are kept in Redis so they hold for the cluster;
    otherwise (None) the forwarder's in-process limiter."""
    if not is_redis(settings.relay.spool):
        return None
    from shoprelay.delivery.shared_limits import RedisWindowLimiter

    def make(requests: int, per_seconds: float, key: str) -> Any:
        # The key names a credential (it may hold an API key): only its hash goes to Redis.
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return RedisWindowLimiter(spool.redis, f"{spool.prefix}rl:{digest}", requests,
                                  per_seconds,
                                  in_flight_ttl=settings.relay.delivery_timeout_seconds + 5)

    return make


def visitor_cookie(settings: Settings) -> VisitorCookie:
    return VisitorCookie(settings.relay.secret, settings.relay.cookie_name,
                         settings.relay.cookie_max_age_days,
                         # Cookies signed before they named the site cannot cross sites
                         # where there is only one.
                         accept_unbound=len(settings.sites) == 1)


def targets_of(settings: Settings) -> list[tuple[str, Any, Any]]:
    """Every enabled (site, vendor adapter, vendor settings): one delivery worker each."""
    return [(site.name, VENDORS[name], config)
            for site in settings.sites.values()
            for name, config in site.vendors.items() if config.enabled]


def delivery_options(settings: Settings, given: DeliveryOptions | None = None
                     ) -> DeliveryOptions:
    relay = settings.relay
    delivery = given or DeliveryOptions(
        timeout=relay.delivery_timeout_seconds, concurrency=relay.delivery_concurrency,
        max_age=relay.delivery_max_age_hours * 3600.0,
        retention=relay.retention_hours * 3600.0)
    if relay.vendor_message_id_header:  # a setting, whoever made the delivery options
        delivery.message_id_header = MESSAGE_ID_HEADER
    return delivery


def create_app(settings: Settings, *, delivery: DeliveryOptions | None = None,
               forward: bool = True, config_path: str | None = None,
               log_level: str = "info") -> Starlette:
    """The relay as an ASGI app. `forward=False` stores without delivering (for tests/tools).
    With `relay.delivery_process` and the settings file's `config_path`, delivery runs in a
    process of its own (shoprelay.delivery.process)."""
    cookie = visitor_cookie(settings)
    spool = make_spool(settings, make_router(settings), cookie)
    targets = targets_of(settings)
    relay = settings.relay
    delivery = delivery_options(settings, delivery)
    separate = forward and relay.delivery_process and config_path is not None
    metrics = Metrics()
    bus = DebugBus()
    ingest = Ingest(settings, spool, cookie, metrics, bus)
    tracker = TrackerScript()

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
            spool.on_new_work = forwarder.wake
            await forwarder.start()
        else:
            forwarder = Forwarder(spool, targets, delivery,
                                  limiter_factory=limiter_factory(settings, spool))
            forwarder.bus = bus
            app.state.forwarder = forwarder
            if forward:
                spool.claim_delivery()  # SQLite: refuse a second delivering process
                forwarder.start()
        where = (redacted(relay.spool) if is_redis(relay.spool)
                 else Path(spool.path).resolve())
        log.info("relay ready: %d site(s), %d vendor queue(s), spool %s",
                 len(settings.sites), len(targets), where)
        try:
            yield
        finally:
            await forwarder.stop(relay.shutdown_grace_seconds)
            await close_spool(spool)

    app = Starlette(lifespan=lifespan)
    operations = Operations(settings, spool, metrics, bus,
                            lambda: getattr(app.state, "forwarder", None))
    app.router.routes.extend([*ingest.routes(),
                              *tracker.routes(relay.path_prefix, relay.tracker_file),
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
