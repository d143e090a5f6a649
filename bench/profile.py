"""Profile the relay under the ingest bench's load (issue 15). Not a test: run by hand.

    .venv/bin/pip install py-spy    # not a dependency: only this script runs it, as a command
    .venv/bin/python bench/profile.py [--kind batch|single] [--spool sqlite|redis] [--top 25]

Starts the vendor sandboxes and one `shoprelay serve` exactly as `bench/ingest.py` does (five
vendors configured, forwarding while it ingests), pinned to CPU 0 with the load generator on
CPU 1, and runs `py-spy record --format raw` on the relay (all threads, GIL-idle samples left
out, and only the thread holding the GIL: the CPU the one core spends) while the generator
posts. Prints the functions with the most samples: *self* (the
function's own code) and *total* (the function and what it calls), as shares of all samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import (  # noqa: E402 - after the path is set
    LIMITS,
    PY,
    REDIS_URL,
    children,
    free_port,
    load,
    one_event,
    pin,
    settings_file,
    start,
    stop,
    twenty_events,
)


def top(raw: Path, count: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        weight = int(n)
        samples += weight
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    print(f"{samples} samples")
    print("self:")
    for name, n in own.most_common(count):
        print(f"  {100 * n / samples:5.1f} %  {name}")
    print("total (with callees):")
    for name, n in total.most_common(count):
        print(f"  {100 * n / samples:5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("batch", "single"), default="batch")
    parser.add_argument("--spool", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--delivery-process", action="store_true",
                        help="relay.delivery_process = true: profile the serving process only "
                             "(its delivery process runs on the other core)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="shoprelay-profile-"))
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = start([PY, "-m", "uvicorn", "--factory", "shoprelay.sandbox:create_app",
                     "--port", str(sandbox_port), "--log-level", "warning", "--lifespan", "off"],
                    f"{sandbox_url}/_sandbox/requests", work / "sandbox.log")
    spool = REDIS_URL if args.spool == "redis" else None
    cfg = settings_file(work, sandbox_url, sync="full", vendors=list(LIMITS), spool=spool,
                        redis_prefix=f"profile{os.getpid()}:",
                        relay_lines=["delivery_process = true"] if args.delivery_process else [])
    port = free_port()
    relay = start(pin(0) + [PY, "-m", "shoprelay", "serve", "--config", str(cfg), "--port",
                            str(port), "--log-level", "warning"],
                  f"http://127.0.0.1:{port}/healthz", work / "relay.log")
    pin(1, os.getpid())
    if args.delivery_process:
        for child in children(relay.pid):
            pin(1, child)
    raw = work / "profile.txt"
    try:
        recorder = subprocess.Popen([spy, "record", "--pid", str(relay.pid), "--format", "raw",
                                     "--threads", "--gil", "--rate", "200", "--duration",
                                     str(int(args.seconds)), "--output", str(raw)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        path, body = ("/v1/batch", twenty_events) if args.kind == "batch" else ("/v1/t",
                                                                                 one_event)
        count, _, errors = asyncio.run(load(port, path, body, seconds=args.seconds - 1,
                                            connections=args.connections, warmup=0.0))
        recorder.wait(timeout=60)
        per = 20 if args.kind == "batch" else 1
        print(f"{args.kind}, {args.spool}: {count * per / (args.seconds - 1):.0f} events/s "
              f"while profiled (non-2xx {errors})")
        top(raw, args.top)
    finally:
        stop(relay)
        stop(sandbox)
        print(f"logs and raw profile: {work}")


if __name__ == "__main__":
    main()
