"""The commands that run the relay: `serve`, `deliver` (the delivery process `serve` starts)
and `demo` (relay, demo shop and vendor sandboxes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from shoprelay.cli.common import load_settings
from shoprelay.operate.logs import configure as configure_logs
from shoprelay.settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shoprelay.app import create_app
    from shoprelay.operate.serving import uvicorn_options

    settings = load_settings(args.config)
    configure_logs(args.log_level, settings.relay.log_format)
    app = create_app(settings, config_path=args.config, log_level=args.log_level)
    try:
        # Before uvicorn starts: a second relay on one SQLite file says why in one line.
        # (With `delivery_process` the delivery process claims it, and `serve` fails with
        # its reason if it cannot.)
        if not settings.relay.delivery_process:
            app.state.spool.claim_delivery()
    except RuntimeError as exc:
        print(f"shoprelay: {exc}", file=sys.stderr)
        return 2
    grace = settings.relay.shutdown_grace_seconds

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM/SIGINT: the forwarder starts no new vendor request from now on, while
            # uvicorn stops accepting and lets ingest requests finish (both within the grace).
            forwarder = getattr(app.state, "forwarder", None)
            if forwarder is not None:
                forwarder.begin_stop_threadsafe()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level,
        # The relay reads X-Forwarded-* itself, only from `trusted_proxies`.
        proxy_headers=False,
        # Access logs would write every visitor's IP address; the relay logs what it needs.
        access_log=False,
        timeout_graceful_shutdown=max(1, round(grace)), server_header=False,
        # Our own handlers (JSON lines with request ids) for uvicorn's loggers too.
        log_config=None,
        # Header size, header-read and keep-alive limits: the relay may face clients directly.
        **uvicorn_options(settings.relay),
    )
    Server(config).run()
    return 0


async def deliver(settings: Settings, wake_fd: int, report_fd: int) -> int:
    """The delivery process: claims delivery from the spool (SQLite: refused while another
    relay delivers from the file), then delivers as the serving process would have."""
    from shoprelay.delivery.process import run_delivery
    from shoprelay.runtime import close_spool, make_forwarder, open_spool

    spool = open_spool(settings)
    spool.start()
    try:
        try:
            spool.claim_delivery()
        except RuntimeError as exc:
            logging.getLogger("shoprelay.delivery").error("%s", exc)
            return 2
        await run_delivery(make_forwarder(settings, spool), wake_fd, report_fd,
                           settings.relay.shutdown_grace_seconds)
        return 0
    finally:
        await close_spool(spool)


def cmd_deliver(args: argparse.Namespace) -> int:
    """The delivery process `serve` starts with `relay.delivery_process = true`."""
    settings = load_settings(args.config)
    configure_logs(args.log_level, settings.relay.log_format)
    return asyncio.run(deliver(settings, args.wake_fd, args.report_fd))


def cmd_demo(args: argparse.Namespace) -> int:
    from shoprelay.demo import run_demo

    asyncio.run(run_demo(host=args.host, port=args.port, sandbox_port=args.sandbox_port,
                         data_dir=args.data_dir))
    return 0


def register(sub: Any) -> None:
    """Add the commands to `shoprelay`'s subparsers."""
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", required=True, help="settings file (TOML)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    deliver = sub.add_parser("deliver", help="the delivery process `serve` starts itself "
                             "with relay.delivery_process = true (not run by hand)")
    deliver.add_argument("--config", required=True)
    deliver.add_argument("--log-level", default="info")
    deliver.add_argument("--wake-fd", type=int, required=True)
    deliver.add_argument("--report-fd", type=int, required=True)
    deliver.set_defaults(func=cmd_deliver)

    demo = sub.add_parser("demo", help="relay + demo shop + vendor sandboxes on 127.0.0.1")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8900, help="shop and relay port")
    demo.add_argument("--sandbox-port", type=int, default=8901)
    demo.add_argument("--data-dir", default=None, help="where the demo spool lives "
                      "(default: a temporary directory)")
    demo.set_defaults(func=cmd_demo)
