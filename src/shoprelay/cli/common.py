"""What the commands share: loading the settings file, opening the spool beside a relay."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shoprelay import settings as settings_module
from shoprelay.settings import Settings, SettingsError
from shoprelay.spool.base import Spool

T = TypeVar("T")


def load_settings(path: str) -> Settings:
    """The settings file, or exit 2 with its problems on one line each (no traceback)."""
    try:
        return settings_module.load(path)
    except SettingsError as exc:
        print(f"shoprelay: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def with_spool(settings: Settings, work: Callable[[Spool], Awaitable[T]]) -> T:
    """Run `work` on the spool the settings name (SQLite or Redis), opened beside a running
    relay as the relay opens it (shoprelay.runtime) and closed after; it claims no delivery."""
    from shoprelay.runtime import close_spool, open_spool

    spool = open_spool(settings)
    spool.start()
    try:
        return await work(spool)
    finally:
        await close_spool(spool)
