"""The baseline for bench/ingest.py: the least a Python ingest endpoint can do — Starlette
under uvicorn, read the body, parse it with orjson (as the relay does), answer 204."""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def ingest(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(status_code=204)


async def health(request: Request) -> Response:
    return Response(status_code=204)


app = Starlette(routes=[Route("/v1/{kind}", ingest, methods=["POST"]),
                        Route("/", health, methods=["GET"])])
