"""`shoprelay deadletter list / replay` and `shoprelay spool stats / prune` as real
subprocesses, against a spool a relay filled over real HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from servers import wait_for
from test_delivery_support import (
    clear_faults,
    fault,
    post,
    relay,
    sandbox,
    view,
    wait_delivered,
    write_settings,
)


def shoprelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoprelay", *args], capture_output=True,
                          text=True, timeout=60)


def test_deadletter_list_and_replay(tmp_path: Path) -> None:
    with sandbox() as sb:
        # One Retail Rocket call per event, so each injected 400 lands on one event.
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["retailrocket", "goshops"],
                             overrides={"retailrocket": {"visitor_events": False}})
        fault(sb, "retailrocket", kind="status", status=400, count=3)
        # 400, not 404: a 404 on the vendor's endpoint pauses the vendor (issue 13).
        fault(sb, "goshops", kind="status", status=400, count=1)
        with relay(cfg) as r:
            post(r.url, [view(i, visitor="a") for i in range(4)])
            wait_delivered(sb, "retailrocket", {3})
            spool = r.app.state.spool
            wait_for(lambda: len(asyncio.run(spool.dead_letters())) == 4)
        # With no relay running, the command line reads the same file.
        listed = shoprelay("deadletter", "list", "--config", str(cfg), "--json")
        assert listed.returncode == 0, listed.stderr
        letters = orjson.loads(listed.stdout)
        assert sorted((d["vendor"], d["messageId"], d["status"]) for d in letters) == [
            ("goshops", "m0", 400), ("retailrocket", "m0", 400), ("retailrocket", "m1", 400),
            ("retailrocket", "m2", 400)]
        assert all(d["request"].startswith("POST ") and "injected fault" in d["response"]
                   for d in letters)

        only_rr = orjson.loads(shoprelay("deadletter", "list", "--config", str(cfg), "--vendor",
                                         "retailrocket", "--json").stdout)
        assert len(only_rr) == 3
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        later = shoprelay("deadletter", "list", "--config", str(cfg), "--since", future)
        assert later.returncode == 0 and "no dead letters" in later.stdout
        text = shoprelay("deadletter", "list", "--config", str(cfg), "--vendor", "goshops")
        assert "goshops" in text.stdout and "status=400" in text.stdout
        bad = shoprelay("deadletter", "list", "--config", str(cfg), "--since", "yesterday")
        assert bad.returncode == 2 and "ISO-8601" in bad.stderr
        # --site and --status narrow a listing and a replay alike (one filter for both).
        mine = orjson.loads(shoprelay("deadletter", "list", "--config", str(cfg), "--site",
                                      "shop", "--status", "400", "--vendor", "goshops",
                                      "--json").stdout)
        assert [(d["site"], d["vendor"], d["messageId"]) for d in mine] == [
            ("shop", "goshops", "m0")]
        for narrow in (["--site", "other"], ["--status", "500"]):
            none = shoprelay("deadletter", "list", "--config", str(cfg), *narrow)
            assert none.returncode == 0 and "no dead letters" in none.stdout, narrow
            nothing = shoprelay("deadletter", "replay", "--config", str(cfg), *narrow)
            assert nothing.stdout.startswith("0 dead letter(s)"), narrow

        first = next(d for d in only_rr if d["messageId"] == "m0")
        one = shoprelay("deadletter", "replay", "--config", str(cfg), "--id", str(first["id"]))
        assert one.returncode == 0 and one.stdout.startswith("1 dead letter(s) queued again")
        rest = shoprelay("deadletter", "replay", "--config", str(cfg), "--vendor", "retailrocket")
        assert rest.stdout.startswith("2 dead letter(s)")
        left = orjson.loads(shoprelay("deadletter", "list", "--config", str(cfg),
                                      "--json").stdout)
        assert [(d["vendor"], d["messageId"]) for d in left] == [("goshops", "m0")]

        clear_faults(sb, "retailrocket")
        with relay(cfg):  # a relay (re)started on the spool delivers the replayed work
            counts = wait_delivered(sb, "retailrocket", {0, 1, 2, 3})
        assert sorted(counts.values()) == [1, 1, 1, 1]


def test_spool_stats_and_prune(tmp_path: Path) -> None:
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["goshops", "alana"],
                             overrides={"alana": {"base_url": "http://127.0.0.1:9"}})
        with relay(cfg) as r:
            post(r.url, [view(i, visitor="a") for i in range(3)])
            wait_delivered(sb, "goshops", {0, 1, 2})
            spool = r.app.state.spool
            wait_for(lambda: asyncio.run(spool.stats()).counts["goshops"].get("delivered") == 3)
        out = shoprelay("spool", "stats", "--config", str(cfg), "--json")
        assert out.returncode == 0, out.stderr
        stats = orjson.loads(out.stdout)
        assert stats["file_bytes"] > 0 and stats["messages"] == 3 and stats["queued"] == 3
        assert stats["vendors"]["goshops"]["delivered"] == 3
        assert stats["vendors"]["alana"]["queued"] == 3
        assert stats["vendors"]["alana"]["oldest_queued_age_seconds"] >= 0
        text = shoprelay("spool", "stats", "--config", str(cfg)).stdout
        assert "queued: 3" in text and "alana\t" in text

        pruned = shoprelay("spool", "prune", "--config", str(cfg), "--hours", "0")
        assert pruned.stdout.startswith("3 finished deliveries"), pruned.stdout
        stats = orjson.loads(shoprelay("spool", "stats", "--config", str(cfg), "--json").stdout)
        assert "delivered" not in stats["vendors"].get("goshops", {}) and stats["queued"] == 3
