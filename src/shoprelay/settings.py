"""The settings file (CONTRACT §4): TOML, `${VAR}` read from the environment, checked whole.

Every table is described by a dataclass; the loader checks each key against the dataclass's
fields and types and collects *every* problem, so an operator fixes a file in one go. A file
with any problem is refused with the file, the dotted key and the reason for each.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shoprelay.vendors import VENDORS
from shoprelay.vendors.base import VendorConfig

#: Who speaks for a site's orders (the `order_source` site setting): the first copy that
#: arrives, or the shop's backend alone (the rules hold a browser copy back).
ORDER_SOURCES = ("first", "server")
#: What a browser sends as `Origin` from a sandboxed frame (a Shopify custom pixel): a site
#: lists it in `allowed_origins` to take such frames' events (docs/platforms.md, pixel).
OPAQUE_ORIGIN = "null"

#: The per-site secrets of the platforms' order webhooks (`ingest.webhooks`).
WEBHOOK_SECRETS = ("shopify_webhook_secret", "woocommerce_webhook_secret")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")
_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


class SettingsError(Exception):
    """A settings file that cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the settings:\n{lines}")


@dataclass(kw_only=True)
class RelaySettings:
    #: Signs visitor cookies. Required; at least 16 characters.
    secret: str
    spool: str = "sqlite://shoprelay.db"
    cookie_name: str = "sc"
    #: Cookie lifetime in days (two years by default, as the contract says).
    cookie_max_age_days: int = 730
    #: Only these peers' X-Forwarded-For is believed.
    trusted_proxies: list[str] = field(default_factory=list)
    #: SQLite `synchronous` mode: "full" (fsync every commit) or "normal" (WAL: survives a
    #: process crash, may lose the last commits on power loss).
    spool_sync: str = "full"
    #: Minutes without events after which a visitor's next event starts a new session.
    session_timeout_minutes: int = 30
    #: Work not delivered within this many hours goes to the dead letter.
    delivery_max_age_hours: float = 24.0
    #: Seconds a vendor request may take before it counts as failed (and is retried).
    delivery_timeout_seconds: float = 10.0
    #: Requests in flight at once per vendor queue (different visitors; one visitor's events
    #: are always sent one after another).
    delivery_concurrency: int = 16
    #: Delivered work (and its messages) is pruned after this many hours; dedup remembers
    #: message ids for as long.
    retention_hours: float = 168.0
    #: Send each vendor request's messageIds in `X-Shoprelay-Message-Ids` (the demo does, so
    #: its "what vendors received" page links requests to messages); off for real vendors.
    vendor_message_id_header: bool = False
    #: `shoprelay backfill` takes at most this share of each vendor rate limit (0 < x <= 1).
    backfill_share: float = 0.5
    #: On SIGTERM, seconds to let requests in flight finish before stopping.
    shutdown_grace_seconds: float = 10.0
    #: `shoprelay serve` only: deliver to vendors from a second process over the same spool
    #: (shoprelay.delivery.process), so ingest and delivery use a core each.
    delivery_process: bool = False
    #: Bearer token for /metrics and the live debugger (/debug); empty = those routes are off.
    admin_token: str = ""
    #: Ingest requests one client address may make a minute (0 = no limit); 429 beyond.
    ingest_per_ip_per_minute: int = 1200
    #: Seconds a request body may take to arrive (slow clients get 408).
    body_read_timeout_seconds: float = 10.0
    #: `shoprelay serve` only: seconds a request's line and headers may take to arrive (408),
    #: their most bytes (431), and how long an idle keep-alive connection stays open.
    header_read_timeout_seconds: float = 10.0
    max_header_bytes: int = 32 * 1024
    keep_alive_seconds: float = 5.0
    #: /readyz fails when the oldest queued event is older than this many seconds.
    ready_max_backlog_seconds: float = 900.0
    #: /readyz fails when the oldest accepted request not yet routed by the rules stage is
    #: older than this (routing normally keeps up within milliseconds; 30 s means the rules
    #: stage is stuck or far behind, and a load balancer should send traffic elsewhere).
    ready_max_intake_seconds: float = 30.0
    #: "json" (one JSON object a line) or "text".
    log_format: str = "json"
    #: Redis spool only: every key starts with this (several relays may share one Redis).
    redis_prefix: str = "shoprelay:"
    #: Redis spool only: streams per site and vendor (the unit of work a process holds).
    #: Visitors hash onto them, so changing it with work queued may reorder a visitor's events.
    redis_partitions: int = 8
    #: Redis spool only: a crashed process's partitions are taken over after this long.
    redis_lease_seconds: float = 10.0
    #: Also serve the tracker and the ingest routes under this path (e.g. "/px": the tracker
    #: at /px/<tracker_file>, ingest at /px/v1/batch, …), out of content blockers' way. The
    #: tracker posts to the directory it was served from. "" = the default paths only.
    path_prefix: str = ""
    #: The tracker's file name under `path_prefix` (or at the root when that is empty);
    #: /s.js is always served too.
    tracker_file: str = "s.js"


@dataclass(kw_only=True)
class SiteSettings:
    name: str = ""
    write_key: str
    allowed_origins: list[str] = field(default_factory=list)
    #: Secret key of the shop's backend (HTTP Basic user name) for the server-side API.
    server_key: str = ""
    #: Forward an event to a vendor only when the visitor granted the vendor's consent category.
    consent_required: bool = False
    #: Forward events from crawlers and headless tools too (they are always stored).
    forward_bots: bool = False
    #: Store client IPs with the last octet (IPv4) or last 80 bits (IPv6) zeroed.
    ip_truncate: bool = False
    #: Who speaks for orders: "first" (whichever copy, browser or backend, reaches a vendor
    #: first) or "server" (only the backend's, through the server API; browser copies are
    #: stored and sent nowhere, so the public write key cannot squat an order id).
    order_source: str = "first"
    #: With it, a browser identify binds only when it carries `context.userHash`,
    #: `<expires>.<hex HMAC-SHA256 of "<user id>.<expires>">` under this secret (rendered into
    #: the page by the backend), and emails and phones count only from the backend or signed.
    identify_secret: str = ""
    #: Who serves the site's recommendation blocks when an event does not say (CONTRACT §4):
    #: a vendor table name, or "" (then a block without `recommendation_vendor` is no one's).
    recommendation_vendor: str = ""
    #: The visitor cookie's `Domain` (e.g. "shop.example" for a relay at t.shop.example
    #: serving www.shop.example), so the shop's pages and backend share it; "" = host-only
    #: (the relay's host). Set only on answers to a host it covers (docs/deploy.md).
    cookie_domain: str = ""
    #: The secret Shopify signs the site's order webhooks with (`X-Shopify-Hmac-Sha256`):
    #: with it, `POST /webhooks/shopify/<site>` takes them (docs/platforms.md); "" = off.
    shopify_webhook_secret: str = ""
    #: The secret of the site's WooCommerce webhooks (`X-WC-Webhook-Signature`): with it,
    #: `POST /webhooks/woocommerce/<site>` takes them; "" = off.
    woocommerce_webhook_secret: str = ""
    vendors: dict[str, VendorConfig] = field(default_factory=dict)


@dataclass(kw_only=True)
class Settings:
    relay: RelaySettings
    sites: dict[str, SiteSettings]
    source: str = "<settings>"

    def __post_init__(self) -> None:
        self._by_key = {site.write_key: site for site in self.sites.values()}

    def site_for_key(self, write_key: str | None) -> SiteSettings | None:
        return self._by_key.get(write_key or "")

    def site_for_server_key(self, key: str | None) -> SiteSettings | None:
        if not key:
            return None
        for site in self.sites.values():
            if site.server_key and hmac.compare_digest(site.server_key, key):
                return site
        return None


def load(path: str | os.PathLike[str], env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read and check a settings file; raise SettingsError naming file, key and reason."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(source, [Problem("(file)", exc.strerror or str(exc))]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(source, [Problem("(file)", f"not valid TOML: {exc}")]) from None
    return parse(data, source=source, env=os.environ if env is None else env)


def parse(
    data: dict[str, Any], *, source: str = "<settings>", env: typing.Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    problems: list[Problem] = []
    data = _expand(data, env, "", problems)
    unknown = set(data) - {"relay", "sites"}
    problems += [Problem(k, "unknown key") for k in sorted(unknown)]

    relay_table = data.get("relay")
    if not isinstance(relay_table, dict):
        problems.append(Problem("relay", "a [relay] table is required"))
        relay_table = {}
    relay = _build(RelaySettings, relay_table, "relay", problems)
    if relay is not None:
        _check_relay(relay, problems)

    sites: dict[str, SiteSettings] = {}
    site_tables = data.get("sites")
    if not isinstance(site_tables, dict) or not site_tables:
        problems.append(Problem("sites", "at least one [sites.NAME] table is required"))
        site_tables = {}
    seen_keys: dict[str, str] = {}
    for name, table in site_tables.items():
        where = f"sites.{name}"
        if not isinstance(table, dict):
            problems.append(Problem(where, "must be a table"))
            continue
        vendor_tables = table.get("vendors", {})
        site = _build(SiteSettings, {k: v for k, v in table.items() if k != "vendors"},
                      where, problems)
        if site is None:
            continue
        site.name = name
        if site.write_key in seen_keys:
            problems.append(Problem(f"{where}.write_key",
                                    f"same write key as sites.{seen_keys[site.write_key]}"))
        seen_keys[site.write_key] = name
        if site.server_key and (site.server_key == site.write_key or len(site.server_key) < 16):
            problems.append(Problem(f"{where}.server_key",
                                    "must be a secret of at least 16 characters, "
                                    "different from the write key"))
        if site.identify_secret and (len(site.identify_secret) < 16
                                     or site.identify_secret in (site.write_key,
                                                                 site.server_key)):
            problems.append(Problem(f"{where}.identify_secret",
                                    "must be a secret of at least 16 characters, different "
                                    "from the write and server keys"))
        others = [site.write_key, site.server_key, site.identify_secret]
        for role in WEBHOOK_SECRETS:
            value = getattr(site, role)
            if value and (len(value) < 16 or value in others):
                problems.append(Problem(f"{where}.{role}",
                                        "must be a secret of at least 16 characters, "
                                        "different from the site's other keys"))
            others.append(value)
        if site.order_source not in ORDER_SOURCES:
            problems.append(Problem(f"{where}.order_source",
                                    f"must be one of {', '.join(ORDER_SOURCES)}"))
        elif site.order_source == "server" and not (
                site.server_key or any(getattr(site, role) for role in WEBHOOK_SECRETS)):
            problems.append(Problem(f"{where}.order_source",
                                    '"server" needs a server_key or a webhook secret: no '
                                    "order would reach a vendor"))
        for i, origin in enumerate(site.allowed_origins):
            if origin == OPAQUE_ORIGIN:
                continue
            if not _is_url(origin) or urlsplit(origin).path not in ("", "/"):
                problems.append(Problem(f"{where}.allowed_origins[{i}]",
                                        f"not an origin (scheme://host[:port], or "
                                        f'"{OPAQUE_ORIGIN}"): {origin!r}'))
        site.allowed_origins = [o.rstrip("/") for o in site.allowed_origins]
        if site.cookie_domain:
            site.cookie_domain = _cookie_domain(site, f"{where}.cookie_domain", problems)
        site.vendors = _vendors(vendor_tables, f"{where}.vendors", problems)
        if site.recommendation_vendor and site.recommendation_vendor not in VENDORS:
            problems.append(Problem(f"{where}.recommendation_vendor",
                                    f"not a vendor table name: {site.recommendation_vendor!r} "
                                    f"(one of {', '.join(sorted(VENDORS))})"))
        for config in site.vendors.values():
            # Adapters see only their own table: the site's block owner travels with it.
            config.site_recommendation_vendor = site.recommendation_vendor
        sites[name] = site

    problems += _reused_keys(relay, sites)
    if problems or relay is None:
        raise SettingsError(source, problems)
    return Settings(relay=relay, sites=sites, source=source)


def _reused_keys(relay: RelaySettings | None, sites: dict[str, SiteSettings]) -> list[Problem]:
    """A key used in two roles: a site's server key equal to another site's public write key
    makes that page a server for the first site (its orders, its identities); a secret equal
    to any key of another role is as public as the most public of them. Each value has one
    role and one site; vendor keys may be shared between sites (one vendor account), never
    with a key of the relay's. Pairs within one site are the site's own checks above."""
    uses: list[tuple[str, str, str, str]] = []      # (value, where, site, role)
    if relay is not None:
        uses += [(relay.secret, "relay.secret", "", "relay"),
                 (relay.admin_token, "relay.admin_token", "", "relay")]
    for name, site in sites.items():
        for role in ("write_key", "server_key", "identify_secret", *WEBHOOK_SECRETS):
            uses.append((getattr(site, role), f"sites.{name}.{role}", name, role))
        for vendor, config in site.vendors.items():
            for field_name in type(config).secret_fields:
                value = getattr(config, field_name, "")
                if isinstance(value, str):
                    uses.append((value, f"sites.{name}.vendors.{vendor}.{field_name}", name,
                                 "vendor"))
    problems: list[Problem] = []
    first: dict[str, tuple[str, str, str]] = {}
    for value, where, owner, role in uses:
        if not value:
            continue
        seen = first.get(value)
        if seen is None:
            first[value] = (where, owner, role)
            continue
        seen_where, seen_owner, seen_role = seen
        same_site = owner and owner == seen_owner and "relay" not in (role, seen_role)
        if (same_site and "vendor" not in (role, seen_role)) or (
                role == seen_role and role in ("write_key", "vendor")):
            continue  # reported by the site's checks, or allowed (a shared vendor account)
        problems.append(Problem(where, f"the same value as {seen_where}: a key may serve one "
                                       "role only (a write key is public; a server key, a "
                                       "secret or a token reused elsewhere is as public as "
                                       "that use)"))
    return problems


def domain_matches(host: str | None, domain: str) -> bool:
    """RFC 6265's domain-match: a cookie for `domain` is kept for, and sent to, `host`."""
    return host is not None and (host == domain or host.endswith("." + domain))


def _cookie_domain(site: SiteSettings, key: str, problems: list[Problem]) -> str:
    """The site's `cookie_domain`, normalised as browsers read it (lower case, a leading dot
    ignored: RFC 6265 5.2.3), or "" with a problem when no browser would keep the cookie
    or the shop's own pages would never share it."""
    raw = site.cookie_domain
    value = raw.strip().lower()
    value = value[1:] if value.startswith(".") else value
    reason = ""
    if any(c in value for c in ":/?#@[]"):
        reason = "a host name only, without scheme, port or path"
    elif not value.isascii():
        reason = "must be ASCII: write an internationalised name in its xn-- form"
    elif _is_ip(value):
        reason = "an IP address cannot carry a Domain cookie (browsers keep it host-only)"
    elif "." not in value:
        reason = ("needs at least two labels (shop.example): browsers refuse a cookie for a "
                  "whole top-level domain")
    elif len(value) > 253 or not all(_HOST_LABEL.fullmatch(label)
                                     for label in value.split(".")):
        reason = "not a host name (letters, digits and - in dot-separated labels)"
    elif value.rsplit(".", 1)[1].isdigit():
        reason = "not a host name (a top-level domain is never all digits)"
    if not reason and site.allowed_origins and not any(
            domain_matches(urlsplit(o).hostname, value) for o in site.allowed_origins):
        reason = (f"covers none of allowed_origins ({', '.join(site.allowed_origins)}): the "
                  "shop's pages would never share the cookie")
    if reason:
        problems.append(Problem(key, f"{reason}, got {raw!r}"))
        return ""
    return value


def site_warnings(site: SiteSettings) -> list[Problem]:
    """What works but is likely not what was meant (`check-config` prints them, exit 0)."""
    warnings: list[Problem] = []
    if site.cookie_domain:
        for i, origin in enumerate(site.allowed_origins):
            if not domain_matches(urlsplit(origin).hostname, site.cookie_domain):
                warnings.append(Problem(
                    f"sites.{site.name}.allowed_origins[{i}]",
                    f"{origin} is not under cookie_domain {site.cookie_domain!r}: to the "
                    "relay it is another site, so its requests carry no visitor cookie "
                    "(SameSite=Lax) and its visitors are kept apart by anonymousId only"))
    return warnings


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _vendors(tables: Any, where: str, problems: list[Problem]) -> dict[str, VendorConfig]:
    if not isinstance(tables, dict):
        problems.append(Problem(where, "must be a table"))
        return {}
    configs: dict[str, VendorConfig] = {}
    for name, table in tables.items():
        key = f"{where}.{name}"
        vendor = VENDORS.get(name)
        if vendor is None:
            problems.append(Problem(key, f"unknown vendor (known: {', '.join(sorted(VENDORS))})"))
            continue
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        config = _build(vendor.config_class, table, key, problems)
        if config is None:
            continue
        if not config.base_url and not vendor.default_base_url:
            problems.append(Problem(f"{key}.base_url", "required: this vendor has no public URL"))
        for field_name, reason in vendor.check_config(config).items():
            problems.append(Problem(f"{key}.{field_name}", reason))
        for event in config.events:
            if event not in vendor.handles:
                problems.append(Problem(f"{key}.events",
                                        f"{event!r} is not an event {vendor.title} receives"))
        configs[name] = config
    return configs


def _check_relay(relay: RelaySettings, problems: list[Problem]) -> None:
    if len(relay.secret) < 16:
        problems.append(Problem("relay.secret", "must be at least 16 characters"))
    if not relay.spool.startswith(("sqlite://", "redis://", "rediss://")):
        problems.append(Problem("relay.spool", "must be sqlite:///PATH or redis://HOST:PORT/DB"))
    elif relay.spool.startswith(("redis://", "rediss://")):
        parts = urlsplit(relay.spool)
        db = parts.path.strip("/")
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if not parts.hostname or not port_ok or (db and not db.isdigit()):
            problems.append(Problem("relay.spool", "must be redis://HOST:PORT/DB (DB a number)"
                                    f", got {relay.spool!r}"))
    if not 1 <= relay.redis_partitions <= 1024:
        problems.append(Problem("relay.redis_partitions", "must be between 1 and 1024"))
    if not relay.redis_prefix:
        problems.append(Problem("relay.redis_prefix", "must not be empty"))
    if relay.redis_lease_seconds < 0.5:
        problems.append(Problem("relay.redis_lease_seconds", "must be at least 0.5"))
    if relay.header_read_timeout_seconds <= 0:
        problems.append(Problem("relay.header_read_timeout_seconds", "must be more than 0"))
    if relay.max_header_bytes < 4096:
        problems.append(Problem("relay.max_header_bytes", "must be at least 4096"))
    if relay.keep_alive_seconds <= 0:
        problems.append(Problem("relay.keep_alive_seconds", "must be more than 0"))
    if relay.ready_max_intake_seconds <= 0:
        problems.append(Problem("relay.ready_max_intake_seconds", "must be more than 0"))
    if relay.path_prefix and not _PATH_PREFIX.fullmatch(relay.path_prefix):
        problems.append(Problem("relay.path_prefix",
                                "must be a path like /px (a leading /, no trailing /; letters, "
                                f"digits, - _ . ~), got {relay.path_prefix!r}"))
    if not _FILE_NAME.fullmatch(relay.tracker_file):
        problems.append(Problem("relay.tracker_file", "must be a file name like app.js "
                                f"(letters, digits, - _ .), got {relay.tracker_file!r}"))
    if relay.admin_token and len(relay.admin_token) < 16:
        problems.append(Problem("relay.admin_token", "must be at least 16 characters"))
    if relay.log_format not in ("json", "text"):
        problems.append(Problem("relay.log_format", 'must be "json" or "text"'))
    if relay.spool_sync not in ("full", "normal"):
        problems.append(Problem("relay.spool_sync", 'must be "full" or "normal"'))
    if not 0 < relay.backfill_share <= 1:
        problems.append(Problem("relay.backfill_share", "must be more than 0 and at most 1"))
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", relay.cookie_name):
        problems.append(Problem("relay.cookie_name", "must be 1-64 letters, digits, _ or -"))


def _expand(value: Any, env: typing.Mapping[str, str], key: str, problems: list[Problem]) -> Any:
    """Replace `${VAR}` in every string with the environment's value (missing: a problem)."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(Problem(key, f"environment variable {name} is not set"))
                return ""
            return env[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{key}.{k}" if key else k, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _build(cls: type, table: dict[str, Any], where: str, problems: list[Problem]) -> Any:
    """Make a `cls` from a TOML table, checking keys and types; None if anything is wrong."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    internal = {"name", "vendors"} if cls is SiteSettings else set()
    before = len(problems)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields or key in internal:
            problems.append(Problem(f"{where}.{key}", "unknown key"))
            continue
        reason = _type_problem(value, hints[key])
        if reason:
            problems.append(Problem(f"{where}.{key}", reason))
            continue
        if key.endswith("url") and value and not _is_url(value):
            problems.append(Problem(f"{where}.{key}", f"not an http(s) URL: {value!r}"))
            continue
        kwargs[key] = value
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in table and name not in internal:
            problems.append(Problem(f"{where}.{name}", "required"))
        elif missing and name in kwargs and kwargs[name] == "":
            problems.append(Problem(f"{where}.{name}", "must not be empty"))
    if len(problems) > before:
        return None
    return cls(**kwargs)


def _type_problem(value: Any, hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return "" if value is None else _type_problem(value, options[0])
    if hint is bool:
        return "" if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return "" if ok else f"must be a whole number, got {value!r}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return "" if ok else f"must be a number, got {value!r}"
    if hint is str:
        return "" if isinstance(value, str) else f"must be a string, got {value!r}"
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
        for i, v in enumerate(value):
            reason = _type_problem(v, item)
            if reason:
                return f"[{i}] {reason}"
        return ""
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            return f"must be a table, got {value!r}"
        for k, v in value.items():
            reason = _type_problem(v, item)
            if reason:
                return f"{k}: {reason}"
        return ""
    return ""


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
