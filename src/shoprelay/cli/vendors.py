"""`shoprelay vendors status|contact-id`: vendor health as a running relay records it, and
Retail Rocket's contact ids."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from shoprelay.cli.common import load_settings, with_spool
from shoprelay.spool.base import Spool, SpoolStats, VendorFigures


class StoredPauses:
    """The pause states a running relay records (issue 13: a file beside a SQLite spool, a
    Redis hash beside a Redis one), read by a command in another process."""

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states

    def pause_reason(self, site: str, vendor: str) -> str | None:
        state = self.states.get(f"{site}/{vendor}", {})
        if state.get("state") != "paused":
            return None
        return str(state.get("shown_reason") or state.get("reason") or "paused")

    def refused_event(self, site: str, vendor: str) -> dict[str, Any] | None:
        """The last event refused alone and dead-lettered, within the hour."""
        from shoprelay.delivery.health import recent_refusal

        state = self.states.get(f"{site}/{vendor}", {})
        return recent_refusal(state.get("refused_event"), state.get("events_refused"))


def cmd_vendors_status(args: argparse.Namespace) -> int:
    """Per site and vendor: state (delivering / paused with reason / backing off /
    disabled), queue, rate against the limit, the last hour, the last error. Exit 3 while a
    vendor is paused, so a monitor can alert on it."""
    from shoprelay.operate.health import PAUSED, render_text, vendor_status
    from shoprelay.runtime import health_store

    settings = load_settings(args.config)
    now = time.time()
    store = health_store(settings)
    try:
        states = store.read_all() if store is not None else {}
    except Exception as exc:  # Redis down: say so rather than print a traceback
        print(f"shoprelay: cannot read vendor states: {exc}", file=sys.stderr)
        return 1

    async def read(spool: Spool) -> tuple[list[VendorFigures], SpoolStats]:
        return await spool.vendor_figures(now), await spool.stats()

    figures, stats = asyncio.run(with_spool(settings, read))
    status = vendor_status(settings, figures, StoredPauses(states), now)
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


def register(sub: Any) -> None:
    """Add the commands to `shoprelay`'s subparsers."""
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
