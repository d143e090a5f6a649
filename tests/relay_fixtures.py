"""Building a relay and its vendor sandboxes for tests (real servers on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from servers import serve, wait_for

from shoprelay.app import create_app
from shoprelay.delivery.forwarder import DeliveryOptions
from shoprelay.demo import demo_table
from shoprelay.sandbox import create_app as create_sandbox_app
from shoprelay.settings import Settings, parse

WRITE_KEY = "pk_demo_shop"
ORIGIN = "https://shop.example"
SECRET = "test-secret-of-enough-length"


@dataclass
class Stack:
    relay_url: str
    sandbox_url: str
    settings: Settings
    app: Any
    sandbox_app: Any

    def received(self, vendor: str, accepted_only: bool = True) -> list[dict[str, Any]]:
        query = "?accepted=1" if accepted_only else ""
        return httpx.get(f"{self.sandbox_url}/_sandbox/{vendor}/requests{query}").json()

    def refused(self, vendor: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/{vendor}/requests?refused=1").json()

    def wait_received(self, vendor: str, count: int, timeout: float = 20) -> list[dict]:
        return wait_for(lambda: (r := self.received(vendor)) and len(r) >= count and r,
                        timeout=timeout)


@contextmanager
def relay_stack(tmp_path: Path, *, vendors: list[str] | None = None,
                delivery: DeliveryOptions | None = None, forward: bool = True,
                sandbox_port: int | None = None,
                adjust: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Stack]:
    """Sandboxes + relay on 127.0.0.1; `adjust` may change the settings table first."""
    with ExitStack() as stack:
        sandbox_app = create_sandbox_app()
        sandbox_url = stack.enter_context(serve(sandbox_app, port=sandbox_port, lifespan="off"))
        table = demo_table(shop_origin=ORIGIN, sandbox_url=sandbox_url,
                           spool_file=str(tmp_path / "spool.db"), vendors=vendors,
                           secret=SECRET,
                           # httpx is a bot by its user agent; these tests forward it on
                           # purpose (the bot tests adjust this back).
                           forward_bots=True)
        if adjust is not None:
            adjust(table)
        settings = parse(table, env={})
        app = create_app(settings, delivery=delivery or DeliveryOptions(idle_poll=0.2),
                         forward=forward)
        relay_url = stack.enter_context(serve(app))
        yield Stack(relay_url, sandbox_url, settings, app, sandbox_app)


def track(event: str, message_id: str | None = None, **props: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "properties": props}
    if message_id:
        message["messageId"] = message_id
    return message


def routed_db(path: Path | str, timeout: float = 20.0) -> Any:
    """A connection to a SQLite spool file once its rules stage has routed everything that was
    accepted (the relay answers at intake; the stored events follow a moment later)."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(path)
        try:
            pending = conn.execute("SELECT COUNT(*) FROM intake WHERE result IS NULL "
                                   "AND failed IS NULL").fetchone()[0]
        except sqlite3.OperationalError:  # no intake table: nothing is waiting
            pending = 0
        if not pending:
            return conn
        conn.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} intake row(s) still not routed after {timeout} s")
        time.sleep(0.02)
