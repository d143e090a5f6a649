"""Structured JSON logs with request ids.

Every line is one JSON object (`ts`, `level`, `logger`, `msg`, `request_id` when inside a
request, plus any `extra=` fields), so a log pipeline can index it. What is logged is chosen so
that no visitor's email, phone, name or IP and no vendor secret ever reaches a line: callers log
ids and counts, vendor URLs without their query (see vendors.base.Vendor.mask).
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: What may start a new line or rewrite one on a terminal: C0 and C1 controls (newline,
#: carriage return, escape sequences), DEL, and Unicode's line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def escape_controls(text: str) -> str:
    """`text` on one line: each control character spelled as its escape (`\\n`, `\\x1b`)."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


class TextFormatter(logging.Formatter):
    """One record, one line: a logged value (a messageId, a vendor's answer) with a newline
    in it could otherwise write a line of its own into the log that looks like the relay's.
    A traceback keeps its lines, each indented, so none of them starts like a record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        text = super().formatException(ei)
        return "\n".join("    " + _CONTROL.sub(_escaped, line)
                         for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("    " + _CONTROL.sub(_escaped, line)
                         for line in stack_info.splitlines())


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request URL at INFO, and vendor URLs carry keys (Retail Rocket's apiKey).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # Access logs would carry every visitor's IP address.
    logging.getLogger("uvicorn.access").disabled = True


class RequestIdMiddleware:
    """Give each request an id (the client's `X-Request-ID` when it is a sane token), expose it
    to logs through a context variable and answer it back in `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k == b"x-request-id"), "")
        rid = given if _SAFE_ID.match(given) else secrets.token_hex(8)
        token = request_id.set(rid)
        scope.setdefault("state", {})["started"] = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
