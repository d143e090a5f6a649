"""The first-party visitor cookie (`sc` by default): a random id, signed, HttpOnly.

The tracker never sees or sets it; the relay reads it on every request and sets it on every
answer (refreshing its two-year lifetime). A missing, tampered or foreign cookie is not an error:
the visitor simply gets a new id, because refusing events over a cookie would lose data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from itsdangerous import BadSignature, Signer

_VISITOR_ID = re.compile(r"^[0-9a-f]{32}$")


def new_visitor_id() -> str:
    """32 lowercase hex characters: fits every vendor (Retail Rocket: letters/digits, ≤ 50)."""
    return secrets.token_hex(16)


class VisitorCookie:
    def __init__(self, secret: str, name: str = "sc", max_age_days: int = 730) -> None:
        self.name = name
        self.max_age = max_age_days * 86400
        self._signer = Signer(secret, salt="shoprelay.visitor-cookie")
        self._alias_key = hashlib.sha256(b"shoprelay.anonymous-id\0" + secret.encode()).digest()

    def read(self, value: str | None) -> str | None:
        """The visitor id in a cookie value, or None if absent, tampered or malformed."""
        if not value:
            return None
        try:
            visitor = self._signer.unsign(value).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None
        return visitor if _VISITOR_ID.match(visitor) else None

    def value_for(self, visitor_id: str) -> str:
        return self._signer.sign(visitor_id).decode("ascii")

    def header(self, visitor_id: str, *, secure: bool) -> str:
        """A Set-Cookie header value."""
        parts = [
            f"{self.name}={self.value_for(visitor_id)}",
            "Path=/",
            f"Max-Age={self.max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)

    def visitor_for_anonymous_id(self, site: str, anonymous_id: str) -> str:
        """A stable visitor id for a client `anonymousId` seen without a cookie.

        Derived with a keyed hash so the same anonymousId always maps to the same visitor (a
        server library or a credential-less cross-site fetch stays one visitor) while nobody
        without the secret can predict or forge the mapping.
        """
        digest = hmac.new(self._alias_key, f"{site}\0{anonymous_id}".encode(), "sha256")
        return digest.hexdigest()[:32]
