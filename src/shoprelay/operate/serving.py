"""uvicorn's HTTP/1.1 protocol with limits on request headers, for a relay exposed directly.

uvicorn bounds the body (the relay does: 500 KB, `body_read_timeout_seconds`) and the idle time
between requests (`timeout_keep_alive`), but not the headers: a client may take for ever to send
them, hold a connection open without sending anything, and — with httptools, which uvicorn
prefers when it is installed — send headers of any size (a 70 KB cookie was accepted). Behind
nginx these are the proxy's job (`client_header_timeout`, `large_client_header_buffers`); here
the relay does it itself:

- the request line and headers of every request must arrive within `header_read_timeout`
  seconds of their first byte (of the connection, for its first request), or the client gets
  408 and the connection is closed;
- they may hold at most `max_header_bytes`; beyond, 431 (h11: 400 when h11 notices first)
  and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
              b"content-length: 31\r\nconnection: close\r\n\r\n"
              b"request headers took too long\r\n")
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
              b"content-length: 26\r\nconnection: close\r\n\r\n"
              b"request headers too large\r\n")


class _HeaderLimits:
    """The timer shared by both protocol flavours; the subclass says when headers end."""

    header_read_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _header_timer: asyncio.TimerHandle | None = None

    # Both flavours: the header timer is armed when a connection opens, dropped when it ends.
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_read_timeout,
                                                      self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        self._refuse(_TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:
            self.transport.write(answer)
        # Otherwise a pipelined request is late while a response is being written: no answer
        # can be put in between, so the connection just ends after it.
        self.transport.close()


def _httptools_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn uses h11
        return None

    class GuardedHttpTools(_HeaderLimits, HttpToolsProtocol):
        _awaiting_headers = True   # the connection's first request has not been read yet
        _header_bytes = 0
        _too_large = False

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A request begun in this read (the parser saw its first byte) and not yet whole.
            if self._awaiting_headers and not self.transport.is_closing():
                self._arm_header_timer()

        def send_400_response(self, msg: str) -> None:
            if self._too_large:
                self._refuse(_TOO_LARGE)
            else:
                super().send_400_response(msg)

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > self.max_header_bytes:
                self._too_large = True
                # httptools turns this into a parser error, answered by send_400_response.
                raise ValueError("request headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_headers = True
            self._header_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()

    return GuardedHttpTools


class GuardedH11(_HeaderLimits, H11Protocol):
    """h11's own bound (`h11_max_incomplete_event_size`, answered 400) only holds while the
    headers are incomplete: headers that arrive whole in one read pass it, so they are counted
    here up to the blank line that ends them."""

    _header_bytes = 0
    _tail = b""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            seen = self._tail + data               # the blank line may span two reads
            end = seen.find(b"\r\n\r\n")
            size = self._header_bytes + (len(data) if end < 0 else end - len(self._tail))
            if size > self.max_header_bytes:
                self._refuse(_TOO_LARGE)
                return
            self._header_bytes, self._tail = (size, seen[-3:]) if end < 0 else (0, b"")
        super().data_received(data)
        # IDLE on our peer's side means its next request line and headers are still coming.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()
        else:
            self._header_bytes, self._tail = 0, b""
            self._disarm_header_timer()


def protocol_class(*, max_header_bytes: int, header_read_timeout: float
                   ) -> type[asyncio.Protocol]:
    """The HTTP protocol for uvicorn's `http=`: httptools (as uvicorn's "auto" would pick)
    when installed, else h11, with the header limits."""
    base = _httptools_class() or GuardedH11
    limits = {"max_header_bytes": max_header_bytes, "header_read_timeout": header_read_timeout}
    return type(f"Limited{base.__name__}", (base,), limits)


def uvicorn_options(relay: Any) -> dict[str, Any]:
    """The uvicorn.Config arguments that carry `relay`'s connection limits."""
    return {
        "http": protocol_class(max_header_bytes=relay.max_header_bytes,
                               header_read_timeout=relay.header_read_timeout_seconds),
        "h11_max_incomplete_event_size": relay.max_header_bytes,
        "timeout_keep_alive": relay.keep_alive_seconds,
    }


#: For `uvicorn --factory shoprelay.app:from_environment --http
#: shoprelay.operate.serving:DefaultProtocol`: the limits at their default values.
DefaultProtocol = protocol_class(max_header_bytes=32 * 1024, header_read_timeout=10.0)
