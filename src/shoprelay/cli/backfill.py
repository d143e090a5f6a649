"""`shoprelay backfill`: send stored history to a vendor added later (shoprelay.delivery.
backfill does it; this is its command line)."""

from __future__ import annotations

import argparse
from typing import Any

from shoprelay.cli.common import load_settings


def cmd_backfill(args: argparse.Namespace) -> int:
    from shoprelay.delivery.backfill import run_backfill_command

    return run_backfill_command(load_settings(args.config), args)


def register(sub: Any) -> None:
    """Add the command to `shoprelay`'s subparsers."""
    backfill = sub.add_parser("backfill", help="send stored history to a vendor added later")
    backfill.add_argument("--config", required=True)
    backfill.add_argument("--vendor", required=True)
    backfill.add_argument("--site", help="default: every site that has the vendor")
    backfill.add_argument("--since", required=True, help="ISO-8601 (UTC if no offset)")
    backfill.add_argument("--until", help="ISO-8601; default: now")
    backfill.add_argument("--dry-run", action="store_true",
                          help="count per event type and show sample requests; send nothing")
    backfill.add_argument("--share", type=float, default=None,
                          help="share of the vendor's rate limit to use (default: the "
                               "relay's backfill_share, 0.5)")
    backfill.add_argument("--sample", type=int, default=3, help="dry run: requests shown")
    backfill.set_defaults(func=cmd_backfill)
