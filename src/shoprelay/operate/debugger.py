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


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>shoprelay debugger</title>
<style>body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa}
.ev{border:1px solid #ddd;background:#fff;margin:.4em 0;padding:.4em .6em;border-radius:4px}
.ev.refused{border-color:#d33;background:#fff3f3}.k{font-weight:600;margin-right:.6em}
pre{margin:.3em 0 0;white-space:pre-wrap;font-size:12px}</style></head>
<body><h1>shoprelay live debugger</h1>
<p>Incoming messages and, per vendor, the requests sent and the answers. Newest on top.</p>
<div id="log"></div>
<script>
const log = document.getElementById("log");
// Same origin: the debugger cookie goes with it (the admin token never sits in a URL).
const source = new EventSource("/debug/stream");
source.onmessage = (e) => {
  const d = JSON.parse(e.data);
  const div = document.createElement("div");
  div.className = "ev" + (d.kind === "vendor" && !(d.status >= 200 && d.status < 300)
                          ? " refused" : "");
  const title = d.kind === "message"
    ? `message ${d.site} ${d.type} ${d.event || ""}`
    : `${d.vendor} ${d.method} ${d.url} → ${d.status === null ? d.error : d.status}`;
  div.innerHTML = "<span class=k></span><pre></pre>";
  div.querySelector(".k").textContent = new Date(d.at * 1000).toLocaleTimeString() + " " + title;
  div.querySelector("pre").textContent = JSON.stringify(d.kind === "message" ? d.message
    : {request: d.body, answer: d.answer}, null, 2);
  log.prepend(div);
  while (log.children.length > 300) log.lastChild.remove();
};
</script></body></html>"""
