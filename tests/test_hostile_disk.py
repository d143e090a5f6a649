"""A full disk (issue 22, "A full disk"; Build item 4), over real HTTP with a real full disk.

The spool lives on a tmpfs of 16 MiB mounted for the test (`mount -t tmpfs -o size=16m`): its
filesystem really runs out of space, so SQLite fails the way it fails in production
(SQLITE_FULL on the commit: the WAL cannot grow). SQLite's `PRAGMA max_page_count` would fake
it on one connection only, and never with ENOSPC, so the test mounts (it runs as root, as CI
does) and is skipped with the reason where mounting is not allowed.

Before the fix the relay answered 500 to every request (clients retry at once, forever),
`/readyz` stayed 200 and ~35 errors a second were logged.
"""

from __future__ import annotations

import errno
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import wait_for
from test_delivery_support import (
    BROWSER_UA,
    WRITE_KEY,
    RelayProcess,
    clear_faults,
    delivered,
    fault,
    records,
    sandbox,
    settle,
    view,
    wait_delivered,
    write_settings,
)

TOKEN = "disk-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 16 MiB filesystem."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem has no byte left."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with path.open("ab", buffering=0) as out:   # the last partial chunk
        try:
            while True:
                out.write(b"\0" * 512)
        except OSError:
            pass


def send(url: str, ids: range) -> httpx.Response:
    return httpx.post(f"{url}/v1/batch", json={"batch": [view(i) for i in ids],
                                               "writeKey": WRITE_KEY},
                      headers={"User-Agent": BROWSER_UA}, timeout=30)


def log_lines(log: Path, pattern: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if re.search(pattern, line)]


def test_a_full_disk_is_a_503_and_nothing_acknowledged_is_lost(tmp_path: Path,
                                                                small_disk: Path) -> None:
    log = tmp_path / "relay.log"
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=small_disk / "spool.db",
                             sandbox_url=sb, vendors=["goshops"],
                             # A slot whose release the full disk lost frees 7 s on.
                             relay={"admin_token": TOKEN, "delivery_timeout_seconds": 2})
        relay = RelayProcess(cfg, log)
        try:
            acknowledged: set[int] = set()
            for first in range(0, 40, 10):
                answer = send(relay.url, range(first, first + 10))
                assert answer.status_code == 200, answer.text
                acknowledged.update(range(first, first + 10))
            wait_delivered(sb, "goshops", acknowledged)
            # Acknowledged and not delivered yet when the disk fills: the vendor is down.
            fault(sb, "goshops", kind="status", status=503)
            answer = send(relay.url, range(40, 60))
            assert answer.status_code == 200, answer.text
            acknowledged.update(range(40, 60))
            wait_for(lambda: records(sb, "goshops", accepted=False))

            fill(small_disk / "filler")
            # Until the disk is full for SQLite too: a request may still fit in a page the
            # WAL had, never more than a few.
            refused: list[httpx.Response] = []
            for first in range(1000, 3000, 10):
                answer = send(relay.url, range(first, first + 10))
                assert answer.status_code in (200, 503), answer.text   # never a 500
                if answer.status_code == 200:
                    acknowledged.update(range(first, first + 10))
                else:
                    refused.append(answer)
                if len(refused) >= 30:
                    break
            assert len(refused) >= 30, "the disk never filled up"
            for answer in refused:
                assert answer.status_code == 503
                assert answer.headers["Retry-After"].isdigit(), answer.headers
                assert int(answer.headers["Retry-After"]) > 0
                body = answer.json()
                assert body["code"] == "spool_full" and body["accepted"] == 0, body
                assert "disk is full" in body["error"] and body["message"] == body["error"]

            # Out of rotation while it lasts: a load balancer sees 503; the operator the figure.
            public = httpx.get(f"{relay.url}/readyz")
            assert public.status_code == 503 and public.json() == {"status": "not_ready"}
            ready = httpx.get(f"{relay.url}/readyz", headers=AUTH)
            assert ready.status_code == 503 and ready.json()["status"] == "disk_full"
            disk = ready.json()["disk_full"]
            assert disk["refused_writes"] >= 30 and isinstance(disk["free_bytes"], int)
            # One line for the whole episode (a minute has not passed), with the figure.
            full_lines = log_lines(log, "spool cannot write")
            assert len(full_lines) == 1, full_lines
            assert re.search(r"[\d,]+ bytes free", full_lines[0]), full_lines[0]
            assert not log_lines(log, "Traceback|Internal Server Error"), log.read_text()

            # Space comes back: ingest resumes by itself, nobody restarts anything.
            (small_disk / "filler").unlink()
            wait_for(lambda: httpx.get(f"{relay.url}/readyz").status_code == 200, timeout=30)
            answer = send(relay.url, range(5000, 5010))
            assert answer.status_code == 200, answer.text
            acknowledged.update(range(5000, 5010))

            # Every acknowledged event reaches the vendor, once; nothing refused does.
            clear_faults(sb, "goshops")
            wait_delivered(sb, "goshops", acknowledged, timeout=60)
            settle(sb, ["goshops"])
            counts = delivered(sb, "goshops")
            assert set(counts) == acknowledged, sorted(set(counts) ^ acknowledged)
            assert {i: n for i, n in counts.items() if n != 1} == {}
            assert len(log_lines(log, "spool cannot write")) == 1
            assert len(log_lines(log, "spool writes again")) == 1
        finally:
            relay.terminate()
