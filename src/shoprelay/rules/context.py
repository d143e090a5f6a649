"""What the rules are told: one request's context, the site policy they read, and the answer
they give (kept as JSON in the intake between the request path and the rules stage)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from shoprelay.events import StoredEvent

#: Given a stored event, the vendor names that should receive it.
Router = Callable[[StoredEvent], list[str]]


@dataclass(slots=True)
class IngestResult:
    """What the ingest answer reports: the request's visitor and what was stored."""

    visitor_id: str
    stored: int = 0
    #: Messages not stored because they were seen before (resends and orders reported).
    duplicates: int = 0
    #: Accepted messages that reach no vendor for a reason the client should hear:
    #: (index, reason). Resends of a messageId are not listed (that is plain idempotency).
    dropped: list[tuple[int, str]] = field(default_factory=list)
    #: Whether the request's visitor may be handed its cookie. Not when it was found only
    #: through an existing alias: an anonymousId is no credential.
    cookie: bool = True

    def to_json(self) -> bytes:
        """As the intake keeps it for a sender that waits for the fold (the server API)."""
        return orjson.dumps({"v": self.visitor_id, "s": self.stored, "d": self.duplicates,
                             "r": self.dropped, "c": self.cookie})

    @classmethod
    def from_json(cls, raw: bytes | str) -> IngestResult:
        data = orjson.loads(raw)
        return cls(visitor_id=data.get("v", ""), stored=data.get("s", 0),
                   duplicates=data.get("d", 0),
                   dropped=[(int(i), str(r)) for i, r in data.get("r") or []],
                   cookie=bool(data.get("c", True)))


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What one ingest request tells about all of its messages (replaces a loose dict).

    `consent` is per message index. `hints` is for the server API only: per message, the
    visitor the shop's backend named by passing on the `sc` cookie value ("" = look the
    message's user id up), or None for a browser request."""

    source: str = "browser"
    cookie_visitor: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    bot: bool = False
    consent: dict[int, dict[str, bool] | None] = field(default_factory=dict)
    hints: Sequence[str | None] | None = None
    #: A cookie-less browser request whose first message has no anonymousId: the new visitor
    #: its answer's cookie names (the fold uses it where it would make a new one).
    new_visitor: str | None = None

    def hint(self, index: int) -> str | None:
        return self.hints[index] if self.hints else None

    def to_json(self) -> bytes:
        """The context as the intake keeps it beside the request's messages (short keys:
        it is written once per request; consent only where a message stated one)."""
        return orjson.dumps({
            "s": self.source, "c": self.cookie_visitor, "i": self.ip, "u": self.user_agent,
            "b": self.bot, "k": [[i, c] for i, c in self.consent.items() if c is not None],
            "h": None if self.hints is None else list(self.hints), "n": self.new_visitor})

    @classmethod
    def from_json(cls, raw: bytes | str) -> RequestContext:
        data = orjson.loads(raw)
        hints = data.get("h")
        return cls(source=data.get("s", "browser"), cookie_visitor=data.get("c"),
                   ip=data.get("i"), user_agent=data.get("u"), bot=bool(data.get("b")),
                   consent={int(i): c for i, c in data.get("k") or []},
                   hints=None if hints is None else list(hints),
                   new_visitor=data.get("n"))


class PolicySource(Protocol):
    """What a site's settings (`settings.SiteSettings`) offer the policy, named here so the
    rules need not import the settings."""

    @property
    def order_source(self) -> str: ...

    @property
    def identify_secret(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """The site settings the rules read (kept apart from `Settings` so the rules stay pure)."""

    order_source: str = "first"
    #: With it, a browser identify binds only when `context.userHash` is the user id's
    #: signature under this secret, not expired (`early.identify_signature`, rendered into
    #: the page by the shop's backend); emails and phones count only from the backend or signed.
    identify_secret: str = ""

    @classmethod
    def of(cls, site: PolicySource) -> SitePolicy:
        """The policy a site's settings set (the request path and the rules stage alike)."""
        return cls(order_source=site.order_source, identify_secret=site.identify_secret)
