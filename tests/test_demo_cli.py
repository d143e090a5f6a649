"""`shoprelay demo` as a newcomer runs it: the printed debugger URL works and shows events."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from servers import free_port, wait_for

from shoprelay.demo import DEMO_WRITE_KEY


def test_demo_prints_a_working_live_debugger_url(tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoprelay", "demo", "--port", str(port),
         "--sandbox-port", str(sandbox_port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        text = "".join(banner)
        found = re.search(r"live debugger.*?(http://\S+/debug\?link=\S+)", text)
        token_line = re.search(r"admin token \(this session only\): +(\S+)", text)
        assert found and token_line, text
        debugger, token = found.group(1), token_line.group(1)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), timeout=30)
        # As a browser does: the link is traded for the debugger's cookie, then the page.
        with httpx.Client(follow_redirects=True) as browser:
            page = browser.get(debugger)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert httpx.get(f"{base}/debug").status_code == 401
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200

        # The stream the page reads shows an event arriving.
        seen: list[str] = []

        def read_stream() -> None:
            with httpx.stream("GET", f"{base}/debug/stream",
                              headers={"Authorization": f"Bearer {token}"},
                              timeout=30) as stream:
                for line in stream.iter_lines():
                    seen.append(line)
                    if "Product Viewed" in line:
                        return

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()

        def post() -> bool:
            answer = httpx.post(f"{base}/v1/track?writeKey={DEMO_WRITE_KEY}", json={
                "event": "Product Viewed", "properties": {"product_id": "101", "price": 89}})
            assert answer.status_code == 200
            return any("Product Viewed" in line for line in seen)

        # The stream subscribes when its request arrives: send until the event shows.
        wait_for(post, timeout=20, interval=0.3)
        reader.join(timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
