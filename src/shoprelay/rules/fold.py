"""The fold of one request's messages into stored events, state changes and work: which
visitor each message belongs to, whether it was seen before, what it changes in the visitor's
state, what the relay adds to it and which vendors get it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoprelay.events import (
    MAX_KEPT_ID_CHARS,
    PRODUCT_UPDATED,
    Enrichment,
    StoredEvent,
    stored_user_agent,
)
from shoprelay.identity.ids import normal_email, normal_id, normal_message
from shoprelay.identity.state import VisitorState, apply, bound_carts, identity_traits
from shoprelay.rules.context import IngestResult, RequestContext, Router, SitePolicy
from shoprelay.rules.early import (
    HELD_BACK_ORDER,
    IDENTITY_NOT_SIGNED,
    claim_refusal,
    claim_signed,
    order_id_of,
    user_id_of,
)
from shoprelay.rules.plan import (
    IngestPlan,
    OrderRecord,
    Snapshot,
    StoredMessage,
    UserBinding,
)


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


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys a request will certainly read (a backend that reads ahead starts with them)."""

    anonymous_ids: list[str]
    user_ids: list[str]
    message_ids: list[str]
    order_ids: list[str]
    visitors: list[str]
    #: The alias keys of the carts and checkouts the messages name (`token_keys`).
    tokens: list[str] = field(default_factory=list)


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
        # Any message's user id is a claim the fold checks against its binding (issue 20),
        # looked up as the fold compares it (issue 22: " victim-7" is victim-7).
        users = [u for u in (user_id_of(m) for m in messages) if u]
        # A server message that names no visitor may be found by the email on its order.
        users += [e for i, m in enumerate(messages)
                  if context.hint(i) == "" and (e := _order_email(m))]
        visitors = [v for v in (context.cookie_visitor, *(context.hints or ())) if v]
        return Keys(list(dict.fromkeys(anonymous)), list(dict.fromkeys(users)),
                    [str(m["messageId"]) for m in messages],
                    [o for o in (order_id_of(m) for m in messages) if o is not None],
                    list(dict.fromkeys(visitors)),
                    list(dict.fromkeys(t for m in messages for t in token_keys(m))))

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
            # Ids as compared, stored and sent from here on: one form for every lookup, the
            # claim check and the state alike (issue 22). A copy, never the request's dict.
            message = normal_message(message)
            visitor = self._visitor(site, message, context.hint(index), context, snapshot, plan)
            if not visitor:
                # No cookie, alias or binding: the request's first visitor, else a new one
                # (whose state is empty: nothing to read).
                visitor = plan.result.visitor_id
                if not visitor:
                    # The one the request path already gave the client a cookie for.
                    visitor = context.new_visitor or self.new_id()
                    fresh.add(visitor)
            for token in token_keys(message):
                # The visitor whose cart or checkout this is, for a platform's order webhook
                # that names only the token (`_visitor`); the first visitor keeps it.
                if plan.aliases.get(token) is None and snapshot.alias(token) is None:
                    plan.aliases[token] = visitor
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
                                         context, snapshot, plan, received_at)
            if claim.refusal is not None:
                plan.result.dropped.append((index, claim.refusal))
            # A copy, never the request's own dict: a refold (Redis) must see the same input.
            message = _without_signature(message)
            if claim.unsigned:
                # Stored as the client sent it but for the identity it claims: binds nothing.
                message = _without_identity(message)
            contact_note = None
            if (self.policy(site).identify_secret and context.source == "browser"
                    and not claim.strong):
                # With a secret, an email or phone is the shop's word only from its backend
                # or a signed message: any page can type one in, and Retail Rocket and Yespo
                # mail it (issue 22). One the visitor already has is no news and stays.
                message, left_out = _without_contacts(message, state)
                if left_out:
                    contact_note = CONTACT_NOT_SIGNED.format(", ".join(left_out))
            # Any other message's own userId and context.traits count as an identify would,
            # folded just before it: the message then carries the user (Alana's `userId`, Go
            # Shops' customer), and what is new about the visitor goes to vendors as an
            # identify of its own, so their identity calls follow once (issue 20).
            derived = _derived_identify(message)
            cuts: list[str] = []  # what the visitor's state refused or cut (its budget)
            binding: UserBinding | None = None
            identity: StoredMessage | None = None
            carried = (False, False, False)
            if derived is not None:
                told = apply(state, derived, visitor_id=visitor, received_at=received_at,
                             session_timeout=self.session_timeout, new_id=self.new_id,
                             notes=cuts)
                binding = self._settle(claim, told, state, visitor)
                self._stamp(told, context, index)
                derived_id = str(derived["messageId"])
                if not (told.new_identity or told.new_binding):
                    pass  # an identical repeat (every message after a login): nothing to say
                elif derived_id in seen_messages or snapshot.message_seen(derived_id):
                    # A client used that id already: the message itself carries the news.
                    carried = (told.new_identity, told.new_binding, told.binding_accepted)
                else:
                    told.extra["identity_of"] = message_id
                    told_event = StoredEvent(site, derived, told)
                    identity = StoredMessage(visitor, told_event, self.router(told_event))
            enrichment = apply(state, message, visitor_id=visitor, received_at=received_at,
                               session_timeout=self.session_timeout, new_id=self.new_id,
                               notes=cuts)
            # The message's own fold brings no identity but an order's email, which the
            # derived identify did not announce (an identical one is not announced again).
            found = self._settle(claim if derived is None else _Claim(), enrichment, state,
                                 visitor)
            binding = binding or found
            enrichment.new_identity |= carried[0]
            enrichment.new_binding |= carried[1]
            enrichment.binding_accepted |= carried[2]
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
            if contact_note is not None:
                plan.notes.append((message_id, contact_note, None))
            plan.notes.extend((message_id, cut, None) for cut in dict.fromkeys(cuts))
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
                        snapshot: Snapshot, plan: IngestPlan, now: float) -> _Claim:
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
        if claim_signed(policy, context.source, message, now):
            if context.source == "server" and hint == "":
                # The backend named no visitor: the message went to the one its user is
                # bound to, and vouches for nothing it only followed (a weak binding stays
                # weak, or every backend order would harden a browser's claim).
                bound = plan.users.get(user_id) or snapshot.user(user_id)
                if bound is not None and bound.visitor_id == visitor:
                    return _Claim(user_id, strong=bound.strong)
            return _Claim(user_id, strong=True)
        if (refusal := claim_refusal(policy, context.source, message, now)) is not None:
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
                # The binding the rules accepted: what Advisable's transfer (which merges the
                # visitor's history into the user's for good) may follow; a claim never.
                enrichment.binding_accepted = enrichment.new_binding
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
        messages), else its anonymousId's alias; for a server message without either, the
        visitor that carried its cart or checkout token, then the one bound to its order's
        email as a user id (docs/platforms.md, "Which visitor"); else a visitor derived from
        its anonymousId, else none yet ("")."""
        known = context.cookie_visitor or hint
        user_id = message.get("userId")
        if not known and user_id and hint == "":
            binding = plan.users.get(str(user_id)) or snapshot.user(str(user_id))
            known = binding.visitor_id if binding is not None else None
        anonymous_id = message.get("anonymousId")
        if not isinstance(anonymous_id, str) or not anonymous_id:
            anonymous_id = None
        current = (plan.aliases.get(anonymous_id) or snapshot.alias(anonymous_id)
                   if anonymous_id is not None else None)
        if not known and current is None and hint == "":
            known = self._linked(message, snapshot, plan)
        if anonymous_id is None:
            return known or ""
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

    @staticmethod
    def _linked(message: dict[str, Any], snapshot: Snapshot, plan: IngestPlan) -> str | None:
        """For a server message that names no visitor, user or alias (an order webhook): the
        visitor that first carried one of its cart or checkout tokens, else the visitor of
        the user bound under its order's email (shops whose identify uses the email)."""
        for token in token_keys(message):
            found = plan.aliases.get(token) or snapshot.alias(token)
            if found:
                return found
        email = _order_email(message)
        if email:
            binding = plan.users.get(email) or snapshot.user(email)
            if binding is not None:
                return binding.visitor_id
        return None


#: The properties that name a shopper's cart or checkout on the shop's platform (a Shopify
#: cart and checkout token, a shop's own cart id): the fold remembers, under
#: `TOKEN_ALIAS` + name + ":" + value, the first visitor that carried each, so an order
#: webhook naming the token reaches that visitor.
TOKEN_PROPERTIES = ("checkout_id", "cart_id")
TOKEN_ALIAS = "token:"


def token_keys(message: dict[str, Any]) -> list[str]:
    """The alias keys of the cart and checkout tokens a message's properties carry."""
    props = message.get("properties")
    if not isinstance(props, dict):
        return []
    keys = []
    for name in TOKEN_PROPERTIES:
        value = props.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        text = normal_id(str(value))
        if text and len(text) <= MAX_KEPT_ID_CHARS:
            keys.append(f"{TOKEN_ALIAS}{name}:{text}")
    return keys


def _order_email(message: dict[str, Any]) -> str | None:
    """An `Order Completed`'s email (`properties.email`, else `context.traits.email`) as
    compared, for the visitor of a shop whose identify uses the email as user id."""
    if order_id_of(message) is None:
        return None
    props = message.get("properties")
    email = props.get("email") if isinstance(props, dict) else None
    if not isinstance(email, str) or not email:
        email = identity_traits(message).get("email")
    return normal_email(email) or None if isinstance(email, str) else None


def _without_signature(message: dict[str, Any]) -> dict[str, Any]:
    """The message as stored: without `context.userHash` (the relay does not keep it)."""
    context = message.get("context")
    if not isinstance(context, dict) or "userHash" not in context:
        return message
    return {**message, "context": {k: v for k, v in context.items() if k != "userHash"}}


#: The trace note on a browser message whose email or phone was left out (identify_secret).
CONTACT_NOT_SIGNED = ("contact not signed: {} left out (with identify_secret an email or "
                      "phone reaches vendors only from the backend or a signed message)")


def _without_contacts(message: dict[str, Any],
                      state: VisitorState) -> tuple[dict[str, Any], list[str]]:
    """The message without the emails and phones it brings that the visitor does not have
    yet (`traits`, `context.traits`, an order's `properties.email`), and where they were."""
    have = {"email": state.email, "phone": state.phone}
    left_out: list[str] = []

    def strip(where: str, values: Any, keys: tuple[str, ...]) -> Any:
        if not isinstance(values, dict):
            return values
        kept = dict(values)
        for key in keys:
            value = kept.get(key)
            if value in (None, ""):
                continue
            normal = normal_email if key == "email" else normal_id
            if not (isinstance(value, str) and have[key] and normal(value) == have[key]):
                del kept[key]
                left_out.append(f"{where}.{key}")
        return kept if len(kept) != len(values) else values

    out = message
    if message.get("type") == "identify" and "traits" in message:
        out = {**out, "traits": strip("traits", message["traits"], ("email", "phone"))}
    context = message.get("context")
    if isinstance(context, dict) and "traits" in context:
        out = {**out, "context": {**context, "traits": strip("context.traits",
                                                             context["traits"],
                                                             ("email", "phone"))}}
    if order_id_of(message) is not None and "properties" in message:
        out = {**out, "properties": strip("properties", message["properties"], ("email",))}
    return (out, left_out) if left_out else (message, [])


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
