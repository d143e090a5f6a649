"""A spool that cannot write (its disk is full): told apart from a bug, reported, outlived.

A full disk is a condition of the machine, not of a request: answering it with 500 makes every
client retry at once and forever, and logging each failure writes ~35 lines a second to the
very disk that is full. So a write that fails for want of space raises `SpoolFull`, which
ingest answers with 503 and `Retry-After`; `/readyz` reads `DiskWatch.state` to take the relay
out of rotation while it lasts; the condition is logged once a minute with the free bytes of
the spool's filesystem; and it ends by itself, at the first write that succeeds or once the
filesystem has room again, since the write that failed is the only probe that cannot lie.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("shoprelay.spool")

#: What a refused client is told to wait before sending again (seconds).
RETRY_AFTER = 30
#: One log line per this many seconds while the disk stays full.
LOG_EVERY = 60.0
#: Free bytes the filesystem must gain over the figure at the failure before the spool counts
#: as writable again without a write having succeeded (an operator freed space): 16 pages.
#: The next write tells for sure; until one comes (a relay out of rotation gets none), this
#: is what lets it back in.
ROOM_AGAIN = 1 << 16
#: SQLite's primary result codes for "no space" and "the write did not reach the disk".
_SQLITE_FULL, _SQLITE_IOERR = 13, 10
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class SpoolFull(Exception):
    """The spool could not store a write: its disk (or quota) is full, or it failed to
    write. Nothing of the refused write is stored; what was stored before is intact."""

    def __init__(self, free_bytes: int | None, cause: str) -> None:
        super().__init__(f"the spool cannot write ({cause}); "
                         f"{_figure(free_bytes)} free on its filesystem")
        self.free_bytes = free_bytes
        self.cause = cause
        self.retry_after = RETRY_AFTER


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for want of space (SQLITE_FULL, ENOSPC, a quota)
    or because the disk refused it (SQLITE_IOERR, "disk I/O error"): a retry later may
    succeed, and no request is at fault."""
    if isinstance(exc, SpoolFull):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR):
            return True
        text = str(exc).lower()
        return "database or disk is full" in text or "disk i/o error" in text
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def free_bytes(path: str) -> int | None:
    """Free bytes on the filesystem holding `path` (as an unprivileged writer sees them)."""
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


@dataclass(frozen=True, slots=True)
class DiskState:
    """What `/readyz` shows while the spool cannot write."""

    since: float
    free_bytes: int | None
    refused: int
    cause: str

    def to_dict(self) -> dict[str, object]:
        return {"since": round(self.since, 3), "free_bytes": self.free_bytes,
                "refused_writes": self.refused, "cause": self.cause}


class DiskWatch:
    """The full-disk condition of one spool file, shared by its writer thread (which sets and
    clears it) and the event loop (which reads it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._since: float | None = None
        self._free_at_failure: int | None = None
        self._refused = 0
        self._cause = ""
        self._logged = self._resumed_logged = -1e9

    def failed(self, exc: BaseException) -> SpoolFull:
        """Record a write refused for want of space; the exception its callers get."""
        now = time.monotonic()
        free = free_bytes(self.path)
        cause = str(exc) or type(exc).__name__
        with self._lock:
            if self._since is None:
                self._since = time.time()
            self._free_at_failure = free
            self._refused += 1
            self._cause = cause
            refused, due = self._refused, now - self._logged >= LOG_EVERY
            if due:
                self._logged = now
        if due:
            # One line a minute: a flood of failures must not fill the log (or this disk).
            log.error("spool cannot write (%s): %s free on the filesystem of %s; ingest "
                      "answers 503 with Retry-After until a write succeeds (%d refused so "
                      "far)", cause, _figure(free), self.path, refused,
                      extra={"free_bytes": free, "refused_writes": refused})
        return SpoolFull(free, cause)

    def wrote(self) -> None:
        """A write reached the disk: the condition, if there was one, is over."""
        if self._since is None:
            return
        now = time.monotonic()
        with self._lock:
            since, refused, self._since, self._refused = self._since, self._refused, None, 0
            # A disk on the edge lets small writes through between refusals: still one line
            # a minute each way.
            due = since is not None and now - self._resumed_logged >= LOG_EVERY
            if due:
                self._resumed_logged = now
        if due and since is not None:
            log.warning("spool writes again after %.0f s (%d write(s) refused meanwhile)",
                        time.time() - since, refused)

    def state(self) -> DiskState | None:
        """The condition now, or None when the spool writes (or may: space came back)."""
        with self._lock:
            if self._since is None:
                return None
            since, before, refused, cause = (self._since, self._free_at_failure,
                                             self._refused, self._cause)
        free = free_bytes(self.path)
        if free is not None and before is not None and free >= before + ROOM_AGAIN:
            return None  # room again: the next write is expected to succeed, and ends it
        return DiskState(since, free, refused, cause)


def _figure(free: int | None) -> str:
    return "unknown bytes" if free is None else f"{free:,} bytes"
