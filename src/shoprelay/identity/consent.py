"""Consent as the visitor gave it, and what it allows.

The tracker (or any client) states consent per category in `context.consent`, e.g.
`{"marketing": true, "analytics": false}`. A `Sec-GPC: 1` request header, or `"gpc": true` in
that object (navigator.globalPrivacyControl seen by the tracker), is a refusal of marketing
whatever else was said. Each vendor table names the category it needs (`consent`, default
"marketing"): an explicit refusal always holds the event back; an unstated category holds it
back only where the site sets `consent_required`.
"""

from __future__ import annotations

from typing import Any

MARKETING = "marketing"


def consent_of(message: dict[str, Any], gpc_header: bool) -> dict[str, bool] | None:
    """The message's consent per category, with Global Privacy Control applied; None if the
    client stated nothing (and sent no GPC)."""
    context = message.get("context")
    stated = context.get("consent") if isinstance(context, dict) else None
    consent: dict[str, bool] = {}
    gpc = gpc_header
    if isinstance(stated, dict):
        for category, value in stated.items():
            if category == "gpc":
                gpc = gpc or value is True
            elif isinstance(value, bool):
                consent[str(category)] = value
    if gpc:
        consent[MARKETING] = False
        consent["gpc"] = True
    return consent or None


def refuses_everything(consent: dict[str, bool] | None) -> bool:
    """True when consent was stated and not one category is granted (no cookie then)."""
    if consent is None:
        return False
    return not any(v for k, v in consent.items() if k != "gpc")


def allows(consent: dict[str, bool] | None, category: str, *, required: bool) -> bool:
    if not category:
        return True
    granted = None if consent is None else consent.get(category)
    if granted is None:
        return not required
    return granted
