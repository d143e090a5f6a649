"""What the rules decide from a message and the site's settings alone, with no stored state:
whether an identity claim is signed, and the `dropped` reasons the request path may answer
before the fold runs."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from shoprelay.events import ORDER_COMPLETED
from shoprelay.identity.ids import normal_id
from shoprelay.rules.context import SitePolicy

#: Longest a `userHash` may be valid ahead (its expiry at most this far past the relay's
#: clock): a signature is a bearer credential for its user id, so one that lives for years
#: is one a replay can use for years. Shops render a fresh one with each page (1 h is plenty).
MAX_USER_HASH_SECONDS = 24 * 3600


def identify_signature(secret: str, user_id: str, expires: int) -> str:
    """What the shop's backend renders as `context.userHash`: `<expires>.<hex>`, the hex being
    HMAC-SHA256 under `identify_secret` of `<user id>.<expires>` (unix seconds). Binding the
    signature to a time (Intercom's identity verification has none) makes a hash copied from
    another visitor's page worthless once it expired. The user id is signed as the relay
    compares it (`normal_id`; ids of plain ASCII without surrounding spaces are unchanged)."""
    payload = f"{normal_id(user_id)}.{int(expires)}".encode()
    digest = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return f"{int(expires)}.{digest}"


#: What the answer's `dropped` says of an identify refused for want of a signature.
IDENTIFY_NOT_SIGNED = ("identify not signed: it binds nothing (this site requires "
                       "context.userHash, identify_secret)")
#: The trace note on another message whose unsigned user id was refused (it is still sent).
IDENTITY_NOT_SIGNED = ("identity not signed: stored and sent without its userId and "
                       "context.traits (this site requires context.userHash, identify_secret)")


_OLD_FORM = "context.userHash is not <expires>.<hmac> (docs/identity.md)"
_EXPIRED = "context.userHash expired"
_TOO_LONG = "context.userHash expires more than 24 h ahead"
_SAID_PRECISELY = frozenset({_OLD_FORM, _EXPIRED, _TOO_LONG})


def signature_problem(policy: SitePolicy, message: dict[str, Any], now: float) -> str | None:
    """Why the message's `context.userHash` does not vouch for its `userId` at `now` (None:
    it does). Reads the message, never changes it (the fold drops `userHash` from the copy
    it stores)."""
    user_id = message.get("userId")
    if not user_id or not policy.identify_secret:
        return "no signature"
    context = message.get("context")
    given = context.get("userHash") if isinstance(context, dict) else None
    if not isinstance(given, str) or not given:
        return "no context.userHash"
    stamp, dot, _digest = given.partition(".")
    if not dot and len(given) == 64 and all(c in "0123456789abcdefABCDEF" for c in given):
        # The plain HMAC of the user id (before issue 22) is refused too: it never expired,
        # so any page it was ever rendered into could replay it forever.
        return _OLD_FORM
    if not dot or not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return "context.userHash is malformed"
    expires = int(stamp)
    # Compared as bytes: compare_digest refuses a str holding anything but ASCII.
    if not hmac.compare_digest(given.lower().encode(), identify_signature(
            policy.identify_secret, str(user_id), expires).encode()):
        return "context.userHash does not match the userId"
    if expires < now:
        return _EXPIRED
    if expires > now + MAX_USER_HASH_SECONDS:
        return _TOO_LONG
    return None


def claim_signed(policy: SitePolicy, source: str, message: dict[str, Any],
                 now: float) -> bool:
    """Whether the shop vouches for the message's `userId`, from the message alone: it came
    from the shop's backend (server key), or the site has an `identify_secret` and
    `context.userHash` is the user id's signature under it, not expired at `now`."""
    if source == "server":
        return True
    return signature_problem(policy, message, now) is None


def claim_refusal(policy: SitePolicy, source: str, message: dict[str, Any],
                  now: float) -> str | None:
    """The refusal the answer's `dropped` lists for this message's identity, decided without
    stored state (so the request path can answer before the fold runs): an `identify` with a
    `userId` that is not signed where the site sets `identify_secret`. Any other message is
    never dropped for its identity (a purchase must not be lost): the fold strips an unsigned
    user id from it only when it names a user other than the visitor's (that needs the
    visitor's state) and still sends it, so it gets None here."""
    if message.get("type") != "identify" or not user_id_of(message):
        return None
    if not policy.identify_secret or source == "server":
        return None
    problem = signature_problem(policy, message, now)
    if problem is None:
        return None
    if problem in _SAID_PRECISELY:
        # These come from the shop's own pages (an old, stale or careless signature): the
        # answer says which, so the shop can fix its rendering.
        return f"identify not signed: {problem}; it binds nothing (identify_secret)"
    return IDENTIFY_NOT_SIGNED


def user_id_of(message: dict[str, Any]) -> str:
    """The message's `userId` as the relay compares it ("" for none)."""
    user_id = message.get("userId")
    if not user_id:
        return ""
    return normal_id(user_id) if isinstance(user_id, str) else str(user_id)


def order_id_of(message: dict[str, Any]) -> str | None:
    """The `order_id` of an `Order Completed`, the key orders are deduplicated on."""
    if message.get("type") != "track" or message.get("event") != ORDER_COMPLETED:
        return None
    props = message.get("properties")
    order_id = props.get("order_id") if isinstance(props, dict) else None
    if order_id is None:
        return None
    # Compared as stored: " o-1" and "o-1" are one order (identity.ids).
    order_id = normal_id(order_id) if isinstance(order_id, str) else str(order_id)
    return order_id or None


#: A browser copy of an order where the backend alone speaks for orders.
HELD_BACK_ORDER = ('held back: this site takes orders from its backend only '
                   '(order_source = "server")')


def early_refusals(policy: SitePolicy, source: str,
                   messages: list[dict[str, Any]], now: float) -> list[tuple[int, str]]:
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
        elif (refusal := claim_refusal(policy, source, message, now)) is not None:
            out.append((index, refusal))
    return out
