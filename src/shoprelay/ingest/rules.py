"""The rules of ingest, written once for every spool backend.

Which visitor a message belongs to, whether it was seen before (as a resend or as an order
already reported), what it changes in the visitor's state, what the relay adds to it and which
vendors get it: all of that is decided here, by a pure fold over the request's messages. A
spool backend only does what storage must do: read what the fold asks for (through a
`Snapshot`), and write the resulting `IngestPlan` atomically. SQLite reads inside its writer's
transaction; Redis reads under WATCH and, when the fold asks for a key it did not read yet,
reads it and folds again (the fold has no side effects until the plan is written).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shoprelay.events import (
    ORDER_COMPLETED,
    PRODUCT_UPDATED,
    Enrichment,
    StoredEvent,
    stored_user_agent,
)
from shoprelay.identity.state import VisitorState, apply, bound_carts, identity_traits

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


#: Who speaks for a site's orders (the `order_source` site setting).
ORDER_SOURCES = ("first", "server")


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """The site settings the rules read (kept apart from `Settings` so the rules stay pure)."""

    order_source: str = "first"
    #: With it, a browser identify binds only when `context.userHash` is the hex HMAC-SHA256
    #: of the user id under this secret (rendered into the page by the shop's backend).
    identify_secret: str = ""


def identify_signature(secret: str, user_id: str) -> str:
    """What the shop's backend renders beside a user id (Intercom's identity verification)."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


#: What the answer's `dropped` says of an identify refused for want of a signature.
IDENTIFY_NOT_SIGNED = ("identify not signed: it binds nothing (this site requires "
                       "context.userHash, identify_secret)")
#: The trace note on another message whose unsigned user id was refused (it is still sent).
IDENTITY_NOT_SIGNED = ("identity not signed: stored and sent without its userId and "
                       "context.traits (this site requires context.userHash, identify_secret)")


def claim_signed(policy: SitePolicy, source: str, message: dict[str, Any]) -> bool:
    """Whether the shop vouches for the message's `userId`, from the message alone: it came
    from the shop's backend (server key), or the site has an `identify_secret` and
    `context.userHash` is the user id's signature under it. Reads the message, never changes
    it (the fold drops `userHash` from the copy it stores)."""
    if source == "server":
        return True
    user_id = message.get("userId")
    if not user_id or not policy.identify_secret:
        return False
    context = message.get("context")
    given = context.get("userHash") if isinstance(context, dict) else None
    # Compared as bytes: compare_digest refuses a str holding anything but ASCII.
    return isinstance(given, str) and hmac.compare_digest(
        given.lower().encode(), identify_signature(policy.identify_secret,
                                                   str(user_id)).encode())


def claim_refusal(policy: SitePolicy, source: str, message: dict[str, Any]) -> str | None:
    """The refusal the answer's `dropped` lists for this message's identity, decided without
    stored state (so the request path can answer before the fold runs): an `identify` with a
    `userId` that is not signed where the site sets `identify_secret`. Any other message is
    never dropped for its identity (a purchase must not be lost): the fold strips an unsigned
    user id from it only when it names a user other than the visitor's (that needs the
    visitor's state) and still sends it, so it gets None here."""
    if message.get("type") != "identify" or not message.get("userId"):
        return None
    if not policy.identify_secret or claim_signed(policy, source, message):
        return None
    return IDENTIFY_NOT_SIGNED


@dataclass(frozen=True, slots=True)
class UserBinding:
    """Which visitor a user id is bound to, and whether the shop vouched for it (`strong`:
    made by the server API or by a signed identify, so an unsigned browser claim never moves
    it)."""

    visitor_id: str
    strong: bool = False

    def encode(self) -> str:
        return self.visitor_id + ("!" if self.strong else "")

    @classmethod
    def decode(cls, text: str) -> UserBinding:
        return cls(text[:-1], True) if text.endswith("!") else cls(text, False)


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """What the relay remembers of an order id: the vendors its copies were sent to so far
    (None: every vendor, as recorded by an older release)."""

    message_id: str
    vendors: frozenset[str] | None

    def to_json(self) -> str:
        return orjson.dumps({"m": self.message_id,
                             "v": None if self.vendors is None else sorted(self.vendors)}
                            ).decode()

    @classmethod
    def from_json(cls, text: str) -> OrderRecord:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):  # an older release stored the messageId alone
            return cls(text, None)
        vendors = data.get("v")
        return cls(str(data.get("m", "")), None if vendors is None else frozenset(vendors))


class Snapshot(Protocol):
    """What the fold reads from storage; every value as it was before this request.

    A backend that cannot answer a key yet (Redis reads in rounds) raises `Missing` naming it;
    the fold is then run again once the key was read."""

    def alias(self, anonymous_id: str) -> str | None: ...

    def user(self, user_id: str) -> UserBinding | None: ...

    def message_seen(self, message_id: str) -> bool: ...

    def order(self, order_id: str) -> OrderRecord | None: ...

    def state(self, visitor_id: str) -> VisitorState:
        """The visitor's state, an object the fold may change in place (a fresh one, or the
        backend's cached copy that a rolled-back write discards)."""
        ...


class Missing(Exception):  # noqa: N818 - a request for more data, not an error
    """The snapshot was asked for keys it has not read: read them, then fold again."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not read yet")
        self.kind = kind
        self.key = key


@dataclass(frozen=True, slots=True)
class _Claim:
    """A message's user id and how far it is believed (see `IngestRules._identify_claim`)."""

    user_id: str | None = None
    strong: bool = False
    #: Refused for want of a signature: the message binds nothing.
    unsigned: bool = False
    #: Unsigned, and the user is strongly bound to another visitor.
    conflict: bool = False
    #: For the answer's `dropped` (an identify: it then reaches no vendor).
    refusal: str | None = None
    #: For the message's trace (another message: it is still sent, without its identity).
    note: str | None = None


@dataclass(slots=True)
class StoredMessage:
    """One accepted, new message as it is to be stored, with the vendors that get it."""

    visitor_id: str
    event: StoredEvent
    vendors: list[str]


@dataclass(slots=True)
class IngestPlan:
    """Everything one request writes, decided by the fold: the backend writes it atomically."""

    result: IngestResult
    #: anonymousId → visitor id, new or moved.
    aliases: dict[str, str] = field(default_factory=dict)
    #: user id → its binding, new or changed.
    users: dict[str, UserBinding] = field(default_factory=dict)
    #: The states of the visitors this request changed.
    states: dict[str, VisitorState] = field(default_factory=dict)
    stored: list[StoredMessage] = field(default_factory=list)
    #: order id → what to remember of it after this request.
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    #: (messageId, note, order id or None) on copies not stored, for a trace: resends
    #: deduplicated, order copies dropped as duplicates. Rare, so cheap to keep.
    notes: list[tuple[str, str, str | None]] = field(default_factory=list)

    @property
    def work(self) -> int:
        """Delivery rows the plan creates (one per stored message and vendor)."""
        return sum(len(m.vendors) for m in self.stored)


def order_id_of(message: dict[str, Any]) -> str | None:
    """The `order_id` of an `Order Completed`, the key orders are deduplicated on."""
    if message.get("type") != "track" or message.get("event") != ORDER_COMPLETED:
        return None
    props = message.get("properties")
    order_id = props.get("order_id") if isinstance(props, dict) else None
    return None if order_id in (None, "") else str(order_id)


#: A browser copy of an order where the backend alone speaks for orders.
HELD_BACK_ORDER = ('held back: this site takes orders from its backend only '
                   '(order_source = "server")')


def early_refusals(policy: SitePolicy, source: str,
                   messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """The `dropped` reasons an answer can give before the fold runs: those that follow from
    the message and the site's settings alone (the request path answers at intake, before
    any stored state is read). Stateful ones (an order already reported) are noted in the
    message's trace instead; the server API waits for the fold and hears them all."""
    if source == "server":
        return []
    out: list[tuple[int, str]] = []
    for index, message in enumerate(messages):
        if order_id_of(message) is not None and policy.order_source == "server":
            out.append((index, HELD_BACK_ORDER))
        elif (refusal := claim_refusal(policy, source, message)) is not None:
            out.append((index, refusal))
    return out


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys a request will certainly read (a backend that reads ahead starts with them)."""

    anonymous_ids: list[str]
    user_ids: list[str]
    message_ids: list[str]
    order_ids: list[str]
    visitors: list[str]


class IngestRules:
    """The fold of a request's messages into stored events, state changes and work."""

    def __init__(self, *, router: Router, session_timeout: float,
                 alias_for: Callable[[str, str], str], new_id: Callable[[], str],
                 policy: Callable[[str], SitePolicy] | None = None) -> None:
        self.router = router
        self.session_timeout = session_timeout
        self.alias_for = alias_for
        self.new_id = new_id
        #: site → its order source and identify secret (defaults: "first", none).
        self.policy = policy or (lambda site: SitePolicy())

    @staticmethod
    def keys(messages: list[dict[str, Any]], context: RequestContext) -> Keys:
        anonymous = [m["anonymousId"] for m in messages
                     if isinstance(m.get("anonymousId"), str) and m["anonymousId"]]
        # Any message's user id is a claim the fold checks against its binding (issue 20).
        users = [str(m["userId"]) for m in messages if m.get("userId")]
        visitors = [v for v in (context.cookie_visitor, *(context.hints or ())) if v]
        return Keys(list(dict.fromkeys(anonymous)), list(dict.fromkeys(users)),
                    [str(m["messageId"]) for m in messages],
                    [o for o in (order_id_of(m) for m in messages) if o is not None],
                    list(dict.fromkeys(visitors)))

    def fold(self, site: str, messages: list[dict[str, Any]], context: RequestContext,
             snapshot: Snapshot, received_at: float) -> IngestPlan:
        """Decide what the request stores. Pure but for `new_id` and the snapshot's reads;
        may raise `Missing` (nothing is decided then)."""
        plan = IngestPlan(IngestResult(visitor_id=context.cookie_visitor or ""))
        seen_messages: set[str] = set()
        fresh: set[str] = set()
        trusted: set[str] = {context.cookie_visitor} if context.cookie_visitor else set()
        derived_count = 0
        for index, message in enumerate(messages):
            visitor = self._visitor(site, message, context.hint(index), context, snapshot, plan)
            if not visitor:
                # No cookie, alias or binding: the request's first visitor, else a new one
                # (whose state is empty: nothing to read).
                visitor = plan.result.visitor_id
                if not visitor:
                    # The one the request path already gave the client a cookie for.
                    visitor = context.new_visitor or self.new_id()
                    fresh.add(visitor)
            if not plan.result.visitor_id:
                plan.result.visitor_id = visitor
                # Hand out a visitor's cookie only to the client that holds it already, or
                # for a visitor this request created; never for one found by its alias.
                plan.result.cookie = (visitor in trusted or visitor in fresh
                                      or visitor in plan.aliases.values())
            message_id = str(message["messageId"])
            if message_id in seen_messages or snapshot.message_seen(message_id):
                plan.result.duplicates += 1  # a resend: stored once, answered as accepted
                plan.notes.append((message_id, "deduplicated: a resend of this messageId "
                                               "(stored once, sent once)", None))
                continue
            state = plan.states.get(visitor)
            if state is None:
                state = VisitorState() if visitor in fresh else snapshot.state(visitor)
            order_id = order_id_of(message)
            if order_id is not None:
                # An order copy may still be refused after the fold (its vendors depend on
                # the event): fold a copy, kept only if the order is stored.
                state = VisitorState.from_dict(state.to_dict())
            claim = self._identify_claim(site, message, visitor, state, context.hint(index),
                                         context, snapshot, plan)
            if claim.refusal is not None:
                plan.result.dropped.append((index, claim.refusal))
            # A copy, never the request's own dict: a refold (Redis) must see the same input.
            message = _without_signature(message)
            if claim.unsigned:
                # Stored as the client sent it but for the identity it claims: binds nothing.
                message = _without_identity(message)
            # Any other message's own userId and context.traits count as an identify would,
            # folded just before it: the message then carries the user (Alana's `userId`, Go
            # Shops' customer), and what is new about the visitor goes to vendors as an
            # identify of its own, so their identity calls follow once (issue 20).
            derived = _derived_identify(message)
            binding: UserBinding | None = None
            identity: StoredMessage | None = None
            carried = (False, False)
            if derived is not None:
                told = apply(state, derived, visitor_id=visitor, received_at=received_at,
                             session_timeout=self.session_timeout, new_id=self.new_id)
                binding = self._settle(claim, told, state, visitor)
                self._stamp(told, context, index)
                derived_id = str(derived["messageId"])
                if not (told.new_identity or told.new_binding):
                    pass  # an identical repeat (every message after a login): nothing to say
                elif derived_id in seen_messages or snapshot.message_seen(derived_id):
                    # A client used that id already: the message itself carries the news.
                    carried = (told.new_identity, told.new_binding)
                else:
                    told.extra["identity_of"] = message_id
                    told_event = StoredEvent(site, derived, told)
                    identity = StoredMessage(visitor, told_event, self.router(told_event))
            enrichment = apply(state, message, visitor_id=visitor, received_at=received_at,
                               session_timeout=self.session_timeout, new_id=self.new_id)
            # The message's own fold brings no identity but an order's email, which the
            # derived identify did not announce (an identical one is not announced again).
            found = self._settle(claim if derived is None else _Claim(), enrichment, state,
                                 visitor)
            binding = binding or found
            enrichment.new_identity |= carried[0]
            enrichment.new_binding |= carried[1]
            self._stamp(enrichment, context, index)
            event = StoredEvent(site, message, enrichment)
            vendors = [] if claim.unsigned and message.get("type") == "identify" else (
                self.router(event))
            if order_id is not None:
                vendors, refusal = self._order_vendors(site, order_id, vendors, context,
                                                       snapshot, plan, message_id)
                if refusal is not None:
                    plan.result.dropped.append((index, refusal))
                    if refusal.startswith("duplicate"):
                        # Not stored, so it changes nothing: its identity neither.
                        plan.result.duplicates += 1
                        record = plan.orders.get(order_id) or snapshot.order(order_id)
                        first = f" by message {record.message_id}" if record else ""
                        plan.notes.append((message_id, f"deduplicated: order {order_id} was "
                                                       f"already reported{first}", order_id))
                        continue
            seen_messages.add(message_id)
            plan.states[visitor] = state
            if binding is not None and claim.user_id is not None:
                plan.users[claim.user_id] = binding
            if claim.note is not None:
                plan.notes.append((message_id, claim.note, None))
            if identity is not None:
                seen_messages.add(identity.event.message_id)
                plan.stored.append(identity)
                derived_count += 1
                plan.notes.append((message_id, "identity: its userId / context.traits were new "
                                               "for the visitor, stored and sent as identify "
                                               f"{identity.event.message_id}", None))
            plan.stored.append(StoredMessage(visitor, event, vendors))
        bound_carts([(m.visitor_id, m.vendors, m.event.message, m.event.enrichment)
                     for m in plan.stored])
        plan.result.stored = len(plan.stored) - derived_count
        return plan

    def _identify_claim(self, site: str, message: dict[str, Any], visitor: str,
                        state: VisitorState, hint: str | None, context: RequestContext,
                        snapshot: Snapshot, plan: IngestPlan) -> _Claim:
        """How far a message's user id is believed, on an identify or any other message. The
        server API and a signed message bind (strongly); an unsigned browser message is a
        claim: where the site requires signatures an identify is refused outright and any
        other message is stripped of a user id that is not already the visitor's (and still
        sent); else it binds weakly and never moves a strong binding of that user to another
        visitor (the visitor is then marked as claiming, and vendors get no identity call
        carrying its email)."""
        user_id = message.get("userId")
        if not user_id or not _about_a_visitor(message):
            return _Claim()
        user_id = str(user_id)
        policy = self.policy(site)
        if claim_signed(policy, context.source, message):
            if context.source == "server" and hint == "":
                # The backend named no visitor: the message went to the one its user is
                # bound to, and vouches for nothing it only followed (a weak binding stays
                # weak, or every backend order would harden a browser's claim).
                bound = plan.users.get(user_id) or snapshot.user(user_id)
                if bound is not None and bound.visitor_id == visitor:
                    return _Claim(user_id, strong=bound.strong)
            return _Claim(user_id, strong=True)
        if (refusal := claim_refusal(policy, context.source, message)) is not None:
            return _Claim(user_id, unsigned=True, refusal=refusal)
        if policy.identify_secret:
            if user_id == state.user_id:
                # After a signed identify every message repeats the user id unsigned
                # (trackers keep it, but not the signature): it names no one new.
                return _Claim(user_id)
            return _Claim(user_id, unsigned=True, note=IDENTITY_NOT_SIGNED)
        bound = plan.users.get(user_id) or snapshot.user(user_id)
        if bound is not None and bound.strong and bound.visitor_id != visitor:
            # Stored and sent (it is still this visitor's message), but the binding stays.
            return _Claim(user_id, conflict=True)
        return _Claim(user_id)

    @staticmethod
    def _settle(claim: _Claim, enrichment: Enrichment, state: VisitorState,
                visitor: str) -> UserBinding | None:
        """After an identity was folded into `state`: the binding it makes (None: none or
        unchanged), and whether the visitor is left claiming another's user."""
        binding = None
        if claim.user_id is not None and enrichment.user_id == claim.user_id:
            if claim.conflict:
                state.claimed = True
            elif claim.strong or enrichment.new_binding:
                binding = UserBinding(visitor, claim.strong)
                state.claimed = False
        if state.user_id is None:
            state.claimed = False  # logged out: no claim left
        enrichment.claimed_identity = state.claimed
        return binding

    @staticmethod
    def _stamp(enrichment: Enrichment, context: RequestContext, index: int) -> None:
        """What the request tells about the message's client."""
        enrichment.ip = context.ip
        enrichment.user_agent = stored_user_agent(context.user_agent)
        enrichment.bot = context.bot
        enrichment.source = context.source
        enrichment.consent = context.consent.get(index)

    def _order_vendors(self, site: str, order_id: str, vendors: list[str],
                       context: RequestContext, snapshot: Snapshot, plan: IngestPlan,
                       message_id: str) -> tuple[list[str], str | None]:
        """Which vendors an `Order Completed` copy goes to, and why not to the others.

        An order reaches each vendor once, whichever copy (browser, backend) came first — but
        only a copy that was sent to a vendor counts for that vendor: one held back (a bot,
        consent refused, not routed) suppresses nothing. With `order_source = "server"` the
        shop's backend alone speaks for orders: browser copies are stored and sent nowhere,
        so a browser holding the public write key cannot squat an order id."""
        record = plan.orders.get(order_id) or snapshot.order(order_id)
        already = frozenset() if record is None else record.vendors
        if context.source == "browser" and self.policy(site).order_source == "server":
            vendors, refusal = [], HELD_BACK_ORDER
        elif already is None:  # an older release's record: every vendor had it
            return [], f"duplicate: order {order_id} was already reported"
        else:
            fresh = [v for v in vendors if v not in already]
            if record is not None and vendors and not fresh:
                return [], f"duplicate: order {order_id} was already reported"
            vendors, refusal = fresh, None
        plan.orders[order_id] = OrderRecord(
            record.message_id if record is not None else message_id,
            (already or frozenset()) | frozenset(vendors))
        return vendors, refusal

    def _visitor(self, site: str, message: dict[str, Any], hint: str | None,
                 context: RequestContext, snapshot: Snapshot, plan: IngestPlan) -> str:
        """Which visitor a message belongs to: the signed cookie (or, from the shop's backend,
        the cookie value it passed on), else the visitor its user id is bound to (server
        messages), else its anonymousId's alias, else none yet ("")."""
        known = context.cookie_visitor or hint
        user_id = message.get("userId")
        if not known and user_id and hint == "":
            binding = plan.users.get(str(user_id)) or snapshot.user(str(user_id))
            known = binding.visitor_id if binding is not None else None
        anonymous_id = message.get("anonymousId")
        if not isinstance(anonymous_id, str) or not anonymous_id:
            return known or ""
        current = plan.aliases.get(anonymous_id) or snapshot.alias(anonymous_id)
        if known:
            if current is None:
                plan.aliases[anonymous_id] = known
            # An existing alias is never moved: a client holding its own cookie could
            # otherwise take over any visitor whose anonymousId it learnt.
            return known
        if current is not None:
            return current
        visitor = self.alias_for(site, anonymous_id)
        plan.aliases[anonymous_id] = visitor
        return visitor



def _without_signature(message: dict[str, Any]) -> dict[str, Any]:
    """The message as stored: without `context.userHash` (the relay does not keep it)."""
    context = message.get("context")
    if not isinstance(context, dict) or "userHash" not in context:
        return message
    return {**message, "context": {k: v for k, v in context.items() if k != "userHash"}}


def _without_identity(message: dict[str, Any]) -> dict[str, Any]:
    """The message without the identity it claims: `userId`, `traits`, `context.traits`."""
    kept = {k: v for k, v in message.items() if k not in ("userId", "traits")}
    context = kept.get("context")
    if isinstance(context, dict) and "traits" in context:
        kept["context"] = {k: v for k, v in context.items() if k != "traits"}
    return kept


def _derived_identify(message: dict[str, Any]) -> dict[str, Any] | None:
    """The identify a message other than an identify implies by its own `userId` and
    `context.traits` (None: it names no one). Its messageId is the message's with
    ":identify" appended, so a refold or a resend derives the same one."""
    if message.get("type") == "identify" or not _about_a_visitor(message):
        return None
    user_id = message.get("userId")
    traits = identity_traits(message)
    if not user_id and not traits:
        return None
    derived: dict[str, Any] = {"type": "identify", "messageId": f"{message['messageId']}:identify",
                               "traits": traits}
    if user_id:
        derived["userId"] = user_id
    for key in ("anonymousId", "timestamp", "sentAt", "originalTimestamp"):
        if key in message:
            derived[key] = message[key]
    context = message.get("context")
    if isinstance(context, dict):
        # Consent, page and campaign as the message had them; the traits are now `traits`.
        derived["context"] = {k: v for k, v in context.items() if k != "traits"}
    return derived


def _about_a_visitor(message: dict[str, Any]) -> bool:
    """Whether the message's userId names a person. A catalogue update's does not: server
    libraries need some id on a track, and the shop's backend sends `Product Updated` as
    `track("catalogue", ...)` (docs/identity.md)."""
    return not (message.get("type") == "track" and message.get("event") == PRODUCT_UPDATED)
