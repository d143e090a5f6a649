"""The first-party visitor cookie (`sc` by default): a random id, signed, HttpOnly.

The tracker never sees or sets it; the relay reads it on every request and sets it on every
answer (refreshing its two-year lifetime). A missing, tampered or foreign cookie is not an error:
the visitor simply gets a new id, because refusing events over a cookie would lose data.

The signature is bound to the site: one relay may serve several shops, and a cookie one of them
was given must not carry a visitor into another (each site's signing key is derived from the
secret and the site's name).
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
    def __init__(self, secret: str, name: str = "sc", max_age_days: int = 730, *,
                 accept_unbound: bool = False) -> None:
        """`accept_unbound`: also read cookies signed before signatures named the site (for a
        relay serving one site, where they cannot cross into another; they are re-issued
        bound on the next answer)."""
        self.name = name
        self.max_age = max_age_days * 86400
        self._secret = secret
        self._signers: dict[str, Signer] = {}
        self._unbound = Signer(secret, salt="shoprelay.visitor-cookie") if accept_unbound else None
        self._alias_key = hashlib.sha256(b"shoprelay.anonymous-id\0" + secret.encode()).digest()

    def _signer(self, site: str) -> Signer:
        signer = self._signers.get(site)
        if signer is None:
            signer = Signer(self._secret, salt=f"shoprelay.visitor-cookie\0{site}")
            self._signers[site] = signer
        return signer

    def read(self, value: str | None, site: str) -> str | None:
        """The visitor id in a cookie value given for `site`, or None if absent, tampered,
        malformed or signed for another site."""
        if not value:
            return None
        visitor: str | None
        try:
            visitor = self._signer(site).unsign(value).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            visitor = self._read_unbound(value)
        return visitor if visitor and _VISITOR_ID.match(visitor) else None

    def _read_unbound(self, value: str) -> str | None:
        if self._unbound is None:
            return None
        try:
            return self._unbound.unsign(value).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None

    def value_for(self, visitor_id: str, site: str) -> str:
        return self._signer(site).sign(visitor_id).decode("ascii")

    def header(self, visitor_id: str, site: str, *, secure: bool, domain: str = "") -> str:
        """A Set-Cookie header value; with `domain`, the cookie is also the shop's other
        hosts' under it (without, browsers keep it for the answering host alone)."""
        parts = [
            f"{self.name}={self.value_for(visitor_id, site)}",
            "Path=/",
            f"Max-Age={self.max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if domain:
            parts.append(f"Domain={domain}")
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
