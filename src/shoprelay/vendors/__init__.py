"""Vendor adapters, one module per vendor, found by name.

Adding a vendor means adding a module here that defines `VENDOR` (and its sandbox in
`shoprelay.sandbox`); nothing else needs to know about it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from shoprelay.vendors.base import Vendor

_NOT_ADAPTERS = {"base"}


def _discover() -> dict[str, Vendor[Any]]:
    found: dict[str, Vendor[Any]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _NOT_ADAPTERS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        vendor = getattr(module, "VENDOR", None)
        if isinstance(vendor, Vendor):
            found[vendor.name] = vendor
    return found


VENDORS: dict[str, Vendor[Any]] = _discover()

__all__ = ["VENDORS", "Vendor"]
