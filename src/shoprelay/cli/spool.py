"""The commands on the spool beside a running relay: `deadletter list|replay` and
`spool stats|prune`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from shoprelay.cli.common import load_settings, with_spool
from shoprelay.spool.base import LetterFilter


def parse_since(text: str | None) -> float | None:
    """An ISO-8601 moment as a timestamp (UTC when it names no offset); None for none."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def cmd_deadletter(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        since = parse_since(args.since)
    except ValueError:
        print(f"shoprelay: --since must be ISO-8601, got {args.since!r}", file=sys.stderr)
        return 2
    # One filter for the listing and the replay: what `list` shows is what `replay` queues.
    where = LetterFilter(site=args.site, vendor=args.vendor or None, dead_id=args.id,
                         since=since, status=args.status)
    if args.action == "list":
        letters = asyncio.run(with_spool(settings, lambda s: s.dead_letters(where)))
        if args.json:
            sys.stdout.write(orjson.dumps([d.to_dict() for d in letters]).decode() + "\n")
            return 0
        if not letters:
            print("no dead letters")
            return 0
        for d in letters:
            when = datetime.fromtimestamp(d.failed_at, UTC).isoformat(timespec="seconds")
            # A part letter is one request of the event (one order line), replayed alone.
            what = d.event.name if d.part is None else f"{d.event.name} (request {d.part})"
            print(f"{d.id}\t{when}\t{d.site}/{d.vendor}\t{what}\t"
                  f"status={d.status}\tattempts={d.attempts}\t{d.error}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    count = asyncio.run(with_spool(settings, lambda s: s.replay(where)))
    print(f"{count} dead letter(s) queued again; a running relay delivers them")
    return 0


def cmd_spool(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.action == "prune":
        hours = settings.relay.retention_hours if args.hours is None else args.hours
        removed = asyncio.run(with_spool(settings,
                                         lambda s: s.prune(time.time() - hours * 3600)))
        print(f"{removed} finished deliveries older than {hours:g} h pruned")
        return 0
    stats = asyncio.run(with_spool(settings, lambda s: s.stats()))
    now = time.time()
    if args.json:
        sys.stdout.write(orjson.dumps(stats.to_dict(now)).decode() + "\n")
        return 0
    # file_bytes is the database file and its WAL (SQLite) or Redis's used_memory.
    print(f"file: {stats.file_bytes} bytes; messages: {stats.messages}; "
          f"queued: {stats.queued()}")
    for vendor, counts in sorted(stats.counts.items()):
        oldest = stats.oldest_queued.get(vendor)
        age = f"\toldest queued {now - oldest:.0f} s" if oldest is not None else ""
        states = "\t".join(f"{name}={count}" for name, count in sorted(counts.items()))
        print(f"{vendor}\t{states}{age}")
    return 0


def register(sub: Any) -> None:
    """Add the commands to `shoprelay`'s subparsers."""
    dead = sub.add_parser("deadletter", help="inspect and replay failed deliveries")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("--config", required=True)
    dead.add_argument("--vendor")
    dead.add_argument("--id", type=int)
    dead.add_argument("--site", help="only the dead letters of this site")
    dead.add_argument("--status", type=int, help="only those the vendor answered with this "
                      "HTTP status")
    dead.add_argument("--since", help="ISO-8601; only dead letters that failed since then")
    dead.add_argument("--json", action="store_true", help="list as JSON")
    dead.set_defaults(func=cmd_deadletter)

    spool = sub.add_parser("spool", help="spool size and retention")
    spool.add_argument("action", choices=["stats", "prune"])
    spool.add_argument("--config", required=True)
    spool.add_argument("--json", action="store_true", help="stats as JSON")
    spool.add_argument("--hours", type=float, help="prune: finished work older than this "
                       "(default: retention_hours)")
    spool.set_defaults(func=cmd_spool)
