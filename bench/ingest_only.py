"""The relay's ingest half alone, for bench/ingest.py's `--spools sqlite-ingest-only` row.

    SHOPRELAY_BENCH_CONFIG=settings.toml uvicorn --factory bench.ingest_only:app

`create_app(settings, forward=False)`: the same routes, validation and spool as `shoprelay
serve`, with no forwarder in the process. It is what ingest would get if vendor delivery ran in
a process of its own (issue 15's lever), measured before building that split.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from shoprelay.app import create_app
from shoprelay.settings import load


def app() -> Starlette:
    return create_app(load(os.environ["SHOPRELAY_BENCH_CONFIG"]), forward=False)
