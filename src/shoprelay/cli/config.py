"""The commands that read the settings file alone: `check-config` and `debug-link`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoprelay import settings as settings_module
from shoprelay.cli.common import load_settings
from shoprelay.settings import SettingsError


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = settings_module.load(args.file)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    vendors = sum(len(site.vendors) for site in loaded.sites.values())
    from shoprelay.vendors import VENDORS

    for site in loaded.sites.values():
        for problem in settings_module.site_warnings(site):
            print(f"{args.file}: warning: {problem}", file=sys.stderr)
        for name, config in site.vendors.items():
            if not config.enabled:
                continue
            for warning in VENDORS[name].warnings(config,
                                                  cookie_name=loaded.relay.cookie_name):
                print(f"{args.file}: warning: sites.{site.name}.vendors.{name}: {warning}",
                      file=sys.stderr)
    print(f"{args.file}: ok ({len(loaded.sites)} site(s), {vendors} vendor table(s))")
    return 0


def cmd_debug_link(args: argparse.Namespace) -> int:
    from shoprelay.operate import admin

    settings = load_settings(args.config)
    if not settings.relay.admin_token:
        print("shoprelay: relay.admin_token is not set, so the debugger is off",
              file=sys.stderr)
        return 2
    print(admin.make_link(settings.relay.admin_token, args.base_url))
    print(f"(open it within {admin.LINK_SECONDS // 60} minutes; the browser then keeps a "
          f"debugger cookie for {admin.SESSION_SECONDS // 3600} hours)", file=sys.stderr)
    return 0


def register_check_config(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)


def register_debug_link(sub: Any) -> None:
    link = sub.add_parser("debug-link", help="print a short-lived link to the live debugger")
    link.add_argument("--config", required=True)
    link.add_argument("--base-url", default="", help="the relay's public address, e.g. "
                      "https://shop.example/t (default: print the path only)")
    link.set_defaults(func=cmd_debug_link)
