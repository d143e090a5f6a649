"""What the rules decide from a message and the site's settings alone, with no stored state:
whether an identity claim is signed, and the `dropped` reasons the request path may answer
before the fold runs."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from shoprelay.events import ORDER_COMPLETED
from shoprelay.rules.context import SitePolicy


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
