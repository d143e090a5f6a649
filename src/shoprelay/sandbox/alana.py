"""Alana sandbox: enforces vendor-docs/alana-events.md.

`POST /api/v1/events` with the key in the `x-api-key` header or the `key` query parameter
(the header wins when both are given, as `req.headers[...] || req.query.key` would); no or a
wrong key is 401. The document's limits are played as sliding one-minute windows, per key and
per key + client IP, checked after auth (an unauthenticated request names no key to count).

Where the document is silent, the sandbox does what a service with this answer shape most
plausibly does, and is strict where strictness catches adapter bugs:

- The request as a whole is refused with 400 when it is not `application/json`, not a JSON
  object with an `events` array, empty, or longer than the documented 100 events.
- Each event is validated on its own: a bad event does not fail the request, it counts in
  `errors` and the good ones in `stored` (that is what the answer's two counts imply). The
  record's `error` names each refused event by index with its reason, since the answer does
  not.
- Per event: `eventType` one of the seven ("One of the 7 event types listed above"),
  `visitorId` a non-empty string, `userId` a string, `metadata` an object (the "Common
  Fields" table), and the type's "Required Fields" present. The document gives those no
  types, so every reasonable reading passes: `query`, `categoryPath`, `currency` non-empty
  strings; `productId` a non-empty string (its examples) or an integer; `productIds` a
  non-empty array of those; `revenue` a number.
- A field the document does not name for the type is accepted and stored: the table lists
  *required* fields, not the only ones allowed (an earlier version refused them, which the
  document does not). The record names them ("ignored fields"), so a misspelt field is still
  seen; tests/test_partial_refusals.py checks the relay sends only the named ones.
- Every stored event is counted (`SandboxState.keep`): Alana documents no de-duplication, so a
  second copy is stored again, and the record says so (`copies`, and in `error`).
- Past a limit: 429 with `X-RateLimit-Limit`, `X-RateLimit-Remaining: 0`, `X-RateLimit-Reset`
  as a Unix time in seconds (the Express/GitHub convention) and `Retry-After` in seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shoprelay.sandbox.base import (
    DEMO_KEY,
    Refusal,
    Sandbox,
    SandboxState,
    SlidingWindow,
    json_response,
    parse_json_body,
)

MAX_EVENTS = 100
_COMMON = ("eventType", "visitorId", "userId", "metadata")
#: eventType → its required fields beyond visitorId (the document's table).
REQUIRED: dict[str, tuple[str, ...]] = {
    "home-page-view": (),
    "search": ("query",),
    "category-view": ("categoryPath",),
    "detail-page-view": ("productId",),
    "add-to-cart": ("productId",),
    "shopping-cart-page-view": (),
    "purchase-complete": ("productIds", "revenue", "currency"),
}


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _product(value: Any) -> bool:
    return _non_empty_string(value) or (isinstance(value, int) and not isinstance(value, bool))


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


_CHECKS: dict[str, tuple[Any, str]] = {
    "query": (_non_empty_string, "a non-empty string"),
    "categoryPath": (_non_empty_string, "a non-empty string"),
    "productId": (_product, "a non-empty string or an integer"),
    "currency": (_non_empty_string, "a non-empty string"),
    "productIds": (lambda v: isinstance(v, list) and bool(v) and all(_product(i) for i in v),
                   "a non-empty array of strings or integers"),
    "revenue": (_number, "a number"),
}


def event_problem(event: Any) -> str | None:
    """Why Alana would not store this event, or None if it would."""
    if not isinstance(event, dict):
        return "an event must be a JSON object"
    kind = event.get("eventType")
    if kind not in REQUIRED:
        return f"eventType must be one of {', '.join(REQUIRED)}, got {kind!r}"
    if not _non_empty_string(event.get("visitorId")):
        return "visitorId is required (a non-empty string)"
    if "userId" in event and not _non_empty_string(event["userId"]):
        return f"userId must be a non-empty string, got {event['userId']!r}"
    if "metadata" in event and not isinstance(event["metadata"], dict):
        return f"metadata must be an object, got {event['metadata']!r}"
    for key in REQUIRED[kind]:
        if key not in event:
            return f"{kind}: {key} is required"
        check, kind_text = _CHECKS[key]
        if not check(event[key]):
            return f"{kind}: {key} must be {kind_text}, got {event[key]!r}"
    return None


def unnamed_fields(event: Any) -> list[str]:
    """Fields of a stored event that the document does not name for its type (kept, shown)."""
    if not isinstance(event, dict) or event.get("eventType") not in REQUIRED:
        return []
    return sorted(set(event) - set(_COMMON) - set(REQUIRED[event["eventType"]]))


class AlanaSandbox(Sandbox):
    name = "alana"

    def __init__(self, api_key: str = DEMO_KEY, per_key: int = 1000, per_ip: int = 100) -> None:
        self.api_key = api_key
        self.per_key = per_key
        self.per_ip = per_ip

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        key_window = SlidingWindow(self.per_key, 60.0)
        ip_window = SlidingWindow(self.per_ip, 60.0)

        def limited(limit: int, wait: float, scope: str) -> Refusal:
            wait = max(1, math.ceil(wait))
            return Refusal(429, f"rate limit: more than {limit} requests a minute per {scope}", {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(math.ceil(time.time()) + wait),
                "Retry-After": str(wait),
            })

        async def call(request: Request, raw: bytes) -> Response:
            key = request.headers.get("x-api-key") or request.query_params.get("key")
            if not key:
                raise Refusal(401, "API key missing: send x-api-key or ?key=")
            if key != self.api_key:
                raise Refusal(401, "API key is not valid")
            ip = request.client.host if request.client else "unknown"
            wait = key_window.hit(key)
            if wait is not None:
                raise limited(self.per_key, wait, "API key")
            wait = ip_window.hit(f"{key}|{ip}")
            if wait is not None:
                raise limited(self.per_ip, wait, "API key and IP")
            if "application/json" not in request.headers.get("content-type", ""):
                raise Refusal(400, "Content-Type must be application/json")
            body = parse_json_body(raw)
            if not isinstance(body, dict) or not isinstance(body.get("events"), list):
                raise Refusal(400, 'body must be a JSON object with an "events" array')
            events = body["events"]
            if not events:
                raise Refusal(400, "events must not be empty")
            if len(events) > MAX_EVENTS:
                raise Refusal(400, f"at most {MAX_EVENTS} events a request, got {len(events)}")
            problems = [(i, event_problem(e)) for i, e in enumerate(events)]
            injected = getattr(request.state, "refuse_matches", None) or []
            if injected:
                problems = [(i, p if p is not None or not any(
                    m in orjson.dumps(events[i]).decode() for m in injected)
                    else "injected fault: event refused") for i, p in problems]
            refused = [f"events[{i}]: {p}" for i, p in problems if p is not None]
            notes = []
            if refused:
                # The answer only counts; the record says which events and why.
                notes.append(f"{len(refused)} of {len(events)} events refused: "
                             + "; ".join(refused))
            ignored = [f"events[{i}]: {fields}" for i, p in problems
                       if p is None and (fields := unnamed_fields(events[i]))]
            if ignored:
                notes.append("ignored fields " + "; ".join(ignored))
            if notes:
                request.state.sandbox_note = "; ".join(notes)
            sandbox.keep(request, [(i, events[i]) for i, p in problems if p is None])
            return json_response({"status": "ok", "stored": len(events) - len(refused),
                                  "errors": len(refused)})

        async def endpoint(request: Request) -> Response:
            return await sandbox.handle(request, call)

        return [Route("/api/v1/events", endpoint, methods=["POST"])]

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "api_key": self.api_key}


SANDBOX = AlanaSandbox()
