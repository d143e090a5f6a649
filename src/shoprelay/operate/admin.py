"""How an operator proves to be one: the admin token, and short-lived proofs derived from it.

The token itself travels only in an `Authorization: Bearer` header: URLs end up in proxy
access logs, browser history and Referer headers. A browser cannot set that header when it
opens a page or an EventSource, so the debugger uses a signed link instead: `shoprelay
debug-link` prints `/debug?link=…`, valid for minutes; opening it trades it for an HttpOnly,
SameSite=Strict cookie scoped to `/debug`, valid for hours, that the page's event stream sends
by itself. Both are signed with the admin token, so rotating the token revokes them, and they
hold nothing else (stateless: any worker or host of the relay accepts them).
"""

from __future__ import annotations

import hmac
import time

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

#: How long a printed debugger link may be opened.
LINK_SECONDS = 600
#: How long the debugger cookie it is traded for lasts.
SESSION_SECONDS = 8 * 3600
COOKIE_NAME = "shoprelay_debug"
COOKIE_PATH = "/debug"


class _Signer(TimestampSigner):
    """A TimestampSigner whose clock can be set (a link made in the past, for tests)."""

    def __init__(self, secret: str, salt: str, now: float | None = None) -> None:
        super().__init__(secret, salt=salt)
        self._now = now

    def get_timestamp(self) -> int:
        return int(time.time() if self._now is None else self._now)


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries the admin token as a bearer token."""
    if not token or authorization[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), token.encode())


def query_token_matches(given: str, token: str) -> bool:
    return bool(token and given) and hmac.compare_digest(given.encode(), token.encode())


def make_link(token: str, base_url: str = "", *, now: float | None = None) -> str:
    """A debugger link valid for LINK_SECONDS from `now`."""
    value = _Signer(token, "shoprelay.debug-link", now).sign(b"debug").decode("ascii")
    return f"{base_url.rstrip('/')}{COOKIE_PATH}?link={value}"


def link_valid(value: str, token: str) -> bool:
    return _valid(value, token, "shoprelay.debug-link", LINK_SECONDS)


def make_session(token: str) -> str:
    return _Signer(token, "shoprelay.debug-session").sign(b"debug").decode("ascii")


def session_valid(value: str | None, token: str) -> bool:
    return bool(value) and _valid(value or "", token, "shoprelay.debug-session",
                                  SESSION_SECONDS)


def session_cookie(token: str, *, secure: bool) -> str:
    parts = [f"{COOKIE_NAME}={make_session(token)}", f"Path={COOKIE_PATH}",
             f"Max-Age={SESSION_SECONDS}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _valid(value: str, token: str, salt: str, max_age: int) -> bool:
    if not token or not value:
        return False
    try:
        _Signer(token, salt).unsign(value, max_age=max_age)
    except (SignatureExpired, BadSignature):
        return False
    return True
