"""Backfill: send a vendor added later the stored history it missed, as the live path would have.

The stored events carry their enrichment as it was at ingest (visitor, user, cart, consent, bot
flag, source), so rendering them through the vendor's adapter today gives the requests the live
path would have sent then, with the original timestamps. Which events: those the router sends
to the vendor under today's settings (`routing.route_reasons`, the live rules), one copy per order
id, and none the vendor already has work for.

Never twice: before sending, each (message, vendor) is claimed in the spool
(`Spool.claim_backfill`, atomic per pair), and settled once the vendor answered. A second run
finds every message claimed and sends nothing; a run stopped midway (Ctrl-C, crash) finds its
unsettled claims and sends those first, in order. A claim is settled after the vendor's answer,
so a crash between the two may send that one event again (as the live path may).

Sending reuses the live `VendorWorker` (lanes per visitor, batching, retries with backoff,
dead letters) on an in-memory queue of the claimed page, with the limiters of the live path
plus one at `share` of each documented limit. The live path's limiters count for every
process on the spool (Redis: kept in Redis; SQLite: kept in `<spool>.limits` beside the file,
`limits.FileWindowLimiter`), so live and backfill together stay within the vendor's limit, and
backfill never takes more than its share.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from shoprelay.delivery.forwarder import DeliveryOptions, Forwarder, VendorWorker
from shoprelay.delivery.limits import SlidingWindowLimiter
from shoprelay.events import ORDER_COMPLETED
from shoprelay.routing import route_reasons
from shoprelay.settings import Settings
from shoprelay.spool.base import DEAD, DELIVERED, SKIPPED, HistoryItem, OutboxRow, backfill_owns
from shoprelay.vendors import VENDORS

PAGE = 500


@dataclass(slots=True)
class BackfillReport:
    #: Events the live path would have sent the vendor in the window.
    candidates: int = 0
    #: Of those, the ones the vendor already had (live work or an earlier backfill).
    already: int = 0
    sent: int = 0
    dead: int = 0
    skipped: int = 0
    #: Requests of an event refused alone (an order line): counted and listed here, not kept
    #: as dead letters (a backfill settles whole events; run it again after a fix).
    parts_refused: list[str] = field(default_factory=list)
    #: Requests sent (batching vendors send fewer than events).
    requests: int = 0
    per_event: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)


class _Queue:
    """The claimed page as a spool for one `VendorWorker`: `due` hands out its rows in order
    (a visitor's later rows wait behind its retry), fates are settled in the real spool."""

    def __init__(self, spool: Any, site: str, vendor: str) -> None:
        self.spool, self.site, self.vendor = spool, site, vendor
        self.rows: dict[int, OutboxRow] = {}
        self.next_at: dict[int, float] = {}
        self.on_new_work: Callable[[], None] = lambda: None
        self.settled: Counter[str] = Counter()
        self.parts_refused: list[str] = []

    def add(self, row: OutboxRow) -> None:
        self.rows[row.id] = row

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]:
        parked: set[str] = set()
        out = []
        for row_id in sorted(self.rows):
            row = self.rows[row_id]
            if row.visitor_id in parked:
                continue
            if self.next_at.get(row_id, 0.0) > now:
                parked.add(row.visitor_id)
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    async def next_due_at(self, site: str, vendor: str) -> float | None:
        return min(self.next_at.values(), default=None)

    async def _settle(self, ids: list[int], state: int, **exchange: Any) -> None:
        for row_id in ids:
            row = self.rows.pop(row_id, None)
            self.next_at.pop(row_id, None)
            if row is not None:
                await self.spool.settle_backfill(self.site, self.vendor, row.event.message_id,
                                                 state=state, **exchange)
                self.settled[{DELIVERED: "sent", DEAD: "dead"}.get(state, "skipped")] += 1

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None, request: str = "",
                        response: str = "") -> None:
        await self._settle(ids, SKIPPED if skipped else DELIVERED, status=status,
                           request=request, response=response)

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None:
        await self._settle(ids, DEAD, status=status, error=error, request=request,
                           response=response)

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str, request: str = "", response: str = "") -> None:
        for row_id in ids:  # in memory: a stopped run sends an unsettled claim again
            if row_id in self.rows:
                self.rows[row_id].attempts += 1
                self.rows[row_id].error = error
                self.next_at[row_id] = next_at

    async def mark_part_dead(self, row_id: int, part: int, *, status: int | None, error: str,
                             response: str = "", request: str = "") -> None:
        row = self.rows.get(row_id)
        if row is not None:
            self.parts_refused.append(f"{row.event.message_id} request {part}: {error}")

    async def mark_progress(self, row_id: int, sent: int) -> None:
        if row_id in self.rows:
            self.rows[row_id].sent = sent


class Progress:
    """A one-line progress bar on stderr: events done, rate, time left."""

    def __init__(self, total: int, out: TextIO = sys.stderr, label: str = "") -> None:
        self.total, self.out, self.label = total, out, label
        self.started = time.monotonic()
        self.done = 0
        self._shown = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and now - self._shown < 0.2:
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else math.inf
        width = 30
        filled = int(width * done / self.total) if self.total else width
        eta = f"{left:.0f}s" if math.isfinite(left) else "?"
        self.out.write(f"\r{self.label}[{'#' * filled}{'.' * (width - filled)}] "
                       f"{done}/{self.total} events  {rate:.1f}/s  {eta} left ")
        self.out.flush()

    def finish(self) -> None:
        self.update(self.done, force=True)
        self.out.write("\n")
        self.out.flush()


class Backfill:
    """One vendor's backfill on one site."""

    def __init__(self, settings: Settings, spool: Any, site: str, vendor: str, *,
                 since: float, until: float, share: float,
                 limiter_factory: Callable[[int, float, str], Any] | None = None) -> None:
        self.settings, self.spool, self.site, self.vendor = settings, spool, site, vendor
        self.since, self.until, self.share = since, until, share
        self.config = settings.sites[site].vendors[vendor]
        self.adapter = VENDORS[vendor]
        self.reasons = route_reasons(settings)
        self.limiter_factory = limiter_factory
        #: Order ids this vendor had (or gets) from this window: one copy per order.
        self._orders: set[str] = set()

    def _wanted(self, item: HistoryItem) -> bool:
        """Whether the live path would have sent this stored event to the vendor today."""
        event = item.event
        if self.reasons(event).get(self.vendor) is not None:
            return False
        if event.name != ORDER_COMPLETED:
            return True
        order_id = str(event.properties.get("order_id", ""))
        if order_id in self._orders:
            return False
        self._orders.add(order_id)
        return True

    async def _pages(self) -> Any:
        cursor = 0
        while True:
            items, cursor = await self.spool.history(self.site, since=self.since,
                                                     until=self.until, cursor=cursor,
                                                     limit=PAGE)
            if not items:
                return
            yield items

    async def count(self, report: BackfillReport, samples: int = 0) -> None:
        """The dry run: what would be sent (nothing is claimed)."""
        self._orders.clear()
        async for items in self._pages():
            for item in items:
                if not self._wanted(item):
                    continue
                report.candidates += 1
                state = item.vendors.get(self.vendor)
                # The claim's own rule: what a claim would not hand out, the vendor has.
                if not backfill_owns(state is None, state):
                    report.already += 1
                    continue
                report.per_event[item.event.name] += 1
                if len(report.samples) < samples:
                    for request in self.adapter.requests_for(item.event, self.config):
                        body = request.body_bytes().decode("utf-8", "replace")
                        report.samples.append(self.adapter.mask(
                            f"{request.method} {request.url}\n{body}", self.config))

    def _worker(self, queue: _Queue) -> tuple[Forwarder, VendorWorker]:
        relay = self.settings.relay
        options = DeliveryOptions(timeout=relay.delivery_timeout_seconds,
                                  concurrency=relay.delivery_concurrency,
                                  max_age=relay.delivery_max_age_hours * 3600.0,
                                  idle_poll=0.2)
        # The live path's limiters (shared with the relay: Redis, or the file beside a
        # SQLite spool)...
        forwarder = Forwarder(self.spool, [(self.site, self.adapter, self.config)], options,
                              limiter_factory=self.limiter_factory)
        worker = forwarder.workers[0]
        # ...and, first, the backfill's share of each documented limit.
        worker.limiters[:0] = [
            SlidingWindowLimiter(max(1, math.floor(limit.requests * self.share)),
                                 limit.per_seconds)
            for limit in self.adapter.rate_limits(self.config)]
        worker.spool = queue  # type: ignore[assignment]
        return forwarder, worker

    async def run(self, report: BackfillReport, progress: Progress | None = None) -> None:
        queue = _Queue(self.spool, self.site, self.vendor)
        forwarder, worker = self._worker(queue)
        self._orders.clear()
        next_id = 1
        try:
            async for items in self._pages():
                wanted = [item for item in items if self._wanted(item)]
                report.candidates += len(wanted)
                mine = set(await self.spool.claim_backfill(self.site, self.vendor, wanted))
                report.already += len(wanted) - len(mine)
                now = time.time()
                for item in wanted:
                    if item.message_id not in mine:
                        continue
                    report.per_event[item.event.name] += 1
                    queue.add(OutboxRow(id=next_id, site=self.site, vendor=self.vendor,
                                        visitor_id=item.visitor_id, attempts=0, sent=0,
                                        created_at=now, event=item.event))
                    next_id += 1
                # The page is drained before the next is claimed: a visitor's order holds.
                while queue.rows:
                    handled = await worker.run_once()
                    report.sent, report.dead = queue.settled["sent"], queue.settled["dead"]
                    report.parts_refused = queue.parts_refused
                    report.skipped = queue.settled["skipped"]
                    if progress is not None:
                        progress.update(report.already + report.sent + report.dead
                                        + report.skipped)
                    if not handled and queue.rows:
                        wait = (await queue.next_due_at(self.site, self.vendor) or 0) - time.time()
                        await asyncio.sleep(min(max(wait, 0.01), 1.0))
        finally:
            report.requests += worker.counters.requests
            await forwarder.client.aclose()


def _parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_backfill_command(settings: Settings, args: Any) -> int:
    """`shoprelay backfill`: check the arguments, say what the window holds, then send."""
    from shoprelay.runtime import close_spool, limiter_factory, open_spool

    try:
        since = _parse_time(args.since)
        until = _parse_time(args.until) if args.until else time.time()
    except ValueError:
        print("shoprelay: --since and --until must be ISO-8601", file=sys.stderr)
        return 2
    share = settings.relay.backfill_share if args.share is None else args.share
    if not 0 < share <= 1:
        print("shoprelay: --share must be in (0, 1]", file=sys.stderr)
        return 2
    if args.vendor not in VENDORS:
        print(f"shoprelay: no vendor {args.vendor!r} (known: {', '.join(sorted(VENDORS))})",
              file=sys.stderr)
        return 2
    sites = [args.site] if args.site else [
        name for name, site in settings.sites.items()
        if args.vendor in site.vendors and site.vendors[args.vendor].enabled]
    for name in sites:
        site = settings.sites.get(name)
        if site is None or args.vendor not in site.vendors:
            print(f"shoprelay: site {name!r} has no [{args.vendor}] table: add the vendor to "
                  f"its settings first", file=sys.stderr)
            return 2
        if not site.vendors[args.vendor].enabled:
            print(f"shoprelay: {args.vendor} is disabled on {name!r}", file=sys.stderr)
            return 2
    if not sites:
        print(f"shoprelay: no site has {args.vendor} enabled", file=sys.stderr)
        return 2
    retention = settings.relay.retention_hours * 3600.0
    if retention > 0 and since < time.time() - retention:
        kept = datetime.fromtimestamp(time.time() - retention, UTC).isoformat(timespec="seconds")
        print(f"shoprelay: --since is older than the retention window (retention_hours = "
              f"{settings.relay.retention_hours:g}): nothing before about {kept} is kept; "
              f"backfilling what is", file=sys.stderr)

    async def main() -> int:
        spool = open_spool(settings)
        spool.start()
        try:
            for name in sites:
                job = Backfill(settings, spool, name, args.vendor, since=since, until=until,
                               share=share, limiter_factory=limiter_factory(settings, spool))
                report = BackfillReport()
                if args.dry_run:
                    await job.count(report, samples=args.sample)
                    todo = sum(report.per_event.values())
                    print(f"{name}/{args.vendor}: {todo} event(s) to send "
                          f"({report.already} already had) in the window")
                    for event, count in sorted(report.per_event.items()):
                        print(f"  {event}: {count}")
                    for sample in report.samples:
                        print("  sample request:\n    " + sample.replace("\n", "\n    "))
                    continue
                total = BackfillReport()
                await job.count(total)
                progress = Progress(total.candidates, label=f"{name}/{args.vendor} ")
                progress.update(0, force=True)
                try:
                    await job.run(report, progress)
                finally:
                    progress.finish()
                print(f"{name}/{args.vendor}: sent {report.sent} event(s) in "
                      f"{report.requests} request(s); {report.already} already had; "
                      f"{report.dead} dead-lettered; {report.skipped} rendered no request")
                for refused in report.parts_refused:
                    print(f"  refused alone (not kept as a dead letter): {refused}")
            return 0
        finally:
            await close_spool(spool)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("\nshoprelay: backfill stopped; run it again to resume where it stopped",
              file=sys.stderr)
        return 130
