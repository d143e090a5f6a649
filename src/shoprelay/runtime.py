"""What the settings make at run time: the spool, the visitor cookie, the delivery targets and
options, the vendor limiters, the vendor health store.

Written once and used by every process that runs a part of the relay (the ASGI app, the
delivery process, the command line beside a running relay, backfill, the demo), so that two of
them opened on one settings file always agree: the same spool with the same router, the same
cookie (the anonymous-id aliases are derived from it), the same health store the relay writes
and `shoprelay vendors status` reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shoprelay.delivery.forwarder import DeliveryOptions, Forwarder
from shoprelay.delivery.health import FileHealthStore, RedisHealthStore, store_beside
from shoprelay.delivery.limits import Limiter
from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.routing import make_router
from shoprelay.rules import SitePolicy
from shoprelay.settings import Settings
from shoprelay.spool.base import Retention, Spool
from shoprelay.spool.sqlite import SqliteSpool
from shoprelay.vendors import VENDORS
from shoprelay.vendors.base import Vendor, VendorConfig

#: The header naming a vendor request's messages (`relay.vendor_message_id_header`).
MESSAGE_ID_HEADER = "X-Shoprelay-Message-Ids"

#: One delivery worker's (site, vendor adapter, vendor settings).
Target = tuple[str, Vendor[Any], VendorConfig]

#: Given (requests, per seconds, the credential's bucket key): a limiter for that bucket.
LimiterFactory = Callable[[int, float, str], Limiter]


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def spool_path(url: str) -> str:
    """The file of a `sqlite://` spool URL: what follows the `//`, so the contract's
    `sqlite:///var/lib/shoprelay/spool.db` is the absolute /var/lib/shoprelay/spool.db and
    `sqlite://spool.db` is spool.db in the working directory."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite:// spool URL: {url!r}")
    return url[len("sqlite://"):]


def redacted(url: str) -> str:
    """A Redis URL fit for logs: a password in it (redis://:secret@host) is masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def spool_place(settings: Settings) -> str:
    """Where the spool is, fit for logs: the Redis URL without its password, or the SQLite
    file's absolute path."""
    spool = settings.relay.spool
    return redacted(spool) if is_redis(spool) else str(Path(spool_path(spool)).resolve())


def visitor_cookie(settings: Settings) -> VisitorCookie:
    """The visitor cookie, which also derives the visitor of an anonymousId seen without one:
    every process on a spool builds it here, so they all derive the same visitor."""
    relay = settings.relay
    return VisitorCookie(relay.secret, relay.cookie_name, relay.cookie_max_age_days,
                         # Cookies signed before they named the site cannot cross sites
                         # where there is only one.
                         accept_unbound=len(settings.sites) == 1)


def retention_of(settings: Settings) -> Retention:
    """What the spool keeps, and how long, by the settings: finished work `retention_hours`,
    queued work up to `delivery_max_age_hours` more, visitors as long as finished work (or,
    with retention off, as long as their cookie lives)."""
    relay = settings.relay
    finished = relay.retention_hours * 3600.0
    return Retention(finished=finished, max_age=relay.delivery_max_age_hours * 3600.0,
                     visitors=finished if finished > 0 else relay.cookie_max_age_days * 86400.0)


def open_spool(settings: Settings) -> Spool:
    """The spool the settings name, not started yet: `sqlite://FILE` (one delivering process)
    or `redis://HOST:PORT/DB` (any number of processes and hosts sharing one Redis)."""
    relay = settings.relay
    router = make_router(settings)
    alias_for = visitor_cookie(settings).visitor_for_anonymous_id

    def policy(site: str) -> SitePolicy:
        found = settings.sites.get(site)
        return SitePolicy() if found is None else SitePolicy.of(found)

    if is_redis(relay.spool):
        from shoprelay.spool.redis import RedisSpool  # redis-py only when it is used

        return RedisSpool(
            relay.spool, router=router,
            session_timeout=relay.session_timeout_minutes * 60.0,
            alias_for=alias_for, new_id=new_visitor_id, policy=policy,
            prefix=relay.redis_prefix, partitions=relay.redis_partitions,
            lease_seconds=relay.redis_lease_seconds, retention=retention_of(settings))
    return SqliteSpool(
        spool_path(relay.spool), router=router, sync=relay.spool_sync,
        session_timeout=relay.session_timeout_minutes * 60.0,
        alias_for=alias_for, new_id=new_visitor_id, policy=policy,
        retention=retention_of(settings))


async def close_spool(spool: Spool) -> None:
    """Close on the loop: Redis hands its partitions on and closes its connections, SQLite
    joins its writer thread (off the loop)."""
    await spool.aclose()


def targets_of(settings: Settings) -> list[Target]:
    """Every enabled (site, vendor adapter, vendor settings): one delivery worker each."""
    return [(site.name, VENDORS[name], config)
            for site in settings.sites.values()
            for name, config in site.vendors.items() if config.enabled]


def delivery_options(settings: Settings, given: DeliveryOptions | None = None
                     ) -> DeliveryOptions:
    """The settings' delivery options, or `given` (tests pass faster retries); either way
    with the message id header when the settings ask for it."""
    relay = settings.relay
    delivery = given or DeliveryOptions(
        timeout=relay.delivery_timeout_seconds, concurrency=relay.delivery_concurrency,
        max_age=relay.delivery_max_age_hours * 3600.0,
        retention=relay.retention_hours * 3600.0)
    if relay.vendor_message_id_header:  # a setting, whoever made the delivery options
        delivery.message_id_header = MESSAGE_ID_HEADER
    return delivery


def limiter_factory(settings: Settings, spool: Spool) -> LimiterFactory | None:
    """With the Redis spool, vendor limits are kept in Redis so they hold for the cluster;
    otherwise (None) the forwarder's in-process limiter."""
    if not is_redis(settings.relay.spool):
        return None
    from shoprelay.delivery.shared_limits import RedisWindowLimiter
    from shoprelay.spool.redis import RedisSpool

    assert isinstance(spool, RedisSpool), "open_spool makes a RedisSpool of a redis:// URL"
    redis, prefix = spool.redis, spool.prefix
    in_flight_ttl = settings.relay.delivery_timeout_seconds + 5

    def make(requests: int, per_seconds: float, key: str) -> Limiter:
        # The key names a credential (it may hold an API key): only its hash goes to Redis.
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return RedisWindowLimiter(redis, f"{prefix}rl:{digest}", requests, per_seconds,
                                  in_flight_ttl=in_flight_ttl)

    return make


def make_forwarder(settings: Settings, spool: Spool,
                   delivery: DeliveryOptions | None = None) -> Forwarder:
    """The live path's forwarder over `spool`, in the serving process or the delivery one."""
    return Forwarder(spool, targets_of(settings), delivery_options(settings, delivery),
                     limiter_factory=limiter_factory(settings, spool))


def health_store(settings: Settings) -> FileHealthStore | RedisHealthStore | None:
    """The store a relay with these settings writes its vendor states to (the forwarder finds
    the same one from its spool)."""
    relay = settings.relay
    spool = relay.spool if is_redis(relay.spool) else spool_path(relay.spool)
    return store_beside(spool, relay.redis_prefix)
