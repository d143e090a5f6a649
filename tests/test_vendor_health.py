"""Vendor health over real HTTP: a relay delivering to the sandboxes, one vendor failing; the
`shoprelay vendors status` command beside it, /admin/health.json and /metrics agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
from servers import wait_for
from test_delivery_support import fault, post, relay, sandbox, view, wait_delivered, write_settings

from shoprelay.delivery.forwarder import DeliveryOptions

TOKEN = "health-admin-token-0123456789"


def test_status_command_page_json_and_metrics_show_the_same_figures(tmp_path: Path) -> None:
    with sandbox() as sb:
        cfg = write_settings(tmp_path / "s.toml", spool=tmp_path / "spool.db", sandbox_url=sb,
                             vendors=["goshops", "retailrocket"],
                             relay={"admin_token": TOKEN})
        fault(sb, "retailrocket", kind="status", status=503, count=100)
        options = DeliveryOptions(idle_poll=0.1, first_retry=30, max_retry=60, timeout=5.0)
        with relay(cfg, delivery=options) as r:
            post(r.url, [view(1, visitor="a"), view(2, visitor="b")])
            wait_delivered(sb, "goshops", {1, 2})
            auth = {"Authorization": f"Bearer {TOKEN}"}

            def figures() -> dict[str, dict]:
                answer = httpx.get(f"{r.url}/admin/health.json", headers=auth).json()
                return {v["vendor"]: v for v in answer["vendors"]}

            found = wait_for(lambda: (f := figures())["retailrocket"]["retried_last_hour"] >= 1
                             and f["goshops"]["delivered_last_hour"] == 2 and f)
            goshops, rr = found["goshops"], found["retailrocket"]
            assert (goshops["state"], goshops["queued"], goshops["sent_last_minute"]) == (
                "delivering", 0, 2)
            assert goshops["limit_per_minute"] == 1200  # 20 a second, the setting's default
            assert rr["state"] == "backing off" and rr["queued"] == 2
            assert rr["last_error"] == "HTTP 503" and rr["oldest_queued_seconds"] >= 0

            command = subprocess.run([sys.executable, "-m", "shoprelay", "vendors", "status",
                                      "--config", str(cfg), "--json"], capture_output=True,
                                     text=True, timeout=60)
            assert command.returncode == 0, command.stderr
            listed = {v["vendor"]: v for v in orjson.loads(command.stdout)}
            for key in ("state", "queued", "delivered_last_hour", "retried_last_hour",
                        "last_error"):
                assert listed["retailrocket"][key] == rr[key], key
                assert listed["goshops"][key] == goshops[key], key
            table = subprocess.run([sys.executable, "-m", "shoprelay", "vendors", "status",
                                    "--config", str(cfg)], capture_output=True, text=True,
                                   timeout=60)
            assert "backing off" in table.stdout and "HTTP 503" in table.stdout

            metrics = httpx.get(f"{r.url}/metrics", headers=auth).text
            assert ('shoprelay_vendor_health_delivered_last_hour{site="shop",vendor="goshops"} 2'
                    in metrics)
            assert ('shoprelay_vendor_health_queued{site="shop",vendor="retailrocket"} 2'
                    in metrics)
            assert 'state="backing off"' in metrics
            assert httpx.get(f"{r.url}/admin/health").status_code == 401
