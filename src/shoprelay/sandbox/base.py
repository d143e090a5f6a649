"""What every vendor sandbox shares: recording, fault injection and rate-limit answers.

A sandbox is a real HTTP server that enforces one vendor's document (auth, required fields,
types, batch sizes, limits, error codes) and records every request with its verdict, so a person
(the demo page) or a test can see exactly what the vendor would have received and refused.
A sandbox module defines `SANDBOX`, an instance of a `Sandbox` subclass.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

#: The credentials every sandbox accepts; the demo settings use them.
DEMO_KEY = "sandbox-key"


@dataclass(slots=True)
class Record:
    """One request a sandbox received, and what it answered."""

    vendor: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    error: str = ""
    at: float = field(default_factory=time.time)
    #: Events of this request that are a second (or later) copy of one the sandbox already
    #: stored: a relay must never cause one (`SandboxState.keep`).
    copies: int = 0

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor, "method": self.method, "path": self.path,
            "query": self.query, "headers": self.headers, "body": self.body,
            "status": self.status, "error": self.error, "at": self.at,
            "accepted": self.accepted, "copies": self.copies,
        }


class _DroppedResponse(Response):
    """Starts a 200 with a body it never sends, then fails: the server drops the connection,
    and the client sees it closed without a complete answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        raise ConnectionAbortedError("sandbox fault: connection dropped")


class Refusal(Exception):
    """Raised by a sandbox handler: answer `status` with `error` and record the refusal."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers or {}


@dataclass(slots=True)
class Fault:
    """A failure the sandbox plays instead of answering (for fault tests and the demo)."""

    #: "status" answers `status` (with Retry-After if set); "hang" never answers in time;
    #: "refuse_events" lets the handler answer but refuse the events named by `matches`;
    #: "close" starts an answer and drops the connection mid-way; "delay" waits
    #: `hang_seconds`, then answers normally (a slow vendor); "waf" is a web application
    #: firewall in front of the vendor: a request whose body contains one of `matches` is
    #: answered `status` (give 403) with the firewall's HTML page before the vendor sees it,
    #: every other request passes to the vendor's own checks (it never refuses less).
    kind: str = "status"
    status: int = 503
    retry_after: float | None = None
    #: How many requests the fault applies to; None means until cleared.
    count: int | None = None
    hang_seconds: float = 30.0
    #: Extra answer headers (e.g. Alana's X-RateLimit-Reset).
    headers: dict[str, str] | None = None
    #: "refuse_events": the request is answered by the vendor's own handler, which refuses
    #: (counts as failed) each event whose JSON contains one of these strings (Alana's
    #: `{stored, errors}` partial answer). Any other kind: the fault plays only for requests
    #: whose body contains one of them (others pass, the fault waits), e.g. a 400 for one
    #: order line.
    matches: list[str] | None = None
    #: "status": the JSON body to answer instead of `{"error": ...}` (e.g. a 200 whose body
    #: is not the vendor's success answer).
    body: Any = None


#: The page the "waf" fault answers (shaped like a CDN's block page).
_WAF_PAGE = ("<html><head><title>403 Forbidden</title></head><body><h1>Request blocked</h1>"
             "<p>This request was blocked by the security rules of the site.</p>"
             "<p>Incident ID: sandbox-waf</p></body></html>")


class SlidingWindow:
    """Counts requests per key within a window; used to answer 429 as the vendor would."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Record a request; return None if allowed, else seconds until one is allowed."""
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.0, hits[0] + self.window - now)
        hits.append(now)
        return None


def parse_json_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, f"body is not valid JSON: {exc}") from None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


Handler = Callable[[Request, Any], Awaitable[Response]]


class Sandbox:
    """Base of a vendor sandbox. Subclasses define `routes` and `demo_settings`."""

    #: Same name as the vendor adapter and settings table.
    name: ClassVar[str]

    def routes(self, sandbox: SandboxState) -> list[BaseRoute]:
        raise NotImplementedError

    def demo_settings(self, base_url: str) -> dict[str, Any]:
        """The `[sites.X.vendors.<name>]` table that points the relay at this sandbox."""
        raise NotImplementedError


class SandboxState:
    """Records, faults and limiters of one mounted sandbox."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.records: list[Record] = []
        self.faults: deque[Fault] = deque()
        self.changed = asyncio.Event()
        #: Requests being answered right now (a test can wait until one is in flight), and
        #: the bodies of those held by a "delay" or "hang" fault (which one is in flight).
        self.in_flight = 0
        self.held: list[Any] = []
        #: Every event stored, by its canonical JSON, and how many times: the vendor stores a
        #: resend again, so the sandbox must notice the second copy.
        self.stored: Counter[bytes] = Counter()

    def add(self, record: Record) -> None:
        self.records.append(record)
        self.changed.set()
        self.changed = asyncio.Event()

    def clear(self) -> None:
        self.records.clear()
        self.faults.clear()
        self.stored.clear()

    def keep(self, request: Request, events: list[tuple[int, Any]]) -> list[int]:
        """Store `events` ((index in the request, event) pairs) as the vendor does, copies
        too, and return the indexes of those that are a copy of one stored before, field for
        field. The request's record counts them in `copies` and names them in its `error`."""
        again: list[int] = []
        notes: list[str] = []
        for i, event in events:
            key = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
            self.stored[key] += 1
            if self.stored[key] > 1:
                again.append(i)
                notes.append(f"events[{i}] is copy {self.stored[key]} of an event already stored")
        if again:
            request.state.sandbox_copies = len(again)
            old = getattr(request.state, "sandbox_note", "")
            request.state.sandbox_note = "; ".join([old, *notes] if old else notes)
        return again

    def next_fault(self, raw: bytes = b"") -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.kind != "refuse_events" and fault.matches and not any(
                m.encode() in raw for m in fault.matches):
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.faults.popleft()
        return fault

    async def _hold(self, body: Any, seconds: float) -> None:
        """Keep a request unanswered for `seconds`, counted in flight and listed in `held`."""
        self.in_flight += 1
        self.held.append(body)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.in_flight -= 1
            self.held.remove(body)

    async def handle(self, request: Request, handler: Handler) -> Response:
        """Read the body, play a fault if one is set, run `handler`, record the verdict."""
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        record = Record(
            vendor=self.vendor,
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k: v for k, v in request.headers.items()
                     if k.lower() not in ("host", "content-length", "accept-encoding",
                                          "connection", "user-agent", "accept")},
            body=body,
            status=200,
        )
        fault = self.next_fault(raw)
        if fault is not None and fault.kind == "refuse_events":
            request.state.refuse_matches = list(fault.matches or [])
            fault = None
        if fault is not None and fault.kind == "delay":
            await self._hold(body, fault.hang_seconds)
            fault = None
        if fault is not None and fault.kind == "waf":
            # What a firewall answers: its own page, not the vendor's JSON, naming no rule the
            # relay could read as being about the event.
            record.status = fault.status
            record.error = f"injected fault: blocked by the WAF (HTTP {fault.status})"
            self.add(record)
            return Response(_WAF_PAGE, fault.status, dict(fault.headers or {}),
                            media_type="text/html")
        if fault is not None and fault.kind == "close":
            record.status, record.error = 0, "injected fault: connection closed mid-answer"
            self.add(record)
            return _DroppedResponse()
        if fault is not None:
            if fault.kind == "hang":
                await self._hold(body, fault.hang_seconds)
            headers = dict(fault.headers or {})
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after))
            record.status, record.error = fault.status, f"injected fault: HTTP {fault.status}"
            self.add(record)
            answer = {"error": record.error} if fault.body is None else fault.body
            return json_response(answer, fault.status, headers)
        try:
            response = await handler(request, raw)
        except Refusal as refusal:
            record.status, record.error = refusal.status, refusal.error
            self.add(record)
            return json_response({"error": refusal.error}, refusal.status, refusal.headers)
        record.status = response.status_code
        # A handler that accepted the request but refused part of it (Alana's per-event
        # errors) says which in `request.state.sandbox_note`.
        record.error = getattr(request.state, "sandbox_note", "")
        record.copies = getattr(request.state, "sandbox_copies", 0)
        self.add(record)
        return response
