"""Vendor delivery in a process of its own (`relay.delivery_process = true`).

Ingest and delivery share one interpreter, so one GIL, in the default set-up: under load the
forwarder's HTTP work (httpx, the answers, the spool updates) takes time from the ingest
requests, and the second core of a small machine stays idle (bench/README.md, issue 15:
ingest-only measured ~3× on single events, ~2× on batches). With this setting `shoprelay
serve` still is one command, and starts a second process, `shoprelay deliver`, over the same
spool:

- **The spool is the only hand-over.** The serving process stores and answers; the delivery
  process claims delivery (SQLite: its flock, so a second relay on the file is still refused),
  sends and records every fate. Every guarantee of the spool holds as it is: what is
  acknowledged is durable before the answer; a killed delivery process leaves its work queued.
- **Wake-ups** cross a pipe: after each commit the serving process writes one byte
  (non-blocking; a full pipe already holds a wake-up), and the delivery process clears its
  workers' flags before looking, as in one process. The same pipe says whether a debugger
  viewer is connected (`A` / `I`), so the delivery process pays for debugger events only then.
- **What operators read** comes back on a second pipe, as JSON lines: each vendor exchange
  for the live debugger, and twice a second each worker's counters and pause state, which
  `/metrics`, `/readyz`, the health page and traces read from `DeliveryProcess.workers`
  exactly as they read a forwarder's.
- **Supervision.** A delivery process that exits on its own is logged and started again after
  a second; SIGTERM to `serve` stops it with the same grace as in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson

from shoprelay.delivery.forwarder import DeliveryCounters, Forwarder
from shoprelay.delivery.health import VendorHealth
from shoprelay.vendors.base import Vendor

log = logging.getLogger("shoprelay.delivery")

#: Bytes on the wake pipe.
WAKE, VIEWER_ON, VIEWER_OFF = b"w", b"A", b"I"
#: How often the delivery process reports its workers' counters and pause states.
REPORT_EVERY = 0.5
#: The health fields a report carries (the rest of `VendorHealth` stays in the child).
_HEALTH_FIELDS = ("state", "reason", "status", "since", "pauses", "refuses", "refused_event",
                  "events_refused")


@dataclasses.dataclass(slots=True)
class WorkerView:
    """The serving process's copy of one delivery worker: what operators read of it."""

    site: str
    vendor: Vendor[Any]
    counters: DeliveryCounters
    health: VendorHealth


def worker_report(workers: list[Any]) -> dict[str, Any]:
    """One report line of the delivery process: every worker's counters and pause state."""
    return {"workers": [
        {"site": w.site, "vendor": w.vendor.name,
         "counters": dataclasses.asdict(w.counters),
         "health": {name: getattr(w.health, name) for name in _HEALTH_FIELDS}}
        for w in workers]}


class PipeBus:
    """The delivery process's debugger bus: events go up the report pipe to the serving
    process's `DebugBus`, only while a viewer is connected there."""

    def __init__(self, write: Any) -> None:
        self._write = write
        self.active = False

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if self.active:
            self._write({"bus": kind, "data": data})


class DeliveryProcess:
    """The serving process's side: starts `shoprelay deliver`, wakes it, reads its reports,
    and stands where a `Forwarder` stands for the routes (`workers`, `pause_reason`)."""

    def __init__(self, config_path: str, targets: list[tuple[str, Vendor[Any], Any]], *,
                 log_level: str = "info", grace: float = 10.0, bus: Any = None) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.grace = grace
        self.bus = bus
        self.workers = [WorkerView(site, vendor, DeliveryCounters(),
                                   VendorHealth(site, vendor.name))
                        for site, vendor, _ in targets]
        self._by_key = {(w.site, w.vendor.name): w for w in self.workers}
        self._proc: subprocess.Popen[bytes] | None = None
        self._wake_w = -1
        self._report_r = -1
        self._buffer = b""
        self._stopping = False
        self._viewer = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    # ---- the forwarder's interface, as the routes use it ----------------------------------

    def pause_reason(self, site: str, vendor: str) -> str | None:
        worker = self._by_key.get((site, vendor))
        if worker is not None and worker.health.paused:
            return worker.health.shown_reason()
        return None

    def refused_event(self, site: str, vendor: str) -> dict[str, Any] | None:
        worker = self._by_key.get((site, vendor))
        return worker.health.recent_refusal() if worker is not None else None

    def wake(self) -> None:
        """After a commit, from any thread: one byte down the pipe (a full pipe already holds
        a wake-up the child has not read)."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
                os.write(self._wake_w, WAKE)

    def begin_stop_threadsafe(self) -> None:
        """SIGTERM/SIGINT to `serve`: the delivery process starts no new vendor request."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        """Start the delivery process and wait for its first report: a child that cannot
        start (the spool is claimed by another relay, the settings fail) fails `serve`."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._spawn()
        self._watch = asyncio.create_task(self._supervise(), name="delivery-process")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._watch}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            code = self._proc.poll() if self._proc else None
            await self.stop(0)
            raise RuntimeError(f"the delivery process did not start (exit code {code}); "
                               f"its reason is in the log above")

    def _spawn(self) -> None:
        wake_r, self._wake_w = os.pipe()
        self._report_r, report_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        command = [sys.executable, "-m", "shoprelay", "deliver", "--config", self.config_path,
                   "--log-level", self.log_level, "--wake-fd", str(wake_r),
                   "--report-fd", str(report_w)]
        self._proc = subprocess.Popen(command, pass_fds=(wake_r, report_w),
                                      preexec_fn=_die_with_parent)
        os.close(wake_r)
        os.close(report_w)
        self._buffer = b""
        assert self._loop is not None
        self._loop.add_reader(self._report_r, self._read_reports)
        self._viewer = False
        self.wake()  # work that was stored while no delivery process ran

    def _close_pipes(self) -> None:
        if self._report_r >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._report_r)
            os.close(self._report_r)
            self._report_r = -1
        if self._wake_w >= 0:
            os.close(self._wake_w)
            self._wake_w = -1

    async def _supervise(self) -> None:
        """Restart a delivery process that exits on its own; tell the viewer state."""
        while True:
            proc = self._proc
            assert proc is not None
            while proc.poll() is None:
                await asyncio.sleep(0.2)
                self._tell_viewer()
            self._close_pipes()
            if self._stopping:
                return
            if self._ready is not None and not self._ready.is_set():
                return  # never started: `start` reports it
            log.error("the delivery process exited (code %s); starting it again in 1 s",
                      proc.returncode)
            await asyncio.sleep(1.0)
            if self._stopping:
                return
            self._spawn()

    def _tell_viewer(self) -> None:
        viewer = bool(self.bus is not None and self.bus.active)
        if viewer != self._viewer and self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
                os.write(self._wake_w, VIEWER_ON if viewer else VIEWER_OFF)
                self._viewer = viewer

    def _read_reports(self) -> None:
        try:
            chunk = os.read(self._report_r, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:  # the child closed its end (it exited): the supervisor takes over
            if self._loop is not None and self._report_r >= 0:
                self._loop.remove_reader(self._report_r)
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line:
                self._apply(orjson.loads(line))

    def _apply(self, report: dict[str, Any]) -> None:
        if "bus" in report:
            if self.bus is not None:
                self.bus.publish(report["bus"], report["data"])
            return
        for entry in report.get("workers", []):
            worker = self._by_key.get((entry["site"], entry["vendor"]))
            if worker is None:
                continue
            for name, value in entry["counters"].items():
                setattr(worker.counters, name, value)
            for name, value in entry["health"].items():
                setattr(worker.health, name, value)
        if self._ready is not None:
            self._ready.set()

    async def stop(self, deadline: float | None = None) -> None:
        """Stop the delivery process within the grace (it lets requests in flight finish),
        then kill it; its unfinished work stays queued in the spool."""
        self._stopping = True
        deadline = self.grace if deadline is None else deadline
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            ends = time.monotonic() + deadline + 5.0
            while proc.poll() is None and time.monotonic() < ends:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.warning("the delivery process did not stop in time; killing it")
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        self._close_pipes()


def _die_with_parent() -> None:
    """In the child before exec: a SIGKILLed `serve` takes its delivery process with it (as
    one process would die whole), so a restarted relay can claim the spool at once. Linux
    only; elsewhere the child stops when the wake pipe closes."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---- the delivery process itself (`shoprelay deliver`) ----------------------------------------

async def run_delivery(forwarder: Forwarder, wake_fd: int, report_fd: int,
                       grace: float) -> None:
    """Deliver with `forwarder` (over a spool whose delivery this process claimed) until
    SIGTERM/SIGINT or until the serving process is gone: its wake-ups come on `wake_fd`,
    reports go up `report_fd`. `shoprelay deliver` opens the spool and makes the forwarder
    (shoprelay.runtime), as the serving process would for itself."""
    loop = asyncio.get_running_loop()
    os.set_blocking(report_fd, True)

    def write(report: dict[str, Any]) -> None:
        try:
            os.write(report_fd, orjson.dumps(report, default=str) + b"\n")
        except BrokenPipeError:  # the serving process is gone: stop
            forwarder.begin_stop()

    bus = PipeBus(write)
    forwarder.bus = bus
    stopped = asyncio.Event()

    def on_signal() -> None:
        forwarder.begin_stop()
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    def on_wake() -> None:
        try:
            data = os.read(wake_fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the serving process closed its end: it is gone
            loop.remove_reader(wake_fd)
            on_signal()
            return
        for byte in data:
            if byte == VIEWER_ON[0]:
                bus.active = True
            elif byte == VIEWER_OFF[0]:
                bus.active = False
        forwarder.spool.kick_intake()
        forwarder.wake()

    os.set_blocking(wake_fd, False)
    loop.add_reader(wake_fd, on_wake)
    forwarder.spool.route_intake()  # this process folds what the serving process accepts
    forwarder.start()
    log.info("delivery process ready: %d vendor queue(s)", len(forwarder.workers))
    try:
        while not stopped.is_set():
            write(worker_report(forwarder.workers))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), REPORT_EVERY)
    finally:
        loop.remove_reader(wake_fd)
        await forwarder.stop(grace)
        write(worker_report(forwarder.workers))
