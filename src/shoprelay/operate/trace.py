"""The trace of one message: what became of it at every vendor configured for its site.

Where work exists the spool says what happened (sent with its last exchange, waiting for a
retry, dead-lettered, skipped). Where none exists the reason is recomputed from the stored
event with the router's own rules (`routing.route_reasons`): the stored event carries its consent,
bot flag and source as they were at ingest, so "why not" is the decision that was taken,
unless the settings changed since (then the trace says so). Copies never stored (resends, order
copies already reported) are told by the spool's notes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from shoprelay.events import ORDER_COMPLETED, StoredEvent
from shoprelay.settings import Settings
from shoprelay.spool import base as stored
from shoprelay.spool.base import MessageRecord, WorkRecord
from shoprelay.vendors import VENDORS

#: The spool's names of the states a trace tells apart (`spool.base.STATE_NAMES`).
_DELIVERED, _SKIPPED, _DEAD, _CLAIMED = (
    stored.STATE_NAMES[s] for s in (stored.DELIVERED, stored.SKIPPED, stored.DEAD,
                                    stored.BACKFILL))

#: What a vendor's outcome is called, the same words in the CLI, the JSON and the debugger.
SENT, QUEUED, RETRYING, PAUSED, DEAD, SKIPPED, NOT_SENT, BACKFILL = (
    "sent", "queued", "retrying", "paused", "dead-lettered", "skipped", "not sent",
    "backfill")


class PauseState(Protocol):
    """Whether delivery to a vendor is paused (issue 13's vendor pause on 401/403/404 gives
    it: its forwarder answers `pause_reason`). None: not paused."""

    def pause_reason(self, site: str, vendor: str) -> str | None: ...


class NoPauses:
    """Where no pause state is known (the command line beside a relay, before issue 13)."""

    def pause_reason(self, site: str, vendor: str) -> str | None:
        return None


def pauses_of(forwarder: Any) -> PauseState:
    """The forwarder's pause state if it keeps one, else `NoPauses`."""
    if forwarder is not None and callable(getattr(forwarder, "pause_reason", None)):
        return forwarder  # type: ignore[no-any-return]
    return NoPauses()


def iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _from_work(site: str, work: WorkRecord, pauses: PauseState, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": work.attempts, "status": work.status,
                           "request": work.request or None, "answer": work.response or None,
                           "at": iso(work.updated_at)}
    if work.state == _DELIVERED:
        out.update(outcome=SENT, reason=None)
    elif work.state == _SKIPPED:
        out.update(outcome=SKIPPED,
                   reason="skipped: the vendor's adapter renders no request for this event")
    elif work.state == _DEAD:
        out.update(outcome=DEAD, reason=f"dead-lettered: {work.error or 'no reason kept'}")
    elif work.state == _CLAIMED:
        out.update(outcome=BACKFILL, reason="claimed by a backfill that has not sent it yet")
    else:
        paused = pauses.pause_reason(site, work.vendor)
        if paused:
            out.update(outcome=PAUSED, reason=f"vendor paused: {paused}")
        elif work.next_at and work.next_at > now:
            last = f"; last failure: {work.error}" if work.error else ""
            out.update(outcome=RETRYING, next_at=iso(work.next_at),
                       reason=f"waiting for a retry at {iso(work.next_at)} "
                              f"(attempt {work.attempts + 1}){last}")
        else:
            out.update(outcome=QUEUED, reason="queued: due now, waiting for its turn")
    if work.state == stored.PARTS_ONLY:  # only parts are known (the event's own row was pruned)
        out.update(outcome=SENT if work.parts else QUEUED, reason=None)
    if work.parts:
        # Requests of the event handled alone (one order line dead-lettered, or replayed).
        out["parts"] = {str(index): _from_work(site, part, pauses, now)
                        for index, part in sorted(work.parts.items())}
        dead = [f"request {index}: {part.error or 'no reason kept'}"
                for index, part in sorted(work.parts.items())
                if part.state == _DEAD]
        if dead:
            alone = f"{len(dead)} request(s) dead-lettered alone ({'; '.join(dead)})"
            out["reason"] = f"{out['reason']}; {alone}" if out.get("reason") else alone
    return out


def _without_work(record: MessageRecord, vendor: str, reason: str | None) -> dict[str, Any]:
    event = record.event
    assert event is not None
    out: dict[str, Any] = {"outcome": NOT_SENT, "reason": reason}
    if reason is not None:
        return out
    if event.name == ORDER_COMPLETED:
        # (A copy held back by the order rule has its reason from `route_reasons`.)
        order_id = event.properties.get("order_id")
        out["reason"] = (f"deduplicated: order {order_id} was already sent to {vendor} "
                         f"by another copy")
        return out
    out["reason"] = ("not routed when it arrived: the settings changed since (vendor added, "
                     "enabled or remapped); `shoprelay backfill` can send it")
    return out


def adapter_notes(event: StoredEvent, vendor: str, config: Any) -> list[str]:
    """What the adapter left out of the event's requests (a malformed optional field, an
    order line the vendor cannot take), recomputed: adapters are pure, so rendering the
    stored event again gives the notes its requests carried when they were sent."""
    adapter = VENDORS.get(vendor)
    if adapter is None:
        return []
    try:
        requests = adapter.requests_for(event, config)
    except Exception:  # a refused event's reason is its dead letter's; nothing to add
        return []
    return [note for request in requests for note in request.notes]


def explain(settings: Settings, record: MessageRecord, reasons: Any,
            pauses: PauseState | None = None, now: float | None = None) -> dict[str, Any]:
    """The trace of one message as JSON-ready data: the message, notes, and per vendor its
    outcome, the reason when it was not (yet) sent, and the last exchange."""
    pauses = pauses or NoPauses()
    now = time.time() if now is None else now
    event = record.event
    trace: dict[str, Any] = {
        "site": record.site, "messageId": record.message_id,
        "visitor_id": record.visitor_id or None, "received_at": iso(record.received_at),
        "stored": event is not None,
        "notes": [{"at": iso(at), "note": note} for at, note in record.notes],
        "vendors": {},
    }
    site = settings.sites.get(record.site)
    configured = list(site.vendors) if site is not None else []
    if event is not None:
        trace.update(event=event.name, type=event.type, source=event.enrichment.source,
                     timestamp=event.timestamp.isoformat(), message=event.message,
                     consent=event.enrichment.consent, bot=event.enrichment.bot)
        why = reasons(event)
    else:
        why = {}
    for vendor in [*configured, *(v for v in record.work if v not in configured)]:
        work = record.work.get(vendor)
        if work is not None:
            trace["vendors"][vendor] = _from_work(record.site, work, pauses, now)
            if event is not None and site is not None and vendor in site.vendors:
                notes = adapter_notes(event, vendor, site.vendors[vendor])
                if notes:
                    trace["vendors"][vendor]["notes"] = notes
        elif event is None:
            note = record.notes[-1][1] if record.notes else "not stored"
            trace["vendors"][vendor] = {"outcome": NOT_SENT, "reason": note}
        else:
            trace["vendors"][vendor] = _without_work(record, vendor, why.get(vendor))
    return trace


def render_text(trace: dict[str, Any]) -> str:
    """The trace for a terminal: one line for the message, one per vendor."""
    head = (f"{trace['received_at']}  {trace['site']}  {trace.get('event', '(not stored)')}  "
            f"messageId={trace['messageId']}  visitor={trace['visitor_id']}")
    lines = [head]
    lines += [f"  note: {n['note']} ({n['at']})" for n in trace["notes"]]
    for vendor, outcome in trace["vendors"].items():
        line = f"  {vendor:<14} {outcome['outcome']:<14}"
        if outcome.get("status") is not None:
            line += f" status={outcome['status']}"
        if outcome.get("reason"):
            line += f" {outcome['reason']}"
        lines.append(line)
        lines += [f"      note: {note}" for note in outcome.get("notes", [])]
        if outcome.get("request"):
            lines.append("      request: " + outcome["request"].replace("\n", " ")[:300])
        if outcome.get("answer"):
            lines.append("      answer:  " + outcome["answer"].replace("\n", " ")[:300])
    return "\n".join(lines)


async def find_traces(settings: Settings, spool: Any, reasons: Any, *,
                      message_id: str | None = None, order_id: str | None = None,
                      visitor_id: str | None = None, site: str | None = None,
                      pauses: PauseState | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Traces of the messages found in `site` (default: every site), newest first."""
    found: list[MessageRecord] = []
    for name in ([site] if site else list(settings.sites)):
        found += await spool.find_messages(name, message_id=message_id, order_id=order_id,
                                           visitor_id=visitor_id, limit=limit)
    found.sort(key=lambda r: -r.received_at)
    return [explain(settings, record, reasons, pauses) for record in found[:limit]]
