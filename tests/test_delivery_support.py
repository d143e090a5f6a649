"""Helpers for the delivery, fault and CLI tests: settings files, a sandbox server, a relay
run in-process or as a real `shoprelay serve` process, and counting what vendors received.

Every test here talks real HTTP on 127.0.0.1. Events carry a unique integer product id, which
every vendor's body repeats, so what a sandbox received can be counted per event.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from servers import free_port, serve, wait_for

from shoprelay import settings as settings_module
from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.runtime import close_spool, open_spool
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.sandbox import demo_vendor_settings
from shoprelay.vendors import VENDORS

WRITE_KEY = "pk_faults"
#: A browser's user agent: bot hold-back (identity) must not keep test events from vendors.
BROWSER_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0 Safari/537.36")
#: Every vendor adapter the registry found (a sixth vendor is tested with no edit here).
ALL_VENDORS = sorted(VENDORS)
#: Keys under which each vendor's body carries the product id.
_PRODUCT_KEYS = {"productId", "item", "item_id", "productKey"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_settings(path: Path, *, spool: Path, sandbox_url: str,
                   vendors: list[str] | None = None, relay: dict[str, Any] | None = None,
                   overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """A settings file for one site whose vendors point at the sandboxes at `sandbox_url`
    (`overrides` per vendor, e.g. another base_url or visitor_events)."""
    tables = demo_vendor_settings(sandbox_url, vendors or ALL_VENDORS)
    for name, extra in (overrides or {}).items():
        tables[name].update(extra)
    relay_table = {"secret": "fault-test-secret-0123456789", "spool": f"sqlite://{spool}",
                   "spool_sync": "full", **(relay or {})}
    lines = ["[relay]"] + [f"{k} = {_toml_value(v)}" for k, v in relay_table.items()]
    lines += ["", "[sites.shop]", f"write_key = {_toml_value(WRITE_KEY)}"]
    for name, table in tables.items():
        lines += ["", f"[sites.shop.vendors.{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def view(i: int, visitor: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Product Viewed with product id `i` (unique per event) and messageId `m<i>`."""
    message: dict[str, Any] = {"type": "track", "event": "Product Viewed",
                               "messageId": f"m{i}",
                               "properties": {"product_id": i, "price": 10, "currency": "USD",
                                              **extra}}
    if visitor:
        message["anonymousId"] = visitor
    return message


def post(relay_url: str, batch: list[dict[str, Any]], *, timeout: float = 10) -> httpx.Response:
    answer = httpx.post(f"{relay_url}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY},
                        headers={"User-Agent": BROWSER_UA}, timeout=timeout)
    assert answer.status_code == 200, answer.text
    return answer


# ---- what the sandboxes received ------------------------------------------------------------

def records(sandbox_url: str, vendor: str, accepted: bool | None = True) -> list[dict]:
    query = {True: "?accepted=1", False: "?refused=1", None: ""}[accepted]
    return httpx.get(f"{sandbox_url}/_sandbox/{vendor}/requests{query}").json()


def product_ids(body: Any) -> list[int]:
    """Every product id in a vendor body, in order (batches carry several)."""
    found: list[int] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _PRODUCT_KEYS and isinstance(value, int | str):
                    found.append(int(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body)
    return found


def delivered(sandbox_url: str, vendor: str) -> Counter[int]:
    """How many times each event (by product id) reached the vendor in an accepted request."""
    counts: Counter[int] = Counter()
    for record in records(sandbox_url, vendor):
        counts.update(product_ids(record["body"]))
    return counts


def wait_delivered(sandbox_url: str, vendor: str, expected: set[int],
                   timeout: float = 30) -> Counter[int]:
    return wait_for(lambda: (c := delivered(sandbox_url, vendor)) and set(c) >= expected and c,
                    timeout=timeout, interval=0.1)


#: (sandbox attribute, relay setting, value) per vendor: limits well above what a test of
#: crash safety sends, so its last events are not held for a rate window (Advisable's and Go
#: Shops' 20 a second, Alana's 100 a minute per address). Tests *of* the limits keep theirs.
_ROOMY_LIMITS = {"advisable": ("per_second", "rate_limit_per_second", 200),
                 "goshops": ("per_second", "rate_limit_per_second", 200),
                 "alana": ("per_ip", "requests_per_minute_per_ip", 1000)}


def roomy_limits(monkeypatch: Any) -> dict[str, dict[str, Any]]:
    """Raise the sandboxes' limits (call before `sandbox()`) and return the matching relay
    overrides for `write_settings`: sandbox and relay keep agreeing, so no 429 is expected."""
    from shoprelay.sandbox import SANDBOXES

    for vendor, (attribute, _, value) in _ROOMY_LIMITS.items():
        monkeypatch.setattr(SANDBOXES[vendor], attribute, value)
    return {vendor: {setting: value} for vendor, (_, setting, value) in _ROOMY_LIMITS.items()}


def fault(sandbox_url: str, vendor: str, **spec: Any) -> None:
    httpx.post(f"{sandbox_url}/_sandbox/{vendor}/faults", json=spec).raise_for_status()


def clear_faults(sandbox_url: str, vendor: str) -> None:
    httpx.delete(f"{sandbox_url}/_sandbox/{vendor}/faults").raise_for_status()


def in_flight(sandbox_url: str, vendor: str) -> int:
    return int(httpx.get(f"{sandbox_url}/_sandbox/{vendor}/faults").json()["in_flight"])


# ---- relays ---------------------------------------------------------------------------------

@contextmanager
def sandbox(port: int | None = None) -> Iterator[str]:
    with serve(create_sandbox_app(), port=port, lifespan="off") as url:
        yield url


@dataclass
class Relay:
    url: str
    app: Any
    settings_file: Path


@contextmanager
def relay(settings_file: Path, delivery: DeliveryOptions | None = None,
          forward: bool = True) -> Iterator[Relay]:
    """The relay in this process (uvicorn in a thread), from a settings file."""
    settings = settings_module.load(settings_file)
    options = delivery or DeliveryOptions(idle_poll=0.1, first_retry=0.2, max_retry=1.0,
                                          timeout=5.0)
    app = create_app(settings, delivery=options, forward=forward)
    with ExitStack() as stack:
        url = stack.enter_context(serve(app))
        yield Relay(url, app, settings_file)


class RelayProcess:
    """A real `shoprelay serve` process (for signals: SIGKILL, SIGTERM)."""

    def __init__(self, settings_file: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoprelay", "serve", "--config", str(settings_file),
             "--port", str(self.port), "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ},
        )
        try:
            wait_for(self._up, timeout=30, interval=0.05)
        except AssertionError:
            self.kill()
            raise AssertionError("relay did not start:\n" + log.read_text()) from None

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


def accepting(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        # A socket closing under the request (shutdown) resets it instead of refusing it.
        return False
    return True


def settle(sandbox_url: str, vendors: list[str], quiet: float = 0.5) -> None:
    """Wait until the sandboxes have recorded nothing new for `quiet` seconds."""
    def snapshot() -> list[int]:
        return [len(records(sandbox_url, v, accepted=None)) for v in vendors]

    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()


# ---- what the spool and the CLI tell ------------------------------------------------------

def dead_letters(settings_file: Path) -> list[Any]:
    """Every dead letter, read through the spool the settings file names."""
    settings = settings_module.load(settings_file)

    async def read() -> list[Any]:
        spool = open_spool(settings)
        spool.start()
        try:
            return await spool.dead_letters()
        finally:
            await close_spool(spool)

    return asyncio.run(read())


def vendors_status(settings_file: Path) -> tuple[int, list[dict[str, Any]]]:
    """`shoprelay vendors status --json`: its exit code and rows."""
    done = subprocess.run([sys.executable, "-m", "shoprelay", "vendors", "status", "--config",
                           str(settings_file), "--json"], capture_output=True, timeout=60)
    assert done.stdout, done.stderr
    return done.returncode, orjson.loads(done.stdout)
