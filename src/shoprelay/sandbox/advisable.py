"""Advisable sandbox: enforces vendor-docs/advisable-interactions.md.

The document names the interaction types, their fields and the batch and transfer endpoints, but
no base URL, auth headers, status codes or limits. Its field notation (`Optional[str]`) is
Python's, so the sandbox answers as a FastAPI service most plausibly would:

- where the document is silent the sandbox accepts every reasonable reading, not only the
  relay's defaults: each type's path singular or plural (`view`/`views`, `cart_addition`,
  `cart-additions`, ...), `POST /v1/purchase(s)/batch`, the transfer by POST, PUT or PATCH
  with `delete_user` in the query or a JSON body; any other path is 404;
- auth is an id/secret header pair (`x-app-id`/`x-app-secret`, `app-id`/`app-secret`,
  `x-application-id`/..., `x-client-id`/...) or the secret as `Authorization: Bearer` beside
  an id header, with the demo values; missing or wrong: 401;
- a body that is not JSON or not `application/json`, a missing required field, a wrong type, an
  unknown field, `value` outside 0–5, or an empty or oversize batch: 422 with the reason
  (FastAPI's validation code);
- `user_id` and `item_id` are non-empty strings, `recommendation_id` a string; `timestamp` epoch
  milliseconds as a digit string or a whole number (the document allows both), and one that
  looks like seconds (before 1973 read as ms) is refused; `price` ≥ 0, `amount` > 0 and
  `duration` ≥ 0 are numbers. The document says they "are all optional and are used only in
  some interactions as you can find in docs" without saying which: they are accepted on every
  interaction (`value` "only exists in ratings payload", so it is refused elsewhere);
- a batch holds at most `max_batch` (100) purchases: the document gives no cap, this is ours;
- `delete_user` is a query flag (FastAPI's reading of a bool parameter); transferring a user to
  itself is 422; a guest Advisable never saw transfers nothing and still answers 200, because a
  visitor who logs in before any product interaction is the common case;
- creates answer 201 with what was stored, the transfer 200 `{"transferred": n,
  "user_deleted": bool}`;
- more than `per_second` calls a second per app id is 429 with Retry-After.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shoprelay.sandbox.base import (
    DEMO_KEY,
    Handler,
    Refusal,
    Sandbox,
    SandboxState,
    SlidingWindow,
    json_response,
)

APP_ID = "sandbox-app"
#: The basic properties, and the optional ones ("price", "amount", "duration": "used only in
#: some interactions as you can find in docs", which do not say which): every interaction.
_BASE = {"user_id", "item_id", "timestamp", "recommendation_id", "price", "amount", "duration"}
#: interaction path → fields it accepts beyond those (`value` is required on ratings).
INTERACTIONS: dict[str, set[str]] = {
    "views": set(),
    "cart_additions": set(),
    "bookmarks": set(),
    "ratings": {"value"},
    "purchases": set(),
}
#: Every reasonable spelling of each type's path (the document names "cart addition",
#: "bookmark", ... but not the path segment): singular or plural, `_` or `-` or nothing.
ALIASES: dict[str, str] = {}
for _plural, _names in {
    "views": ("view", "views"),
    "cart_additions": ("cart_addition", "cart_additions", "cart-addition", "cart-additions",
                       "cartaddition", "cartadditions", "cart", "carts"),
    "bookmarks": ("bookmark", "bookmarks"),
    "ratings": ("rating", "ratings"),
    "purchases": ("purchase", "purchases"),
}.items():
    for _name in _names:
        ALIASES[_name] = _plural
#: Header pairs a service like this plausibly reads (id, secret); the relay's default first.
HEADER_PAIRS = (("x-app-id", "x-app-secret"), ("app-id", "app-secret"),
                ("x-application-id", "x-application-secret"), ("x-client-id", "x-client-secret"))
#: Epoch milliseconds below this are seconds by mistake (it is early 1973 read as ms).
_MIN_MS = 100_000_000_000
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_interaction(kind: str, body: Any, where: str = "body") -> None:
    """Refuse (422) an interaction that does not match the document's fields and types."""
    if not isinstance(body, dict):
        raise Refusal(422, f"{where}: expected a JSON object")
    allowed = _BASE | INTERACTIONS[kind]
    unknown = set(body) - allowed
    if unknown:
        raise Refusal(422, f"{where}: unknown fields {sorted(unknown)} for {kind}")
    required = ("user_id", "item_id", "value") if kind == "ratings" else ("user_id", "item_id")
    for key in required:
        if body.get(key) is None:
            raise Refusal(422, f"{where}.{key}: field required")
    for key in ("user_id", "item_id"):
        if not isinstance(body[key], str) or not body[key]:
            raise Refusal(422, f"{where}.{key}: must be a non-empty string, got {body[key]!r}")
    if "recommendation_id" in body and not isinstance(body["recommendation_id"], str):
        raise Refusal(422, f"{where}.recommendation_id: must be a string")
    if "timestamp" in body:
        stamp = body["timestamp"]
        if isinstance(stamp, str) and stamp.isdigit():
            stamp = int(stamp)
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            raise Refusal(422, f"{where}.timestamp: must be epoch ms, got {body['timestamp']!r}")
        if stamp < _MIN_MS:
            raise Refusal(422, f"{where}.timestamp: {stamp} looks like seconds, not milliseconds")
    if "value" in body:
        if not _is_number(body["value"]):
            raise Refusal(422, f"{where}.value: must be a number, got {body['value']!r}")
        if not 0 <= body["value"] <= 5:
            raise Refusal(422, f"{where}.value: must be between 0 and 5, got {body['value']}")
    for key, low, strict in (("price", 0, False), ("amount", 0, True), ("duration", 0, False)):
        if key not in body:
            continue
        value = body[key]
        if not _is_number(value):
            raise Refusal(422, f"{where}.{key}: must be a number, got {value!r}")
        if value < low or (strict and value == low):
            raise Refusal(422, f"{where}.{key}: out of range: {value}")


class AdvisableSandbox(Sandbox):
    name = "advisable"

    def __init__(self, app_id: str = APP_ID, app_secret: str = DEMO_KEY,
                 per_second: int = 20, max_batch: int = 100) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.per_second = per_second
        self.max_batch = max_batch

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        limiter = SlidingWindow(self.per_second, 1.0)
        #: user → number of interactions stored, so a transfer can say what it moved.
        counts: dict[str, int] = {}

        def admit(request: Request) -> None:
            # The document names no header: any plausible pair, or the secret as a bearer
            # token beside an id header, is accepted (docs/vendors/advisable.md lists the
            # guess under "confirm before going live").
            headers = request.headers
            bearer = headers.get("authorization", "")
            secret_ok = any(headers.get(i) == self.app_id and headers.get(s) == self.app_secret
                            for i, s in HEADER_PAIRS)
            bearer_ok = (bearer == f"Bearer {self.app_secret}"
                         and any(headers.get(i) == self.app_id for i, _ in HEADER_PAIRS))
            if not (secret_ok or bearer_ok):
                raise Refusal(401, "app id / secret headers missing or invalid")
            wait = limiter.hit(self.app_id)
            if wait is not None:
                raise Refusal(429, "more requests a second than this app may send",
                              {"Retry-After": str(max(1, round(wait)))})

        def json_body(request: Request, raw: bytes) -> Any:
            if "application/json" not in request.headers.get("content-type", ""):
                raise Refusal(422, "body: expected application/json")
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise Refusal(422, f"body: not valid JSON: {exc}") from None

        async def create(request: Request, raw: bytes) -> Response:
            kind = ALIASES.get(request.path_params["interaction"], "")
            if kind not in INTERACTIONS:
                raise Refusal(404, f"Not Found: no interaction type "
                                   f"{request.path_params['interaction']!r}")
            admit(request)
            body = json_body(request, raw)
            check_interaction(kind, body)
            counts[body["user_id"]] = counts.get(body["user_id"], 0) + 1
            return json_response(body, 201)

        async def batch(request: Request, raw: bytes) -> Response:
            if ALIASES.get(request.path_params["purchases"]) != "purchases":
                raise Refusal(404, "Not Found: only purchases have a batch endpoint")
            admit(request)
            body = json_body(request, raw)
            if not isinstance(body, list) or not body:
                raise Refusal(422, "body: purchases/batch takes a non-empty JSON array")
            if len(body) > self.max_batch:
                raise Refusal(422, f"body: at most {self.max_batch} purchases a batch, "
                                   f"got {len(body)}")
            for i, purchase in enumerate(body):
                check_interaction("purchases", purchase, f"body[{i}]")
            for purchase in body:
                counts[purchase["user_id"]] = counts.get(purchase["user_id"], 0) + 1
            return json_response(body, 201)

        async def transfer(request: Request, raw: bytes) -> Response:
            admit(request)
            source = request.path_params["from_user_id"]
            target = request.path_params["to_user_id"]
            if source == target:
                raise Refusal(422, "from_user_id and to_user_id are the same user")
            flag = request.query_params.get("delete_user")
            if flag is None and raw:
                # The flag may come as a JSON body too: the document does not say which.
                try:
                    sent = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    sent = None
                if isinstance(sent, dict) and "delete_user" in sent:
                    flag = str(sent["delete_user"])
            flag = (flag or "true").lower()
            if flag not in _TRUE | _FALSE:
                raise Refusal(422, f"delete_user: must be a boolean, got {flag!r}")
            moved = counts.pop(source, 0)
            counts[target] = counts.get(target, 0) + moved
            return json_response({"transferred": moved, "user_deleted": flag in _TRUE})

        async def unknown(request: Request, raw: bytes) -> Response:
            raise Refusal(404, "Not Found")

        def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def run(request: Request) -> Response:
                return await sandbox.handle(request, handler)
            return run

        return [
            Route("/v1/{purchases:str}/batch", endpoint(batch), methods=["POST"]),
            # The document names the path, not the method: POST, PUT and PATCH all work.
            Route("/v1/users/{from_user_id}/interactions/transfer/{to_user_id}",
                  endpoint(transfer), methods=["POST", "PUT", "PATCH"]),
            Route("/v1/{interaction}", endpoint(create), methods=["POST"]),
            # Recorded, so a wrong path setting shows up on the demo page as a refusal.
            Route("/{rest:path}", endpoint(unknown), methods=["GET", "POST", "PUT", "DELETE"]),
        ]

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "app_id": self.app_id, "app_secret": self.app_secret}


SANDBOX = AdvisableSandbox()
