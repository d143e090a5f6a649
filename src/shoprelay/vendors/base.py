"""What every vendor adapter provides, and the plain data it produces.

An adapter is a module in this package that defines `VENDOR`, an instance of a `Vendor`
subclass. It turns a `StoredEvent` into `VendorRequest`s and declares how the vendor may be
called. It never does I/O: the delivery layer sends the requests, honours the declared limits
and reads the answers through `Vendor.read_response`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlencode

import orjson

from shoprelay.events import StoredEvent
from shoprelay.masking import mask_secrets


@dataclass(frozen=True, slots=True)
class VendorRequest:
    """One HTTP request to a vendor. `json` is the body, serialised by the delivery layer."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    #: Where a vendor accepts several events in one request, the key that groups requests
    #: that may be merged (e.g. one key per endpoint); None means "send alone".
    batch_key: str | None = None
    #: What the adapter left out of this request and why (a malformed optional field, an
    #: order line that cannot be rendered): counted and shown in the debugger when sent.
    notes: tuple[str, ...] = ()
    #: Not a request: a part of the event the adapter cannot render (one bad order line), and
    #: why. It keeps its place among the event's requests, so the delivery layer dead-letters
    #: that part alone (`Spool.mark_part_dead`) and still sends the others.
    refusal: str = ""

    def body_bytes(self) -> bytes:
        return b"" if self.json is None else orjson.dumps(self.json)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VendorRequest:
        data = dict(data)
        data["notes"] = tuple(data.get("notes") or ())
        return cls(**data)

    @classmethod
    def skipped(cls, reason: str) -> VendorRequest:
        """No request: the event has nothing this vendor may be sent, and `reason` says why
        (recorded like a dropped field, then the work is done)."""
        return cls(method="", url="", notes=(reason,))

    @classmethod
    def refused(cls, reason: str) -> VendorRequest:
        """A part of the event that cannot be sent (see `refusal`): dead-lettered alone."""
        return cls(method="", url="", refusal=reason)

    @property
    def is_skip(self) -> bool:
        return not self.method and not self.refusal

    def noted(self, notes: list[str]) -> VendorRequest:
        """This request with `notes` added (the dataclass is frozen)."""
        if not notes:
            return self
        return dataclasses.replace(self, notes=(*self.notes, *notes))


def product_ref(props: dict[str, Any]) -> Any:
    """The one product id rule of every adapter: `product_id`, or `sku` when `product_id` is
    absent, null or empty (Segment's spec has both; clients send either)."""
    value = props.get("product_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        value = props.get("sku")
    return value


class MappingError(ValueError):
    """The event cannot be expressed in the vendor's format (e.g. a non-numeric product id for
    a vendor that requires integers). Such work goes straight to the dead letter with this
    reason: retrying cannot fix it."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `requests` requests every `per_seconds`, per `scope` (one bucket per scope)."""

    requests: int
    per_seconds: float
    scope: str = "credential"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the delivery layer should treat a vendor's answer."""

    ok: bool
    #: Retry later (5xx, 429, timeouts); False with ok=False means dead-letter now.
    retry: bool = False
    #: Seconds the vendor asked us to wait (Retry-After, X-RateLimit-Reset), if it said.
    retry_after: float | None = None
    #: Events of a batch the vendor refused although the request succeeded (Alana `errors`).
    #: The delivery layer never sends such a request again (the others are stored); which
    #: events go to the dead letter: shoprelay.delivery.forwarder `_refused`.
    failed_events: int = 0
    detail: str = ""
    #: The answer is about the settings (credentials, address), not the event: the delivery
    #: layer pauses the vendor and keeps its work queued (shoprelay.delivery.health).
    pause: bool = False
    #: Not a success, yet some of the request's events may be stored (an answer that is
    #: neither a success nor a refusal of the whole request): nothing of it is sent again,
    #: neither as a retry nor one by one; it goes to the dead letter with `detail`.
    maybe_stored: bool = False


@dataclass(kw_only=True)
class VendorConfig:
    """Settings every vendor table takes (CONTRACT §4). Adapters subclass it with their keys.

    Field types are what the settings loader checks: str, int, float, bool, list[str],
    dict[str, str]. A field with no default is required. A field whose name ends in `url`
    must be an http(s) URL. Fields listed in `secret_fields` are masked wherever shown.
    """

    enabled: bool = True
    base_url: str = ""
    #: Allow-list of canonical event names; empty means every event the adapter maps.
    events: list[str] = field(default_factory=list)
    #: The consent category a visitor must grant for this vendor (recommendation vendors
    #: personalise marketing, hence the default).
    consent: str = "marketing"
    #: Send email and phone as SHA-256 hex of the normalised value instead of as given.
    hash_pii: bool = False

    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: The site's `recommendation_vendor` (set by the settings loader; not a vendor key).
    site_recommendation_vendor = ""


def owns_block(vendor: str, stated: str | None, config: VendorConfig) -> bool:
    """CONTRACT §3: "A block's id reaches only the vendor that served the block. Which vendor
    that is: the event's `recommendation_vendor`, else the site's `recommendation_vendor`
    setting, else none." `stated` is the event's (or, for a product, the session link's)."""
    owner = stated or config.site_recommendation_vendor
    return bool(owner) and owner == vendor


C = TypeVar("C", bound=VendorConfig)

#: The batch key prefix of units of one adapter request (`Vendor.units`).
UNITS_KEY = "units:"

#: A rate-limit scope part that is no settings key: the relay's own egress address (one
#: bucket per process; Alana limits per key *and* IP).
EGRESS_IP = "ip"


class Vendor(Generic[C]):
    """Base class of an adapter, generic in its settings type (`Vendor[GoShopsConfig]`): the
    adapter's methods get its own config class, checked once by the settings loader.
    Subclasses set the class attributes and `requests_for`."""

    #: The settings table name (`[sites.X.vendors.<name>]`).
    name: ClassVar[str]
    #: Human name for pages and logs.
    title: ClassVar[str]
    #: The settings class of this adapter's table (the loader builds and type-checks it).
    config_class: type[C]
    #: Production base URL used when the settings give none ("" = base_url is required).
    default_base_url: ClassVar[str] = ""
    #: Canonical event names this adapter may turn into requests (cheap filter at ingest).
    handles: ClassVar[frozenset[str]] = frozenset()
    #: Most events one request may carry (1 = no batching).
    max_batch: ClassVar[int] = 1
    #: The adapter's requests with a JSON array body carry independent units, each stored
    #: on its own (Advisable's `/purchases/batch`: "it accepts an array as an input"). The
    #: delivery layer then handles each element as a request of its own (`units`), merged
    #: back into the adapter's request to be sent, so a refused line is dead-lettered alone.
    array_units: ClassVar[bool] = False

    def rate_limits(self, config: C) -> list[RateLimit]:
        """The vendor's documented limits, possibly raised or lowered by settings."""
        return []

    def check_config(self, config: C) -> dict[str, str]:
        """Value problems the type-checking settings loader cannot see: {key: reason}.

        Owned by the base, so every adapter gets the same checks: non-positive numbers in
        the common `rate_limit*` / `requests_per*` / `*batch_size` settings, and each declared
        rate-limit scope naming settings keys (a misspelt scope would silently share one
        bucket between credentials); then the adapter's own `config_problems`."""
        problems = {}
        for name, value in vars(config).items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            limit_like = name.startswith(("rate_limit", "requests_per")) or "batch_size" in name
            if numeric and limit_like and value < 1:
                problems[name] = "must be at least 1"
        fields = set(vars(config))
        for limit in self.rate_limits(config):
            unknown = [part for part in limit.scope.split("+")
                       if part != EGRESS_IP and part not in fields]
            if unknown:
                problems.setdefault("rate_limit", f"the adapter's limit scope {limit.scope!r} "
                                                  f"names no settings key {unknown}")
        problems.update(self.config_problems(config))
        return problems

    def config_problems(self, config: C) -> dict[str, str]:
        """The adapter's own value rules (e.g. an enum-like setting): {key: reason}."""
        return {}

    def scope_key(self, limit: RateLimit, config: C) -> str:
        """The bucket a limit counts in: the values of its scope's settings keys, so two sites
        sharing a credential share its limit."""
        return "+".join(EGRESS_IP if part == EGRESS_IP else str(getattr(config, part))
                        for part in limit.scope.split("+"))

    def warnings(self, config: C, *, cookie_name: str) -> list[str]:
        """Settings that work but deserve a look (`shoprelay check-config` prints them)."""
        return []

    def wants(self, event: StoredEvent, config: C) -> bool:
        """Whether the event may produce requests for this vendor (before rendering them)."""
        name = event.name
        if name not in self.handles:
            return False
        return not config.events or name in config.events

    def requests_for(self, event: StoredEvent, config: C) -> list[VendorRequest]:
        raise NotImplementedError

    def merge(self, requests: list[VendorRequest], config: C) -> VendorRequest:
        """Merge requests sharing a `batch_key` into one (only called when max_batch > 1)."""
        raise NotImplementedError

    def units(self, requests: list[VendorRequest]) -> list[VendorRequest]:
        """The requests as the delivery layer counts them: with `array_units`, one request per
        element of each array body, those of one request sharing a `units:` batch key (and
        the notes riding on the first), so `merge_units` rebuilds the adapter's request."""
        if not self.array_units:
            return requests
        out: list[VendorRequest] = []
        for index, request in enumerate(requests):
            body = request.json
            if not isinstance(body, list) or len(body) < 2:
                out.append(request)
                continue
            for i, unit in enumerate(body):
                out.append(dataclasses.replace(request, json=[unit],
                                               batch_key=f"{UNITS_KEY}{index}",
                                               notes=request.notes if i == 0 else ()))
        return out

    def merge_units(self, requests: list[VendorRequest]) -> VendorRequest:
        """The adapter's request again, from the units `units` made of it."""
        return dataclasses.replace(requests[0], batch_key=None,
                                   json=[unit for r in requests for unit in r.json],
                                   notes=tuple(n for r in requests for n in r.notes))

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> Outcome:
        """Classify an answer. The default suits most HTTP APIs."""
        return classify_status(status, headers)

    def refuses_settings(self, status: int, url: str) -> bool:
        """Whether an answer condemns the settings rather than the event: 401 and 403 (the
        key, the shop id), and 404 (the address: every path an adapter calls is the vendor's
        own fixed endpoint). Adapters whose paths name a resource of the event override it."""
        return status in (401, 403, 404)

    def base_url(self, config: C) -> str:
        return (config.base_url or self.default_base_url).rstrip("/")

    def mask(self, text: str, config: C) -> str:
        """Hide this vendor's secrets in a string (a URL, a body, an answer, an error) before
        it is shown, in every encoding they may have taken there (see shoprelay.masking)."""
        values = [getattr(config, name, "") for name in type(config).secret_fields]
        return mask_secrets(text, [v for v in values if isinstance(v, str)])


def classify_status(status: int, headers: dict[str, str]) -> Outcome:
    """Retry 5xx, 408 and 429 (honouring Retry-After); any other 4xx is final; 2xx is done."""
    if 200 <= status < 300:
        return Outcome(ok=True)
    retry_after = _retry_after(headers)
    if status >= 500 or status in (408, 429):
        return Outcome(ok=False, retry=True, retry_after=retry_after, detail=f"HTTP {status}")
    return Outcome(ok=False, retry=False, detail=f"HTTP {status}")


def _retry_after(headers: dict[str, str]) -> float | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        from time import time

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
        except (TypeError, ValueError):
            return None


def contact_value(value: str, config: VendorConfig, kind: str = "email") -> str:
    """An email or phone as the vendor should get it: as given, or hashed (`hash_pii`).

    Hashes are of the normalised value (trimmed, lower-case email; digits and a leading + for
    phones) so the same person hashes the same everywhere.
    """
    if not config.hash_pii:
        return value
    if kind == "phone":
        normal = ("+" if value.strip().startswith("+") else "") + "".join(
            ch for ch in value if ch.isdigit())
    else:
        normal = value.strip().lower()
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


def with_query(url: str, params: dict[str, str]) -> str:
    return f"{url}?{urlencode(params)}" if params else url
