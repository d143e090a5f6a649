"""Scale-out on Redis (issue 7) with real `shoprelay serve` processes, the real Redis at
127.0.0.1:6379 and real HTTP to the vendor sandboxes.

Events carry a unique integer product id (which every vendor body repeats), so what each
sandbox received is counted per event. Each test uses its own key prefix and removes only its
own keys."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from servers import free_port, wait_for
from test_delivery_support import (
    ALL_VENDORS,
    RelayProcess,
    delivered,
    fault,
    in_flight,
    post,
    product_ids,
    records,
    relay,
    roomy_limits,
    sandbox,
    view,
    wait_delivered,
    write_settings,
)

#: The Redis .ci/redis makes sure answers (SHOPRELAY_TEST_REDIS_PORT, default 6379).
URL = f"redis://127.0.0.1:{os.environ.get('SHOPRELAY_TEST_REDIS_PORT', '6379')}/0"
TOKEN = "scaleout-admin-token-0123456789"


def redis_settings(tmp_path: Path, sandbox_url: str, prefix: str, **relay: Any) -> Path:
    return write_settings(
        tmp_path / "s.toml", spool=tmp_path / "unused.db", sandbox_url=sandbox_url,
        vendors=relay.pop("vendors", None), overrides=relay.pop("overrides", None),
        relay={"spool": URL, "redis_prefix": prefix, "redis_lease_seconds": 2.0,
               "admin_token": TOKEN, **relay})


def holders(prefix: str, vendor: str) -> set[str]:
    client = redis.Redis.from_url(URL, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{prefix}lease:shop:{vendor}:*"))
        return {v for v in client.mget(keys) if v} if keys else set()
    finally:
        client.close()


def delivered_by(url: str) -> int:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    return int(sum(float(v) for v in re.findall(
        r'^shoprelay_vendor_delivered_total\{[^}]*\} ([0-9.e+]+)$', text, re.M)))


def lease_end(prefix: str, pid: int) -> float:
    """When the first lease still held by process `pid` expires: before then no other process
    can have taken over (and sent) any of its work."""
    client = redis.Redis.from_url(URL, decode_responses=True)
    try:
        ends = [time.time() + client.pttl(key) / 1000.0
                for key in client.scan_iter(match=f"{prefix}lease:*")
                if f":{pid}:" in (client.get(key) or "")]
        return min(ends, default=time.time())
    finally:
        client.close()


def pending_at(prefix: str, pid: int) -> dict[str, set[int]]:
    """Product ids whose work was read, not acknowledged, by the consumer of process `pid`."""
    client = redis.Redis.from_url(URL, decode_responses=True)
    out: dict[str, set[int]] = {v: set() for v in ALL_VENDORS}
    try:
        # One stream per partition, one consumer group per vendor (spool/redis/keys.py).
        for stream in client.scan_iter(match=f"{prefix}q:shop:*"):
            for group in client.xinfo_groups(stream):
                vendor = group["name"]
                for consumer in client.xinfo_consumers(stream, vendor):
                    if f":{pid}:" not in consumer["name"]:
                        continue
                    for p in client.xpending_range(stream, vendor, "-", "+", 100_000,
                                                   consumername=consumer["name"]):
                        [(_, fields)] = client.xrange(stream, p["message_id"],
                                                      p["message_id"])
                        if vendor not in fields["d"].split(","):
                            continue  # read to be skipped: not this vendor's work
                        event = orjson.loads(client.get(fields["e"]))
                        out[vendor].add(int(event["message"]["properties"]["product_id"]))
        return out
    finally:
        client.close()


def arrivals(sandbox_url: str, vendor: str) -> list[tuple[float, int]]:
    return [(rec["at"], p) for rec in records(sandbox_url, vendor)
            for p in product_ids(rec["body"])]


def test_two_processes_share_the_load_and_survive_a_sigkill(
        tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `shoprelay serve` on one Redis, both ingesting and delivering; one is SIGKILLed
    mid-load and the client sends what it never got an answer for to the survivor. Every
    vendor gets every event; an event arrives twice only if its request had reached the
    vendor from the killed process without being acknowledged — and then exactly twice; each
    visitor's events arrive in the order they were accepted."""
    # Alana's 100 requests a minute per address would hold the last events for the rest of
    # the minute (40 s of this test), Advisable's 20 a second 15 s; the limits are not what is
    # tested here (test_retail_rocket_limit_holds_across_two_processes is).
    overrides = roomy_limits(monkeypatch)
    with sandbox() as sb:
        cfg = redis_settings(tmp_path, sb, prefix, overrides=overrides)
        visitor_of = {n: f"v{n % 13}" for n in range(300)}
        batches = [[view(b * 10 + i, visitor=visitor_of[b * 10 + i]) for i in range(10)]
                   for b in range(30)]
        a = RelayProcess(cfg, tmp_path / "a.log")
        b = RelayProcess(cfg, tmp_path / "b.log")
        try:
            # The partitions spread over both before the load.
            wait_for(lambda: len(holders(prefix, "goshops")) == 2, timeout=20)
            takeover = 0.0
            for number, batch in enumerate(batches):
                # Alternate relays while both live (a visitor's events go through both);
                # each post is answered before the next, so acceptance order = id order.
                target = a if number % 2 == 0 and number <= 15 else b
                if number == 15:
                    # Both delivered before the kill (checked while A still lives).
                    wait_for(lambda: delivered_by(a.url) > 0 and delivered_by(b.url) > 0,
                             timeout=20)
                    # Go Shops becomes slow, so requests of both processes are at the vendor
                    # unanswered when A dies.
                    fault(sb, "goshops", kind="delay", hang_seconds=1.5, count=40)
                    post(a.url, batch)

                    def a_has_one_at_the_vendor() -> bool:
                        held = httpx.get(f"{sb}/_sandbox/goshops/faults").json()["held"]
                        items = {int(body["data"]["item"]) for body in held}
                        return bool(items & pending_at(prefix, a.proc.pid)["goshops"])

                    # Kill only once a request of A's own is at the vendor unanswered: else
                    # the kill tests nothing (B's requests in flight are not A's to lose).
                    wait_for(lambda: in_flight(sb, "goshops") >= 3
                             and a_has_one_at_the_vendor(), timeout=30, interval=0.05)
                    a.proc.send_signal(signal.SIGKILL)
                    a.proc.wait()
                    takeover = lease_end(prefix, a.proc.pid)
                    pending = pending_at(prefix, a.proc.pid)
                    continue
                post(target.url, batch)
                time.sleep(0.02)
            expected = set(range(300))
            for vendor in ALL_VENDORS:
                wait_delivered(sb, vendor, expected, timeout=60)
            time.sleep(0.5)  # a duplicate would have come by now
            duplicates: dict[str, int] = {}
            for vendor in ALL_VENDORS:
                counts = delivered(sb, vendor)
                assert set(counts) == expected, vendor
                seen = arrivals(sb, vendor)
                # Work A held unacknowledged and whose request had reached the vendor before
                # its leases ran out (only A could send it until then).
                at_vendor = {p for at, p in seen if p in pending[vendor] and at < takeover}
                for product, n in counts.items():
                    assert n == (2 if product in at_vendor else 1), (vendor, product, n)
                duplicates[vendor] = sum(n - 1 for n in counts.values())
                first: dict[str, list[int]] = {}
                done: set[int] = set()
                for _, product in seen:
                    if product not in done:
                        done.add(product)
                        first.setdefault(visitor_of[product], []).append(product)
                for visitor, order in first.items():
                    assert order == sorted(order), (vendor, visitor, order)
                assert records(sb, vendor, accepted=False) == [], vendor
            print(f"duplicates (in flight at the kill): {duplicates}")
            assert duplicates["goshops"] > 0, "nothing of A's was in flight: nothing tested"
        finally:
            a.kill()
            b.kill()


def test_retail_rocket_limit_holds_across_two_processes(tmp_path: Path, prefix: str) -> None:
    """The Retail Rocket sandbox answers 429 past 50 requests in any second. 250 events for
    distinct visitors, ingested by two processes that both deliver: not one 429."""
    with sandbox() as sb:
        cfg = redis_settings(tmp_path, sb, prefix, vendors=["retailrocket"])
        a = RelayProcess(cfg, tmp_path / "a.log")
        b = RelayProcess(cfg, tmp_path / "b.log")
        try:
            wait_for(lambda: len(holders(prefix, "retailrocket")) == 2, timeout=20)
            events = [view(i, visitor=f"v{i}") for i in range(250)]
            for number, start in enumerate(range(0, 250, 25)):
                post((a if number % 2 else b).url, events[start:start + 25])
            expected = set(range(250))
            counts = wait_delivered(sb, "retailrocket", expected, timeout=60)
            assert set(counts) == expected and set(counts.values()) == {1}
            assert delivered_by(a.url) > 0 and delivered_by(b.url) > 0
            assert records(sb, "retailrocket", accepted=False) == []
            times = sorted(rec["at"] for rec in records(sb, "retailrocket"))
            worst = max(sum(1 for t in times[i:] if t < start + 1.0)
                        for i, start in enumerate(times))
            assert worst <= 50
        finally:
            a.kill()
            b.kill()


def shoprelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoprelay", *args], capture_output=True,
                          text=True, timeout=60)


def test_deadletter_and_spool_commands_on_redis(tmp_path: Path, prefix: str) -> None:
    with sandbox() as sb:
        # One call per event, so each 400 lands on one event (no visitorEvents batch).
        cfg = redis_settings(tmp_path, sb, prefix, vendors=["retailrocket", "goshops"],
                             overrides={"retailrocket": {"visitor_events": False}})
        fault(sb, "retailrocket", kind="status", status=400, count=2)
        with relay(cfg) as r:
            post(r.url, [view(i, visitor="a") for i in range(3)])
            wait_delivered(sb, "goshops", {0, 1, 2})
            wait_delivered(sb, "retailrocket", {2})
            listed = wait_for(lambda: (out := orjson.loads(shoprelay(
                "deadletter", "list", "--config", str(cfg), "--json").stdout)) and
                len(out) == 2 and out)
            assert sorted((d["vendor"], d["messageId"], d["status"]) for d in listed) == [
                ("retailrocket", "m0", 400), ("retailrocket", "m1", 400)]
            assert all(d["request"].startswith("POST ") for d in listed)
            text = shoprelay("deadletter", "list", "--config", str(cfg), "--vendor",
                             "retailrocket")
            assert "status=400" in text.stdout and "2 dead letter(s)" in text.stdout
            stats = orjson.loads(shoprelay("spool", "stats", "--config", str(cfg),
                                           "--json").stdout)
            assert stats["vendors"]["retailrocket"]["dead"] == 2
            assert stats["vendors"]["goshops"]["delivered"] == 3 and stats["queued"] == 0
            assert stats["file_bytes"] > 0
            # Replayed while the relay runs: it delivers them (woken through Redis).
            first = min(d["id"] for d in listed)
            one = shoprelay("deadletter", "replay", "--config", str(cfg), "--id", str(first))
            assert one.stdout.startswith("1 dead letter(s) queued again"), one.stderr
            rest = shoprelay("deadletter", "replay", "--config", str(cfg))
            assert rest.stdout.startswith("1 dead letter(s)")
            counts = wait_delivered(sb, "retailrocket", {0, 1, 2})
            assert sorted(counts.values()) == [1, 1, 1]
            assert orjson.loads(shoprelay("deadletter", "list", "--config", str(cfg),
                                          "--json").stdout) == []
            # Vendor states are kept in Redis beside the spool for the command line.
            status = shoprelay("vendors", "status", "--config", str(cfg), "--json")
            assert status.returncode == 0, status.stderr
            assert {(row["vendor"], row["state"]) for row in orjson.loads(status.stdout)} == {
                ("retailrocket", "delivering"), ("goshops", "delivering")}


def test_uvicorn_workers_share_one_redis(tmp_path: Path, prefix: str) -> None:
    """`uvicorn --factory shoprelay.app:from_environment --workers 2`: both workers ingest
    and deliver against one Redis; every event reaches the vendor once."""
    with sandbox() as sb:
        cfg = redis_settings(tmp_path, sb, prefix, vendors=["goshops"])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (tmp_path / "workers.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "shoprelay.app:from_environment",
             "--workers", "2", "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "SHOPRELAY_CONFIG": str(cfg)}, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            def up() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, timeout=30)
            wait_for(lambda: len(holders(prefix, "goshops")) == 2, timeout=20)
            for start in range(0, 60, 10):
                post(url, [view(i, visitor=f"w{i % 7}") for i in range(start, start + 10)])
            counts = wait_delivered(sb, "goshops", set(range(60)))
            time.sleep(0.3)
            assert Counter(delivered(sb, "goshops").values()) == Counter({1: 60})
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        assert counts
