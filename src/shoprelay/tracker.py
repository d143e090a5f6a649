"""Serving the browser tracker at `/s.js` (and at a path the site chose): the built, minified
file, cacheable with an ETag; and the Shopify custom pixel a shop copies from
`/shopify-pixel.js?key=WRITE_KEY`, with the relay's address and its write key filled in.

The file is built from static/tracker.js with esbuild at development time and committed, so
the relay needs no Node.js; it is read once at start-up.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoprelay.proxies import TrustedProxies
from shoprelay.settings import OPAQUE_ORIGIN, Settings

_FILE = "tracker.min.js"
_PIXEL_FILE = "shopify-pixel.js"


def tracker_path(name: str = _FILE) -> Path:
    """A file of static/: the repo's in a checkout, else the copy inside the wheel."""
    in_checkout = Path(__file__).resolve().parents[2] / "static" / name
    if in_checkout.exists():
        return in_checkout
    return Path(str(resources.files("shoprelay") / "_static" / name))


class TrackerScript:
    def __init__(self, path: Path | None = None) -> None:
        self.body = (path or tracker_path()).read_bytes()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    async def serve(self, request: Request) -> Response:
        headers = {
            "ETag": self.etag,
            # Short enough that a new release reaches shops within the hour, long enough that a
            # browsing session loads it once; revalidation is a cheap 304.
            "Cache-Control": "public, max-age=3600, stale-while-revalidate=86400",
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, headers=headers,
                        media_type="application/javascript; charset=utf-8")

    def route(self, path: str = "/s.js") -> Route:
        return Route(path, self.serve, methods=["GET", "HEAD"])

    def routes(self, path_prefix: str = "", tracker_file: str = "s.js") -> list[Route]:
        """/s.js, and the path a site chose (`relay.path_prefix` + `relay.tracker_file`)."""
        paths = dict.fromkeys(["/s.js", f"{path_prefix}/{tracker_file}"])
        return [self.route(path) for path in paths]


class ShopifyPixel:
    """`GET /shopify-pixel.js?key=WRITE_KEY`: static/shopify-pixel.js as the shop pastes it
    into Shopify's Customer events, naming this relay (as the request reached it) and the
    site. Not cached: it is copied by a person, once, and must name the current address."""

    def __init__(self, settings: Settings, path: Path | None = None) -> None:
        self.settings = settings
        self.template = (path or tracker_path(_PIXEL_FILE)).read_text("utf-8")
        self.proxies = TrustedProxies(settings.relay.trusted_proxies)

    async def serve(self, request: Request) -> Response:
        key = request.query_params.get("key") or request.query_params.get("writeKey")
        if not key:
            return _text(400, "give the site's write key: /shopify-pixel.js?key=WRITE_KEY")
        site = self.settings.site_for_key(key)
        if site is None:
            return _text(404, "no site of this relay has that write key")
        body = self.template
        if site.allowed_origins and OPAQUE_ORIGIN not in site.allowed_origins:
            # Shopify runs the pixel in a sandboxed frame whose Origin is "null": say so
            # where the shop developer will read it, rather than let every event get a 403.
            body = (f"// NOTE for the relay's operator: site {site.name!r} does not list "
                    f'"{OPAQUE_ORIGIN}" in allowed_origins,\n// so the relay refuses this '
                    "pixel's events (403) until it does (docs/platforms.md, Shopify custom "
                    "pixel).\n" + body)
        # JSON string literals: the address comes from the request's Host header.
        body = (body.replace('"__SHOPRELAY_ENDPOINT__"', json.dumps(self._endpoint(request)))
                .replace('"__SHOPRELAY_WRITE_KEY__"', json.dumps(key)))
        return Response(body, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff"})

    def _endpoint(self, request: Request) -> str:
        """The relay's base address as the browser should post to it: the request's own,
        with X-Forwarded-Proto / X-Forwarded-Host believed from trusted proxies only."""
        scheme, host = request.url.scheme, request.headers.get("host", request.url.netloc)
        proto = self.proxies.forwarded(request, "x-forwarded-proto")
        scheme = proto if proto in ("http", "https") else scheme
        host = self.proxies.forwarded(request, "x-forwarded-host") or host
        return f"{scheme}://{host}{self.settings.relay.path_prefix}"

    def routes(self) -> list[Route]:
        """At the root and under `relay.path_prefix`, as the tracker."""
        paths = dict.fromkeys(["/shopify-pixel.js",
                               f"{self.settings.relay.path_prefix}/shopify-pixel.js"])
        return [Route(path, self.serve, methods=["GET", "HEAD"]) for path in paths]


def _text(status: int, reason: str) -> Response:
    return Response(reason + "\n", status, media_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "no-store"})
