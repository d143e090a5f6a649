"""Vendor sandboxes: one real HTTP server holding every vendor's sandbox under `/<vendor>`.

`create_app()` mounts each module's `SANDBOX` at `/<name>` and adds the inspection routes:

- `GET /_sandbox/<name>/requests` — what the sandbox received (`?accepted=1` / `?refused=1`)
- `DELETE /_sandbox/requests` — forget everything (tests start clean)
- `POST /_sandbox/<name>/faults` — queue a fault: `{"kind": "status"|"hang"|"close"|"delay"|"waf",
  "status": 503, "retry_after": 2, "count": 5, "hang_seconds": 30, "headers": {...},
  "matches": ["..."]}` (`matches`: only requests whose body contains one of them; `"waf"`
  with `"status": 403` refuses those with a firewall's page until cleared, the rest pass);
  `DELETE` clears them; `GET` lists them, how many requests are in flight and the bodies a
  delay or hang holds (`held`)
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router

from shoprelay.sandbox.base import Fault, Sandbox, SandboxState, json_response

_NOT_SANDBOXES = {"base"}


def _discover() -> dict[str, Sandbox]:
    found: dict[str, Sandbox] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _NOT_SANDBOXES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        sandbox = getattr(module, "SANDBOX", None)
        if isinstance(sandbox, Sandbox):
            found[sandbox.name] = sandbox
    return found


SANDBOXES: dict[str, Sandbox] = _discover()


def create_app(vendors: list[str] | None = None) -> Starlette:
    """One Starlette app with the sandboxes of `vendors` (default: all) mounted by name."""
    names = list(SANDBOXES) if vendors is None else vendors
    states = {name: SandboxState(name) for name in names}

    async def list_requests(request: Request) -> Response:
        state = states.get(request.path_params["vendor"])
        if state is None:
            return json_response({"error": "no such sandbox"}, 404)
        records = state.records
        if request.query_params.get("accepted"):
            records = [r for r in records if r.accepted]
        if request.query_params.get("refused"):
            records = [r for r in records if not r.accepted]
        return json_response([r.to_dict() for r in records])

    async def list_all(request: Request) -> Response:
        return json_response({name: [r.to_dict() for r in s.records] for name, s in states.items()})

    async def clear(request: Request) -> Response:
        for state in states.values():
            state.clear()
        return Response(status_code=204)

    async def faults(request: Request) -> Response:
        state = states.get(request.path_params["vendor"])
        if state is None:
            return json_response({"error": "no such sandbox"}, 404)
        if request.method == "DELETE":
            state.faults.clear()
            return Response(status_code=204)
        if request.method == "GET":
            return json_response({"faults": [dataclasses.asdict(f) for f in state.faults],
                                  "in_flight": state.in_flight, "held": state.held})
        spec: dict[str, Any] = orjson.loads(await request.body() or b"{}")
        state.faults.append(Fault(**spec))
        return Response(status_code=204)

    routes: list[Any] = [
        Route("/_sandbox/requests", list_all, methods=["GET"]),
        Route("/_sandbox/requests", clear, methods=["DELETE"]),
        Route("/_sandbox/{vendor}/requests", list_requests, methods=["GET"]),
        Route("/_sandbox/{vendor}/faults", faults, methods=["GET", "POST", "DELETE"]),
    ]
    for name in names:
        routes.append(Mount(f"/{name}", app=Router(SANDBOXES[name].routes(states[name]))))
    app = Starlette(routes=routes)
    app.state.sandboxes = states
    return app


def demo_vendor_settings(base_url: str, vendors: list[str] | None = None) -> dict[str, Any]:
    """Vendor tables pointing a site at the sandboxes served at `base_url`."""
    names = list(SANDBOXES) if vendors is None else vendors
    base = base_url.rstrip("/")
    return {name: SANDBOXES[name].demo_settings(f"{base}/{name}") for name in names}
