"""The commands that look back: `trace`, `vendors status|contact-id` and `backfill`.

Kept apart from cli.py (which only calls `register`), so each stays small. Each opens the
spool the settings name beside a running relay, as `deadletter` does (none of them claims
delivery).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from shoprelay.settings import Settings


def _load(path: str) -> Settings:
    from shoprelay.cli import _load as load

    return load(path)


async def _with_spool(settings: Settings, work: Any) -> Any:
    from shoprelay.cli import _with_spool as with_spool

    return await with_spool(settings, work)


def cmd_trace(args: argparse.Namespace) -> int:
    from shoprelay.operate.trace import find_traces, render_text
    from shoprelay.routing import route_reasons

    settings = _load(args.config)
    given = [v for v in (args.message_id, args.order, args.visitor) if v]
    if len(given) != 1:
        print("shoprelay: give one of MESSAGE_ID, --order ID or --visitor ID", file=sys.stderr)
        return 2
    if args.site and args.site not in settings.sites:
        print(f"shoprelay: no site {args.site!r} in {args.config}", file=sys.stderr)
        return 2
    reasons = route_reasons(settings)
    traces = asyncio.run(_with_spool(settings, lambda spool: find_traces(
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


class _StoredPauses:
    """The pause states a running relay records (issue 13: a file beside a SQLite spool, a
    Redis hash beside a Redis one), read by a command in another process."""

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states

    def pause_reason(self, site: str, vendor: str) -> str | None:
        state = self.states.get(f"{site}/{vendor}", {})
        return str(state.get("reason") or "paused") if state.get("state") == "paused" else None


def cmd_vendors_status(args: argparse.Namespace) -> int:
    """Per site and vendor: state (delivering / paused with reason / backing off /
    disabled), queue, rate against the limit, the last hour, the last error. Exit 3 while a
    vendor is paused, so a monitor can alert on it."""
    from shoprelay.cli import _health_store
    from shoprelay.operate.health import PAUSED, render_text, vendor_status

    settings = _load(args.config)
    now = time.time()
    try:
        states = _health_store(settings).read_all()
    except Exception as exc:  # Redis down: say so rather than print a traceback
        print(f"shoprelay: cannot read vendor states: {exc}", file=sys.stderr)
        return 1

    async def read(spool: Any) -> tuple[Any, Any]:
        return await spool.vendor_figures(now), await spool.stats()

    figures, stats = asyncio.run(_with_spool(settings, read))
    status = vendor_status(settings, figures, _StoredPauses(states), now)
    for row in status:
        row["dead"] = stats.counts.get(row["vendor"], {}).get("dead", 0)
        since = states.get(f"{row['site']}/{row['vendor']}", {}).get("since")
        row["since"] = since if row["state"] == PAUSED else None
    if args.json:
        sys.stdout.write(orjson.dumps(status).decode() + "\n")
    else:
        print(render_text(status))
    return 3 if any(row["state"] == PAUSED for row in status) else 0


def cmd_vendors_contact_id(args: argparse.Namespace) -> int:
    """Retail Rocket's contactExternalId of a user id, and the user behind a contact id."""
    from shoprelay.vendors.retailrocket import contact_external_id, user_id_of_contact

    for value in args.values:
        user = user_id_of_contact(value)
        if user is not None and user != value:
            print(f"{value}\tcontact id of user {user!r}")
        else:
            print(f"{value}\tuser {value!r} -> contactExternalId {contact_external_id(value)}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from shoprelay.delivery.backfill import run_backfill_command

    return run_backfill_command(_load(args.config), args)


def register(sub: Any) -> None:
    """Add the commands to `shoprelay`'s subparsers."""
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

    vendors = sub.add_parser("vendors", help="vendor health (paused on refused credentials "
                             "or address); Retail Rocket contact ids")
    vendors_sub = vendors.add_subparsers(dest="vendors_command", required=True)
    status = vendors_sub.add_parser("status", help="state, queue, rate and the last hour per "
                                    "site and vendor")
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_vendors_status)
    contact = vendors_sub.add_parser("contact-id", help="Retail Rocket's contactExternalId "
                                     "of a user id, and the user behind one")
    contact.add_argument("values", nargs="+", metavar="VALUE")
    contact.set_defaults(func=cmd_vendors_contact_id)

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
