"""Retail Rocket sandbox: enforces vendor-docs/retailrocket-tracking.md.

Auth is `apiKey` + `partnerId` in the query (401 on a wrong key, as the document's codes say);
each method's body is checked for its required fields and types (400 with the reason); an
unknown method is 404. Fields a method's table does not name are accepted (the document does
not forbid them) and listed on the record, so a misnamed field still shows on the demo page.
The document names a limit of 50 requests a second per shop but no code for exceeding it: the
sandbox answers 429 with Retry-After, as HTTP APIs do.
"""

from __future__ import annotations

import re
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

PARTNER_ID = "sandbox-partner"

_S, _I, _N, _NA = "string", "integer", "number", "number array"
_SESSION = {"sessionExternalId": (True, _S), "timestamp": (True, _S)}
_STOCK = {"stockId": (False, _S)}
#: method → {field: (required, type)}, from the document's tables.
SCHEMAS: dict[str, dict[str, tuple[bool, str]]] = {
    "view": {**_SESSION, "productId": (True, _I), **_STOCK},
    # "productIds | Да | number array" (every other product id is "integer").
    "groupView": {**_SESSION, "groupId": (True, _I), "productIds": (True, _NA), **_STOCK},
    "addToBasket": {**_SESSION, "productId": (True, _I), **_STOCK},
    "categoryView": {**_SESSION, "categoryId": (True, _I)},
    "order": {**_SESSION, "productId": (True, _I), **_STOCK, "price": (True, _N),
              "quantity": (True, _N), "transaction": (True, _S)},
    "search": {**_SESSION, "searchPhrase": (True, _S), **_STOCK},
    # The document types email as integer; an address is a string, so a string is accepted.
    "setContact": {**_SESSION, "contactExternalId": (True, _S), "email": (False, _S),
                   **_STOCK, "phone": (False, _S), "customData": (False, _S)},
    "recomBlockViewed": {**_SESSION, "recomBlockId": (True, _S)},
    "recomTap": {**_SESSION, "productId": (True, _I), **_STOCK, "recomBlockId": (True, _S)},
    "recomAddToBasket": {**_SESSION, "productId": (True, _I), **_STOCK,
                         "recomBlockId": (True, _S)},
    "impressionContentViewed": {**_SESSION, "impressionContentId": (True, _S)},
    "impressionContentClicked": {**_SESSION, "impressionContentId": (True, _S)},
}
#: Envelopes the visitorEvents batch accepts (setContact is not one of them).
BATCH_METHODS = frozenset(SCHEMAS) - {"setContact"}
_CONTACT_ID = re.compile(r"^[A-Za-z0-9]{1,50}$")


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _S:
        return isinstance(value, str)
    if kind == _I:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _N:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == _NA:
        return isinstance(value, list) and all(_type_ok(v, _N) for v in value)
    return False


def check_event(method: str, body: Any, where: str = "body",
                notes: list[str] | None = None) -> None:
    """Refuse (400) a body that does not match the method's table in the document; fields the
    table does not name are added to `notes`."""
    if not isinstance(body, dict):
        raise Refusal(400, f"{where}: expected a JSON object")
    schema = SCHEMAS[method]
    for key, (required, kind) in schema.items():
        if key not in body:
            if required:
                raise Refusal(400, f"{where}: {key} is required")
            continue
        if not _type_ok(body[key], kind):
            raise Refusal(400, f"{where}: {key} must be {kind}, got {body[key]!r}")
    unknown = set(body) - set(schema)
    if unknown and notes is not None:
        notes.append(f"{where}: fields the document does not name, ignored: {sorted(unknown)}")
    try:
        stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(400, f"{where}: timestamp is not ISO-8601: {body['timestamp']!r}") from None
    if stamp.tzinfo is None:
        raise Refusal(400, f"{where}: timestamp needs a UTC offset: {body['timestamp']!r}")
    if not body["sessionExternalId"]:
        raise Refusal(400, f"{where}: sessionExternalId is empty")
    if method == "setContact" and not _CONTACT_ID.match(body["contactExternalId"]):
        raise Refusal(400, f"{where}: contactExternalId must be 1-50 letters and digits")
    for key in ("recomBlockId",):
        if key in body and len(body[key]) > 50:
            raise Refusal(400, f"{where}: {key} is longer than 50 characters")


class RetailRocketSandbox(Sandbox):
    name = "retailrocket"

    def __init__(self, api_key: str = DEMO_KEY, partner_id: str = PARTNER_ID,
                 per_second: int = 50) -> None:
        self.api_key = api_key
        self.partner_id = partner_id
        self.per_second = per_second

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        limiter = SlidingWindow(self.per_second, 1.0)

        async def call(request: Request, raw: bytes) -> Response:
            method = request.path_params["method"]
            if method not in SCHEMAS and method != "visitorEvents":
                raise Refusal(404, f"no such resource: {method}")
            if request.query_params.get("apiKey") != self.api_key:
                raise Refusal(401, "apiKey is missing or wrong")
            partner = request.query_params.get("partnerId")
            if partner != self.partner_id:
                raise Refusal(403, "partnerId is missing or not this key's shop")
            wait = limiter.hit(partner)
            if wait is not None:
                raise Refusal(429, "more than the shop's requests per second",
                              {"Retry-After": str(max(1, round(wait)))})
            if "application/json" not in request.headers.get("content-type", ""):
                raise Refusal(400, "Content-type must be application/json")
            body = parse_json_body(raw)
            notes: list[str] = []
            if method == "visitorEvents":
                if not isinstance(body, list) or not body:
                    raise Refusal(400, "visitorEvents takes a non-empty JSON array")
                for i, envelope in enumerate(body):
                    if not isinstance(envelope, dict) or len(envelope) != 1:
                        raise Refusal(400, f"[{i}]: an envelope has exactly one event key")
                    (kind, event), = envelope.items()
                    if kind not in BATCH_METHODS:
                        raise Refusal(400, f"[{i}]: {kind} is not a visitorEvents type")
                    check_event(kind, event, f"[{i}].{kind}", notes)
            else:
                check_event(method, body, notes=notes)
            if notes:
                request.state.sandbox_note = "; ".join(notes)
            return json_response({})

        async def endpoint(request: Request) -> Response:
            return await sandbox.handle(request, call)

        return [Route("/1.0/{method}", endpoint, methods=["POST"])]

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": f"{base_url}/1.0", "partner_id": self.partner_id,
                "api_key": self.api_key}


SANDBOX = RetailRocketSandbox()
