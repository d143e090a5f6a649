"""The `shoprelay` command (CONTRACT §5): serve, demo, check-config, deadletter, spool,
debug-link; trace, vendors (status, contact-id) and backfill live in cli_trace."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from shoprelay import settings as settings_module
from shoprelay.operate.logs import configure as configure_logs
from shoprelay.settings import Settings, SettingsError


def _load(path: str) -> Settings:
    try:
        return settings_module.load(path)
    except SettingsError as exc:
        print(f"shoprelay: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shoprelay.app import create_app
    from shoprelay.operate.serving import uvicorn_options

    settings = _load(args.config)
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


def cmd_deliver(args: argparse.Namespace) -> int:
    """The delivery process `serve` starts with `relay.delivery_process = true`."""
    from shoprelay.delivery.process import run_delivery

    settings = _load(args.config)
    configure_logs(args.log_level, settings.relay.log_format)
    return asyncio.run(run_delivery(settings, args.wake_fd, args.report_fd))


def cmd_demo(args: argparse.Namespace) -> int:
    from shoprelay.demo import run_demo

    asyncio.run(run_demo(host=args.host, port=args.port, sandbox_port=args.sandbox_port,
                         data_dir=args.data_dir))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = settings_module.load(args.file)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    vendors = sum(len(site.vendors) for site in loaded.sites.values())
    from shoprelay.vendors import VENDORS

    for site in loaded.sites.values():
        for name, config in site.vendors.items():
            if not config.enabled:
                continue
            for warning in VENDORS[name].warnings(config,
                                                  cookie_name=loaded.relay.cookie_name):
                print(f"{args.file}: warning: sites.{site.name}.vendors.{name}: {warning}",
                      file=sys.stderr)
    print(f"{args.file}: ok ({len(loaded.sites)} site(s), {vendors} vendor table(s))")
    return 0


def _parse_since(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def _with_spool(settings: Settings, work: Any) -> Any:
    from shoprelay.runtime import close_spool, open_spool

    spool = open_spool(settings)  # SQLite or Redis
    spool.start()
    try:
        return await work(spool)
    finally:
        await close_spool(spool)


def cmd_deadletter(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if args.action == "list":
        try:
            since = _parse_since(args.since)
        except ValueError:
            print(f"shoprelay: --since must be ISO-8601, got {args.since!r}", file=sys.stderr)
            return 2
        letters = asyncio.run(_with_spool(settings, lambda s: s.dead_letters(
            vendor=args.vendor, since=since, dead_id=args.id)))
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
    count = asyncio.run(_with_spool(settings, lambda s: s.replay(vendor=args.vendor,
                                                                 dead_id=args.id)))
    print(f"{count} dead letter(s) queued again; a running relay delivers them")
    return 0


def cmd_spool(args: argparse.Namespace) -> int:
    import time

    settings = _load(args.config)
    if args.action == "prune":
        hours = settings.relay.retention_hours if args.hours is None else args.hours
        removed = asyncio.run(_with_spool(settings,
                                          lambda s: s.prune(time.time() - hours * 3600)))
        print(f"{removed} finished deliveries older than {hours:g} h pruned")
        return 0
    stats = asyncio.run(_with_spool(settings, lambda s: s.stats()))
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


def cmd_debug_link(args: argparse.Namespace) -> int:
    from shoprelay.operate import admin

    settings = _load(args.config)
    if not settings.relay.admin_token:
        print("shoprelay: relay.admin_token is not set, so the debugger is off",
              file=sys.stderr)
        return 2
    print(admin.make_link(settings.relay.admin_token, args.base_url))
    print(f"(open it within {admin.LINK_SECONDS // 60} minutes; the browser then keeps a "
          f"debugger cookie for {admin.SESSION_SECONDS // 3600} hours)", file=sys.stderr)
    return 0


def _health_store(settings: Settings) -> Any:
    """The store a relay with these settings writes its vendor states to."""
    from shoprelay.runtime import health_store

    return health_store(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoprelay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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

    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    dead = sub.add_parser("deadletter", help="inspect and replay failed deliveries")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("--config", required=True)
    dead.add_argument("--vendor")
    dead.add_argument("--id", type=int)
    dead.add_argument("--since", help="ISO-8601; list only dead letters since then")
    dead.add_argument("--json", action="store_true", help="list as JSON")
    dead.set_defaults(func=cmd_deadletter)

    spool = sub.add_parser("spool", help="spool size and retention")
    spool.add_argument("action", choices=["stats", "prune"])
    spool.add_argument("--config", required=True)
    spool.add_argument("--json", action="store_true", help="stats as JSON")
    spool.add_argument("--hours", type=float, help="prune: finished work older than this "
                       "(default: retention_hours)")
    spool.set_defaults(func=cmd_spool)

    link = sub.add_parser("debug-link", help="print a short-lived link to the live debugger")
    link.add_argument("--config", required=True)
    link.add_argument("--base-url", default="", help="the relay's public address, e.g. "
                      "https://shop.example/t (default: print the path only)")
    link.set_defaults(func=cmd_debug_link)
    from shoprelay.cli_trace import register  # trace, vendors, backfill

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logs("info", "text")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
