"""The `shoprelay` command (CONTRACT §5): serve, deliver, demo, check-config, deadletter,
spool, debug-link, trace, vendors (status, contact-id) and backfill.

One module per group of commands, each adding its own to the parser; what they share (the
settings file, the spool beside a running relay) is in `shoprelay.cli.common`.
"""

from __future__ import annotations

import argparse

from shoprelay.cli import backfill, config, serve, spool, trace, vendors
from shoprelay.operate.logs import configure as configure_logs


def build_parser() -> argparse.ArgumentParser:
    # The docstring's first paragraph: the rest is for the code's readers.
    parser = argparse.ArgumentParser(prog="shoprelay",
                                     description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order `shoprelay --help` lists them.
    serve.register(sub)  # serve, deliver, demo
    config.register_check_config(sub)
    spool.register(sub)  # deadletter, spool
    config.register_debug_link(sub)
    trace.register(sub)
    vendors.register(sub)  # vendors status, vendors contact-id
    backfill.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logs("info", "text")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
