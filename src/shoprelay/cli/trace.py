"""`shoprelay trace`: what became of a message at every vendor, from the spool beside a
running relay (what /debug/trace answers)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from shoprelay.cli.common import load_settings, with_spool


def cmd_trace(args: argparse.Namespace) -> int:
    from shoprelay.operate.trace import find_traces, render_text
    from shoprelay.routing import route_reasons

    settings = load_settings(args.config)
    given = [v for v in (args.message_id, args.order, args.visitor) if v]
    if len(given) != 1:
        print("shoprelay: give one of MESSAGE_ID, --order ID or --visitor ID", file=sys.stderr)
        return 2
    if args.site and args.site not in settings.sites:
        print(f"shoprelay: no site {args.site!r} in {args.config}", file=sys.stderr)
        return 2
    reasons = route_reasons(settings)
    traces = asyncio.run(with_spool(settings, lambda spool: find_traces(
        settings, spool, reasons, message_id=args.message_id, order_id=args.order,
        visitor_id=args.visitor, site=args.site, limit=args.limit)))
    if args.json:
        sys.stdout.write(orjson.dumps(traces, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif traces:
        print("\n\n".join(render_text(t) for t in traces))
    if not traces:
        print("no such message in the spool (never received, or older than the retention)",
              file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    """Add the command to `shoprelay`'s subparsers."""
    trace = sub.add_parser("trace", help="what became of a message at every vendor")
    trace.add_argument("message_id", nargs="?", metavar="MESSAGE_ID")
    trace.add_argument("--config", required=True)
    trace.add_argument("--order", metavar="ORDER_ID", help="the message(s) of an order id")
    trace.add_argument("--visitor", metavar="VISITOR_ID", help="a visitor's messages, newest "
                       "first")
    trace.add_argument("--site", help="only this site (default: every site)")
    trace.add_argument("--limit", type=int, default=20)
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(func=cmd_trace)
