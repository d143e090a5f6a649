"""The live debugger: what arrives and what each vendor is sent and answers, as it happens.

Like Segment's and RudderStack's debuggers, it is what a shop developer watches while fixing a
mapping. Events go out as server-sent events to whoever holds the admin token; a subscriber that
cannot keep up loses events rather than slowing the relay (bounded queues, dropped when full).
Vendor secrets are masked before anything is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

_QUEUE = 500


class DebugBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[bytes]] = set()

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        payload = orjson.dumps({"kind": kind, "at": time.time(), **data}, default=str)
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(payload)

    async def stream(self, heartbeat: float = 15.0) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(_QUEUE)
        self._subscribers.add(queue)
        try:
            yield b": connected\n\n"
            while True:
                try:
                    payload = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield b"data: " + payload + b"\n\n"
        finally:
            self._subscribers.discard(queue)


def page(vendors: dict[str, list[str]]) -> str:
    """The debugger page for these sites' vendors (one column each)."""
    data = orjson.dumps(vendors).decode().replace("</", "<\\/")
    return PAGE.replace("__VENDORS__", data)


#: Event-centric: one row per incoming message, one column per vendor whose cell follows that
#: vendor's outcome as it happens (first from the message's trace, then from each exchange on
#: the stream); filters by visitor, event and vendor; a click shows the whole trace. The admin
#: token, if the page was opened with one, goes in a header (never in a fetched URL).
PAGE = (Path(__file__).parent / "debugger.html").read_text(encoding="utf-8")
