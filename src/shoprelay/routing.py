"""Which vendors get a stored event, and why the others do not.

The rules are written once, as reasons: the spool's router keeps the vendors without one, a
trace shows the others' (recomputed from the stored event, which carries its consent, bot flag
and source as they were at ingest), and a backfill sends a vendor added later what the router
would have sent it. So "why not" is always the decision that was taken, by the same functions.
"""

from __future__ import annotations

from collections.abc import Callable

from shoprelay.events import ORDER_COMPLETED, StoredEvent
from shoprelay.identity.consent import allows
from shoprelay.settings import Settings, SiteSettings
from shoprelay.spool.base import Router
from shoprelay.vendors import VENDORS

#: Given a stored event: every vendor configured for its site → None (it gets the event) or
#: the reason it does not.
RouteReasons = Callable[[StoredEvent], dict[str, str | None]]

#: Why a browser's copy of an order reaches no vendor where the shop's backend speaks for
#: orders (the words the ingest answer, the trace and the debugger use).
ORDER_HELD_BACK = ('held back: this site takes orders from its backend only '
                   '(order_source = "server")')


def order_held_back(site: SiteSettings, event: StoredEvent) -> bool:
    """The order rule: with `order_source = "server"` only the backend's copies of an order
    are sent (browser copies are stored and sent nowhere), so a browser holding the public
    write key cannot squat an order id."""
    return (event.name == ORDER_COMPLETED and event.enrichment.source == "browser"
            and site.order_source == "server")


def route_reasons(settings: Settings) -> RouteReasons:
    """Why each configured vendor does (None) or does not get an event, in the order the
    checks are made: the first that refuses is the reason."""
    configured = {
        name: [(vendor_name, VENDORS[vendor_name], config)
               for vendor_name, config in site.vendors.items()]
        for name, site in settings.sites.items()
    }

    def reasons(event: StoredEvent) -> dict[str, str | None]:
        site = settings.sites.get(event.site)
        if site is None:
            return {}
        held = event.enrichment.bot and not site.forward_bots
        consent = event.enrichment.consent
        order_held = order_held_back(site, event)
        event_name = event.name  # a property: computed once, not once per vendor
        out: dict[str, str | None] = {}
        for name, vendor, config in configured.get(event.site, []):
            if not config.enabled:
                out[name] = "vendor disabled (enabled = false)"
            elif held:
                out[name] = "held back as a bot (forward_bots = false)"
            elif event_name not in vendor.handles:
                out[name] = f"no mapping: {name} has no mapping for {event_name!r}"
            elif not vendor.wants(event, config):
                out[name] = f"not in {name}'s events allow-list"
            elif not allows(consent, config.consent, required=site.consent_required):
                stated = None if consent is None else consent.get(config.consent)
                why = "refused" if stated is False else "not given (consent_required = true)"
                out[name] = f"consent {why} for category {config.consent!r}"
            elif order_held:
                out[name] = ORDER_HELD_BACK
            else:
                out[name] = None
        return out

    return reasons


def make_router(settings: Settings) -> Router:
    """The spool's router: the vendors `route_reasons` finds no reason against."""
    reasons = route_reasons(settings)

    def route(event: StoredEvent) -> list[str]:
        return [name for name, reason in reasons(event).items() if reason is None]

    return route
