"""One normalisation for the ids the relay compares: user ids, order ids, emails, phones.

Issue 22: the claim check compared the raw `userId` while the visitor state stripped it, so an
unsigned identify with `" victim-7"` found no binding to respect and still reached Retail
Rocket and Yespo as `victim-7`. Every comparison, every lookup (bindings, order records) and
what is stored and sent therefore use the value as `normal_id` / `normal_email` leave it, once,
at the top of the fold (and in the request path's signature check). Pure.

- Format characters (zero-width spaces, bidi overrides, BOM: category Cf) and control
  characters other than whitespace (Cc) are removed: they only make two ids look alike.
- Unicode NFKC folds compatibility look-alikes (full-width `ｖｉｃｔｉｍ`, `ﬁ`, super- and
  subscripts, the no-break space) onto one form.
- Whitespace of any kind (`\\t`, `\\u00a0`, `\\u2003`, …) becomes a plain space, runs of it one
  space, and none is kept at either end.
- Emails are lower-cased: mail providers treat addresses so, and both vendors that take one
  mail it. User and order ids keep their case: no vendor document says it folds them.

Not covered: cross-script confusables (Cyrillic `е` for Latin `e`) are distinct characters
under NFKC; a shop whose ids may contain them must refuse them at sign-up.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

#: Unicode categories removed before NFKC: format and (non-whitespace) control characters.
_REMOVED = frozenset({"Cf", "Cc"})


def normal_id(value: str) -> str:
    """A user or order id as the relay compares, stores and sends it ("" if nothing is left)."""
    if _plain(value):
        return value  # the common case: nothing to do
    kept = "".join(ch for ch in value
                   if ch.isspace() or unicodedata.category(ch) not in _REMOVED)
    folded = unicodedata.normalize("NFKC", kept)
    # str.split() splits on every Unicode whitespace character and drops the ends.
    return " ".join(folded.split())


def normal_email(value: str) -> str:
    """An email as the relay compares, stores and sends it: `normal_id`, lower-cased."""
    return normal_id(value).lower()


#: The fields normalised, and how: in `traits` / `context.traits`, and in `properties`.
_TRAITS: tuple[tuple[str, Callable[[str], str]], ...] = (("email", normal_email),
                                                         ("phone", normal_id))
_PROPERTIES: tuple[tuple[str, Callable[[str], str]], ...] = (("order_id", normal_id),
                                                             ("email", normal_email))


def _fixed(values: Any, fields: tuple[tuple[str, Callable[[str], str]], ...]) -> Any:
    """`values` with those of `fields` that are text normalised: a copy if one changed, else
    `values` itself. Numbers (an order id of 1001) are kept as sent."""
    if not isinstance(values, dict):
        return values
    fixed = {}
    for key, normal in fields:
        value = values.get(key)
        if isinstance(value, str) and (as_compared := normal(value)) != value:
            fixed[key] = as_compared
    return {**values, **fixed} if fixed else values


def _plain(value: Any) -> bool:
    """Whether `value` is certainly its own normal form: not text, or printable ASCII with
    no space at either end and no run of spaces (nearly every id and address a shop sends).
    Checked first for the whole message, because this runs for every message ingested."""
    return not isinstance(value, str) or (
        value.isascii() and value.isprintable() and value.strip() == value
        and "  " not in value)


def _plain_in(values: Any, keys: tuple[str, ...]) -> bool:
    if not isinstance(values, dict):
        return True
    for key in keys:
        value = values.get(key)
        if isinstance(value, str) and not (
                _plain(value) and (key != "email" or value == value.lower())):
            return False
    return True


def normal_message(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its identity fields normalised: `userId`, `traits` and
    `context.traits` `email` / `phone`, and `properties` `order_id` / `email`. A copy when
    anything changed, else the message itself (never changed in place: a refold must see the
    same input). A `userId` that normalises to nothing is left out (the message names no
    user, as if it had sent none)."""
    context = message.get("context")
    if (_plain(message.get("userId"))
            and _plain_in(message.get("traits"), ("email", "phone"))
            and _plain_in(context.get("traits") if isinstance(context, dict) else None,
                          ("email", "phone"))
            and _plain_in(message.get("properties"), ("order_id", "email"))):
        return message
    out = message
    user_id = message.get("userId")
    if isinstance(user_id, str) and (as_compared := normal_id(user_id)) != user_id:
        out = {k: v for k, v in message.items() if k != "userId"}
        if as_compared:
            out["userId"] = as_compared
    if (traits := _fixed(message.get("traits"), _TRAITS)) is not message.get("traits"):
        out = {**out, "traits": traits}
    if isinstance(context, dict) and (
            traits := _fixed(context.get("traits"), _TRAITS)) is not context.get("traits"):
        out = {**out, "context": {**context, "traits": traits}}
    props = message.get("properties")
    if (fixed := _fixed(props, _PROPERTIES)) is not props:
        out = {**out, "properties": fixed}
    return out
