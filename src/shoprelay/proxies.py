"""Which peers' `X-Forwarded-*` headers the relay believes (`relay.trusted_proxies`).

Ingest (client address, `Secure` cookies), the operator routes (the debugger's cookie) and the
Shopify pixel (the relay's public address) all ask the same question of a request; one answer
keeps a proxy trusted in one place from being trusted differently in another.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import Request


class TrustedProxies:
    def __init__(self, networks: list[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, host: str | None) -> bool:
        """Whether `host` (an address as text) is one of the trusted proxies."""
        if not host or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._networks)

    def forwarded(self, request: Request, header: str) -> str:
        """The first value of an `X-Forwarded-*` header when the peer is trusted, else ""."""
        peer = request.client.host if request.client else None
        if not self.trusts(peer):
            return ""
        return request.headers.get(header, "").split(",")[0].strip()

    def is_https(self, request: Request) -> bool:
        """The request reached the relay over https, itself or through a trusted proxy."""
        return (request.url.scheme == "https"
                or self.forwarded(request, "x-forwarded-proto") == "https")
