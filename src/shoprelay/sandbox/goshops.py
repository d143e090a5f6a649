"""Go Shops sandbox: enforces vendor-docs/goshops-interactions.md.

`POST /feedback` answers 401 when `x-api-key` is missing or wrong, 400 when a required field
(`project`, `data.event`, `data.item`, `data.customer`, `data.date`) is missing or an event is
not one of `view`, `like`, `cart`, `purchase`, and 200 `{}` otherwise, which is every code the
document lists. Where it is silent the sandbox chooses:

- a `project` that is not the key's own project is 401 (the key authorises one project's calls);
- `item` and `customer` must be non-empty strings; `date` any reasonable reading of a date
  (the document gives no format): ISO-8601 date or date-time with or without an offset, or
  epoch seconds or milliseconds as a number or digit string;
- fields the document does not name are accepted (it does not forbid them, and the vendor
  most plausibly ignores them) and listed on the record, so a misnamed field still shows on
  the demo page without the request being refused;
- a body that is not JSON, or not sent as `application/json` (the document's body type), is 400;
- more than `per_second` calls a second for one key is 429 with Retry-After, as HTTP APIs do
  (the document gives no limit; the default matches the adapter's own ceiling).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

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

PROJECT = "sandbox-project"
EVENTS = frozenset({"view", "like", "cart", "purchase"})
_DATA_FIELDS = ("event", "item", "customer", "date")


def check_date(value: Any) -> None:
    """The document says `date` is required, not its format: every reasonable reading is
    accepted (ISO-8601 date or date-time, with or without an offset, `T` or a space; epoch
    seconds or milliseconds as a number or a digit string); anything else is 400."""
    if isinstance(value, bool):
        raise Refusal(400, f"data.date must be a date, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise Refusal(400, f"data.date must not be negative, got {value}")
        return
    if not isinstance(value, str) or not value.strip():
        raise Refusal(400, f"data.date must be a date string or epoch number, got {value!r}")
    text = value.strip()
    if text.isdigit():
        return
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(400, f"data.date is not a date: {value!r}") from None


def check_body(body: Any) -> list[str]:
    """Refuse (400) a body that is not the document's `{project, data: {…}}`; return notes on
    what was accepted but not named by the document (unknown fields)."""
    if not isinstance(body, dict):
        raise Refusal(400, "body must be a JSON object")
    for key in ("project", "data"):
        if key not in body:
            raise Refusal(400, f"{key} is required")
    notes = []
    unknown = set(body) - {"project", "data"}
    if unknown:
        notes.append(f"fields the document does not name, ignored: {sorted(unknown)}")
    if not isinstance(body["project"], str) or not body["project"]:
        raise Refusal(400, f"project must be a non-empty string, got {body['project']!r}")
    data = body["data"]
    if not isinstance(data, dict):
        raise Refusal(400, f"data must be an object, got {data!r}")
    for key in _DATA_FIELDS:
        if key not in data or data[key] is None:
            raise Refusal(400, f"data.{key} is required")
    unknown = set(data) - set(_DATA_FIELDS)
    if unknown:
        notes.append(f"data fields the document does not name, ignored: {sorted(unknown)}")
    if data["event"] not in EVENTS:
        raise Refusal(400, f"data.event must be one of {sorted(EVENTS)}, got {data['event']!r}")
    for key in ("item", "customer"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise Refusal(400, f"data.{key} must be a non-empty string, got {data[key]!r}")
    check_date(data["date"])
    return notes


class GoShopsSandbox(Sandbox):
    name = "goshops"

    def __init__(self, api_key: str = DEMO_KEY, project: str = PROJECT,
                 per_second: int = 20) -> None:
        self.api_key = api_key
        self.project = project
        self.per_second = per_second

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        limiter = SlidingWindow(self.per_second, 1.0)

        async def feedback(request: Request, raw: bytes) -> Response:
            key = request.headers.get("x-api-key")
            if key != self.api_key:
                raise Refusal(401, "x-api-key is missing or invalid")
            wait = limiter.hit(key)
            if wait is not None:
                raise Refusal(429, "more requests a second than this key may send",
                              {"Retry-After": str(max(1, round(wait)))})
            if "application/json" not in request.headers.get("content-type", ""):
                raise Refusal(400, "the body must be application/json")
            body = parse_json_body(raw)
            notes = check_body(body)
            if body["project"] != self.project:
                raise Refusal(401, f"x-api-key is not valid for project {body['project']!r}")
            if notes:
                request.state.sandbox_note = "; ".join(notes)
            return json_response({})

        async def endpoint(request: Request) -> Response:
            return await sandbox.handle(request, feedback)

        return [Route("/feedback", endpoint, methods=["POST"])]

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "project": self.project, "api_key": self.api_key}


SANDBOX = GoShopsSandbox()
