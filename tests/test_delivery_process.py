"""`relay.delivery_process = true`: `shoprelay serve` delivers from a second process over the
same spool. What an operator reads must not change: the live debugger still shows each vendor
exchange, /metrics the delivery counts, /readyz a paused vendor; a killed delivery process is
started again and loses nothing. (The SIGTERM, SIGKILL and second-relay fault tests run in
both modes: tests/test_faults.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from servers import wait_for
from test_delivery_support import (
    RelayProcess,
    fault,
    post,
    sandbox,
    view,
    wait_delivered,
    write_settings,
)

TOKEN = "delivery-process-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(tmp_path: Path, sb: str, vendors: list[str]) -> Path:
    return write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                          vendors=vendors, relay={"delivery_process": True,
                                                  "admin_token": TOKEN})


def metric(url: str, name: str, vendor: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'vendor="{vendor}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def delivery_children(pid: int) -> list[int]:
    """The `shoprelay deliver` processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"deliver" in cmdline:
            out.append(int(entry))
    return out


def test_the_debugger_and_metrics_see_the_delivery_process(tmp_path: Path) -> None:
    with sandbox() as sb:
        relay = RelayProcess(settings(tmp_path, sb, ["goshops"]), tmp_path / "relay.log")
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def listen() -> None:
            try:
                with httpx.stream("GET", f"{relay.url}/debug/stream?token={TOKEN}",
                                  timeout=30) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            seen.append(orjson.loads(line[6:]))
                        # Closed once the exchange has come: an open stream holds SIGTERM's
                        # shutdown for its grace (10 s) or the next heartbeat.
                        if stop.is_set() or any(e["kind"] == "vendor" for e in seen):
                            return
            except httpx.HTTPError:  # the relay stopped at the end of the test
                return

        try:
            assert len(delivery_children(relay.proc.pid)) == 1
            thread = threading.Thread(target=listen, daemon=True)
            thread.start()
            # The serving process tells the delivery process a viewer is connected (polled).
            time.sleep(1.0)
            post(relay.url, [view(7, visitor="dp")])
            wait_delivered(sb, "goshops", {7})
            wait_for(lambda: any(e["kind"] == "vendor" for e in seen))
            [sent] = [e for e in seen if e["kind"] == "vendor"]
            assert sent["vendor"] == "goshops" and sent["status"] == 200
            assert sent["body"]["data"]["item"] == "7"
            wait_for(lambda: metric(relay.url, "shoprelay_vendor_delivered_total",
                                    "goshops") == 1)
        finally:
            stop.set()
            relay.terminate()


def test_a_paused_vendor_shows_in_readyz_and_a_killed_delivery_process_restarts(
        tmp_path: Path) -> None:
    with sandbox() as sb:
        relay = RelayProcess(settings(tmp_path, sb, ["goshops"]), tmp_path / "relay.log")
        try:
            # Two refusals: the pause lasts the first probe's 2 s and the second's 4 s (a third
            # added 8 s and proved nothing more).
            fault(sb, "goshops", kind="status", status=401, count=2)
            post(relay.url, [view(1, visitor="p")])

            def paused() -> dict[str, Any]:
                return httpx.get(f"{relay.url}/readyz", headers=AUTH).json()["paused_vendors"]

            assert "shop/goshops" in wait_for(paused)
            wait_delivered(sb, "goshops", {1}, timeout=60)    # the probe gets through
            wait_for(lambda: not paused())

            [child] = delivery_children(relay.proc.pid)
            os.kill(child, signal.SIGKILL)
            post(relay.url, [view(2, visitor="p"), view(3, visitor="q")])
            wait_delivered(sb, "goshops", {1, 2, 3}, timeout=30)
            [again] = delivery_children(relay.proc.pid)
            assert again != child
            assert "delivery process exited" in (tmp_path / "relay.log").read_text()
        finally:
            relay.terminate()
