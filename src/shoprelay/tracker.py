"""Serving the browser tracker at `/s.js` (and at a path the site chose): the built, minified
file, cacheable with an ETag.

The file is built from static/tracker.js with esbuild at development time and committed, so
the relay needs no Node.js; it is read once at start-up.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_FILE = "tracker.min.js"


def tracker_path() -> Path:
    """The built tracker: the repo's static/ in a checkout, else the copy inside the wheel."""
    in_checkout = Path(__file__).resolve().parents[2] / "static" / _FILE
    if in_checkout.exists():
        return in_checkout
    return Path(str(resources.files("shoprelay") / "_static" / _FILE))


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
