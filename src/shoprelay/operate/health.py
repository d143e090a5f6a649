"""Vendor health at a glance: per site and vendor, is it delivering, and how is it doing.

The figures come from the spool (`Spool.vendor_figures`), not from one process's memory: every
relay process, the admin page, `/metrics` and `shoprelay vendors status` beside a running relay
all see the same numbers. The pause state is read through `operate.trace.PauseState` (issue 13
keeps it; without it no vendor shows as paused), and, where the holder of the pauses has it,
the last event a vendor refused alone (`refused_event`, issue 22): a paused vendor says
whether it refuses everything, a delivering one that it refused one event, dead-lettered.
"""

from __future__ import annotations

import html
import time
from typing import Any

from shoprelay.operate.trace import NoPauses, PauseState, iso
from shoprelay.settings import Settings
from shoprelay.spool.base import VendorFigures
from shoprelay.vendors import VENDORS
from shoprelay.vendors.base import VendorConfig

DELIVERING, PAUSED, BACKING_OFF, DISABLED = "delivering", "paused", "backing off", "disabled"


def limit_per_minute(vendor: str, config: Any) -> float | None:
    """The vendor's tightest documented limit, in requests per minute (None: no limit)."""
    adapter = VENDORS.get(vendor)
    limits = adapter.rate_limits(config) if adapter is not None else []
    rates = [limit.requests * 60.0 / limit.per_seconds for limit in limits if limit.per_seconds]
    return round(min(rates), 1) if rates else None


def refused_event(pauses: Any, site: str, vendor: str) -> dict[str, Any] | None:
    """The last event (site, vendor) refused alone and dead-lettered within the hour, when
    `pauses` knows it (a forwarder, the delivery process's view, the stored states)."""
    read = getattr(pauses, "refused_event", None)
    found = read(site, vendor) if callable(read) else None
    return found if isinstance(found, dict) else None


def one_event_reason(refusal: dict[str, Any]) -> str:
    """How a delivering vendor that refused one event reads (short: a metric label)."""
    status = refusal.get("status")
    count = int(refusal.get("count") or 1)
    what = "one event refused" if count == 1 else f"{count} events refused one by one"
    return f"{what}, dead-lettered" + (f" (HTTP {status})" if status else "")


def readiness(workers: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """/readyz's `paused_vendors` (with what the pause is about: `refuses` "everything" or
    "unknown" while a probe with another event tells) and `refused_events` (the last event
    each vendor refused alone, dead-lettered, within the hour), per "site/vendor"."""
    paused: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for worker in workers:
        health = getattr(worker, "health", None)
        if health is None:
            continue
        key = f"{worker.site}/{worker.vendor.name}"
        if health.paused:
            paused[key] = {"reason": health.shown_reason(), "since": round(health.since, 3),
                           "refuses": health.refuses}
        refusal = health.recent_refusal()
        if refusal is not None:
            refused[key] = {"message_id": refusal.get("message_id"),
                            "status": refusal.get("status"), "reason": refusal.get("reason"),
                            "at": iso(refusal.get("at")), "count": refusal.get("count"),
                            "state": "dead-lettered"}
    return paused, refused


def vendor_status(settings: Settings, figures: list[VendorFigures],
                  pauses: PauseState | None = None,
                  now: float | None = None) -> list[dict[str, Any]]:
    """One entry per configured (site, vendor), plus any the spool still has work for."""
    pauses = pauses or NoPauses()
    now = time.time() if now is None else now
    known = {(f.site, f.vendor): f for f in figures}
    pairs: list[tuple[str, str, VendorConfig | None]] = [
        (site.name, name, config) for site in settings.sites.values()
        for name, config in site.vendors.items()]
    pairs += [(s, v, None) for (s, v) in known
              if (s, v) not in {(a, b) for a, b, _ in pairs}]
    out = []
    for site, vendor, config in pairs:
        row = known.get((site, vendor)) or VendorFigures(site, vendor)
        paused = pauses.pause_reason(site, vendor)
        refusal = refused_event(pauses, site, vendor)
        failing = (row.last_error_at is not None
                   and (row.last_delivered_at or 0) < row.last_error_at and row.queued > 0)
        reason: str | None
        if config is not None and not config.enabled:
            state, reason = DISABLED, "enabled = false"
        elif paused:
            state, reason = PAUSED, paused
        elif row.retry_waiting or failing:
            state = BACKING_OFF
            reason = (f"{row.retry_waiting} event(s) waiting for a retry"
                      + (f", next at {iso(row.next_retry_at)}" if row.next_retry_at else "")
                      if row.retry_waiting else "the last answer was a failure")
        else:
            state = DELIVERING
            reason = one_event_reason(refusal) if refusal else None
        out.append({
            "site": site, "vendor": vendor, "state": state, "reason": reason,
            "queued": row.queued,
            "oldest_queued_seconds": (round(now - row.oldest_queued_at, 1)
                                      if row.oldest_queued_at else None),
            "sent_last_minute": row.sent_minute,
            "limit_per_minute": limit_per_minute(vendor, config) if config else None,
            "delivered_last_hour": row.delivered_hour,
            "retried_last_hour": row.retried_hour,
            "dead_lettered_last_hour": row.dead_hour,
            "last_error": row.last_error or None, "last_error_at": iso(row.last_error_at),
            "refused_event": ({**refusal, "at": iso(refusal.get("at"))} if refusal else None),
        })
    return out


def render_text(status: list[dict[str, Any]]) -> str:
    """The table `shoprelay vendors status` prints."""
    head = ("SITE", "VENDOR", "STATE", "QUEUED", "OLDEST", "RATE/MIN", "DELIV/H", "RETRY/H",
            "DEAD/H", "LAST ERROR")
    rows = [head]
    for s in status:
        limit = f"/{s['limit_per_minute']:g}" if s["limit_per_minute"] else ""
        state = s["state"] + (f" ({s['reason']})" if s["reason"] else "")
        oldest = s["oldest_queued_seconds"]
        rows.append((s["site"], s["vendor"], state, str(s["queued"]),
                     f"{oldest:.0f}s" if oldest is not None else "-",
                     f"{s['sent_last_minute']}{limit}", str(s["delivered_last_hour"]),
                     str(s["retried_last_hour"]), str(s["dead_lettered_last_hour"]),
                     f"{s['last_error_at']} {s['last_error']}" if s["last_error"] else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True))
                     + "  " + r[-1] for r in rows)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: list[dict[str, Any]]) -> str:
    """The same figures for Prometheus (appended to /metrics)."""
    gauges = [
        ("shoprelay_vendor_health_queued", "queued", "Events waiting, per site and vendor"),
        ("shoprelay_vendor_health_oldest_queued_seconds", "oldest_queued_seconds",
         "Age of the oldest waiting event, per site and vendor"),
        ("shoprelay_vendor_health_sent_last_minute", "sent_last_minute",
         "Events answered by the vendor in the last minute"),
        ("shoprelay_vendor_health_limit_per_minute", "limit_per_minute",
         "The vendor's tightest documented rate limit, per minute"),
        ("shoprelay_vendor_health_delivered_last_hour", "delivered_last_hour",
         "Events delivered in the last hour"),
        ("shoprelay_vendor_health_retried_last_hour", "retried_last_hour",
         "Events retried in the last hour"),
        ("shoprelay_vendor_health_dead_lettered_last_hour", "dead_lettered_last_hour",
         "Events dead-lettered in the last hour"),
    ]
    lines = []
    for name, key, text in gauges:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        for s in status:
            if s[key] is not None:
                lines.append(f'{name}{{site="{_label(s["site"])}",vendor="{_label(s["vendor"])}"}}'
                             f" {float(s[key]):g}")
    name = "shoprelay_vendor_health_state"
    lines += [f"# HELP {name} 1 for the vendor's state (delivering, paused, backing off, "
              "disabled)", f"# TYPE {name} gauge"]
    for s in status:
        lines.append(f'{name}{{site="{_label(s["site"])}",vendor="{_label(s["vendor"])}",'
                     f'state="{s["state"]}",reason="{_label(s["reason"] or "")}"}} 1')
    return "\n".join(lines) + "\n"


_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.35em .6em;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.n{text-align:right}
.delivering{color:#176b2c;font-weight:600}.paused{color:#a40000;font-weight:600}
.backing-off{color:#9a5b00;font-weight:600}.disabled{color:#777}.err{color:#a40000;
max-width:30em;word-break:break-word}"""


def render_html(status: list[dict[str, Any]], generated: float) -> str:
    """The admin page: a table, refreshed by the page every five seconds."""
    rows = []
    for s in status:
        limit = f" / {s['limit_per_minute']:g}" if s["limit_per_minute"] else ""
        oldest = s["oldest_queued_seconds"]
        reason = f"<br><small>{html.escape(s['reason'])}</small>" if s["reason"] else ""
        error = (f"{html.escape(s['last_error'])}<br><small>{s['last_error_at']}</small>"
                 if s["last_error"] else "–")
        rows.append(
            f"<tr data-site='{html.escape(s['site'])}' data-vendor='{html.escape(s['vendor'])}'>"
            f"<td>{html.escape(s['site'])}</td><td>{html.escape(s['vendor'])}</td>"
            f"<td class='state {s['state'].replace(' ', '-')}'>{s['state']}{reason}</td>"
            f"<td class=n>{s['queued']}</td>"
            f"<td class=n>{f'{oldest:.0f} s' if oldest is not None else '–'}</td>"
            f"<td class=n>{s['sent_last_minute']}{limit}</td>"
            f"<td class=n>{s['delivered_last_hour']}</td><td class=n>{s['retried_last_hour']}"
            f"</td><td class=n>{s['dead_lettered_last_hour']}</td>"
            f"<td class=err>{error}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>shoprelay vendor health</title><style>{_STYLE}</style></head><body>
<h1>Vendor health</h1>
<p>Per site and vendor: state, queue, rate used in the last minute against the vendor's
limit, and the last hour. As of {iso(generated)}; refreshes every 5 s.</p>
<table id="health"><thead><tr><th>Site</th><th>Vendor</th><th>State</th><th>Queued</th>
<th>Oldest</th><th>Sent last min / limit</th><th>Delivered 1 h</th><th>Retried 1 h</th>
<th>Dead 1 h</th><th>Last error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
<script>setTimeout(() => location.reload(), 5000);</script>
</body></html>"""
