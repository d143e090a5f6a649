"""The background forwarder: reads due work from the spool and delivers it to each vendor.

Each (site, vendor) pair has its own worker, so a vendor that is down or slow only ever delays
its own queue. A worker takes due work in rounds and splits each round into lanes that run
concurrently (up to `concurrency` at once). Inside a lane requests go one after another, in the
order the events arrived, so a lane holds everything that must stay in order: all of one
visitor's work, joined with any other work it may be batched with (Alana batches every visitor
together, so its lane is the whole round; Retail Rocket's `visitorEvents` batches visitors in a
few lanes, each visitor always in the same one).
A retryable failure parks the rest of its lane; the spool's `due` query keeps a visitor's later
work back until the retry, so order also holds across rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from shoprelay.delivery.health import VendorHealth, store_for
from shoprelay.delivery.limits import Limiter, SlidingWindowLimiter, file_limiter_factory
from shoprelay.delivery.retry import FIRST_DELAY, MAX_DELAY, backoff
from shoprelay.spool.base import (
    EXCHANGE_CHARS,
    LETTER_ANSWER_CHARS,
    LETTER_REQUEST_CHARS,
    OutboxRow,
    Spool,
)
from shoprelay.spool.disk import SpoolFull
from shoprelay.vendors.base import (
    UNITS_KEY,
    MappingError,
    Outcome,
    Vendor,
    VendorConfig,
    VendorRequest,
)

log = logging.getLogger("shoprelay.delivery")

#: Rows fetched per round.
ROUND_SIZE = 500


@dataclass(slots=True)
class DeliveryOptions:
    #: Seconds a vendor request may take (connect to last byte) before it counts as failed.
    timeout: float = 10.0
    #: Lanes (visitors, batches) in flight at once per (site, vendor).
    concurrency: int = 16
    #: Work older than this goes to the dead letter instead of being sent.
    max_age: float = 24 * 3600.0
    #: Longest idle sleep between looks at the spool is 5× this (new work wakes workers early).
    idle_poll: float = 1.0
    #: Backoff: first retry ceiling and cap (seconds).
    first_retry: float = FIRST_DELAY
    max_retry: float = MAX_DELAY
    #: Finished work is pruned after this many seconds (0 = never).
    retention: float = 168 * 3600.0
    #: How often retention runs and the spool's size is logged.
    maintenance_interval: float = 300.0
    #: A vendor paused on a credential/address failure is probed after this many seconds,
    #: doubling up to `probe_max` (shoprelay.delivery.health).
    probe_first: float = 2.0
    probe_max: float = 30.0
    #: Send each request's messageIds in this header ("" = none): the demo's sandboxes use it
    #: to link a vendor request to the messages behind it (`relay.vendor_message_id_header`).
    message_id_header: str = ""


#: What may go in a header value as one id of a comma-separated list.
_HEADER_SAFE = re.compile(r"[!-+\--~]+")
#: How a note about a request's headers begins (shown with the request in its trace).
HEADER_NOTE = "header "


@dataclass(slots=True)
class _Job:
    """One HTTP request and the (row, request index) pairs it carries."""

    items: list[tuple[OutboxRow, int]]
    request: VendorRequest

    @property
    def rows(self) -> list[OutboxRow]:
        seen: dict[int, OutboxRow] = {}
        for row, _ in self.items:
            seen.setdefault(row.id, row)
        return list(seen.values())


@dataclass(slots=True)
class _Lane:
    jobs: list[_Job] = field(default_factory=list)


@dataclass(slots=True)
class DeliveryCounters:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    requests: int = 0
    #: Events of accepted batches that the vendor said it did not store (Alana `errors`).
    refused_in_batch: int = 0
    #: Parts left out of delivered requests (malformed optional fields, bad order lines).
    fields_dropped: int = 0


class VendorWorker:
    def __init__(
        self,
        spool: Spool,
        site: str,
        vendor: Vendor[Any],
        config: VendorConfig,
        client: httpx.AsyncClient,
        limiters: list[Limiter],
        options: DeliveryOptions,
    ) -> None:
        self.spool = spool
        self.site = site
        self.vendor = vendor
        self.config = config
        self.client = client
        self.limiters = limiters
        self.options = options
        self.wake = asyncio.Event()
        self.stopping = False
        self.counters = DeliveryCounters()
        self._semaphore = asyncio.Semaphore(options.concurrency)
        #: Request count per row id, from the latest render (rows render the same every time).
        self._totals: dict[int, int] = {}
        #: Requests of a row dead-lettered alone this round (a row all of whose requests were
        #: refused ends skipped, not delivered).
        self._parts_dead: dict[int, int] = {}
        #: The live debugger (shoprelay.operate.debugger.DebugBus), if the app has one.
        self.bus: Any = None
        #: Paused on credential/address failures (401, 403, 404 on its own endpoint).
        self.health = VendorHealth(site, vendor.name, probe_first=options.probe_first,
                                   probe_max=options.probe_max)

    async def run(self) -> None:
        while not self.stopping:
            # Cleared before looking, never after: a wake-up that arrives while this round
            # looks (or just after it found nothing) stays set, and the wait below returns at
            # once instead of sleeping through work that is already there.
            self.wake.clear()
            try:
                handled = await self.run_once()
            except Exception:  # keep delivering whatever one round hit
                log.exception("delivery round failed for %s/%s", self.site, self.vendor.name)
                handled = 0
            if handled or self.stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), await self._idle_wait())

    async def _idle_wait(self) -> float:
        if self.health.paused:
            # Queued work is due but held: sleep until the next probe, not a busy loop.
            return min(max(0.01, self.health.wait()), self.options.idle_poll * 5)
        next_at = await self.spool.next_due_at(self.site, self.vendor.name)
        if next_at is None:
            return self.options.idle_poll * 5
        return min(max(0.01, next_at - time.time()), self.options.idle_poll * 5)

    async def run_once(self) -> int:
        now = time.time()
        if self.health.paused and not self.health.probe_due(now):
            return 0
        if getattr(self.spool, "disk_full", None) is not None:
            return 0  # a send the spool cannot record would be sent again: wait for room
        rows = await self.spool.due(self.site, self.vendor.name, now, ROUND_SIZE)
        if not rows:
            return 0
        lanes = await self._plan(rows, now)
        if self.health.paused:
            # One probe, chosen from the whole round (not the first lane's oldest request,
            # which may be the very event the vendor refuses); the next round, if it
            # resumed, delivers the rest.
            probe = self._probe_job(lanes)
            if probe is None:
                # Nothing here is sent (skips, refusals): look again at the next probe time.
                self.health.take_probe()
                return 0
            if self.health.take_probe():
                try:
                    await self._run_job(probe, [], set(), probe=True)
                except Exception as exc:  # as in a lane: a bug must not resend forever
                    log.exception("%s/%s: handling a probe failed", self.site,
                                  self.vendor.name)
                    await self._dead_on_error(probe, exc, set())
            return len(rows)
        # Every lane runs to its end before the next round: one failing (the spool) must not
        # leave the others running beside a round that takes their rows again.
        results = await asyncio.gather(*(self._run_lane(lane) for lane in lanes),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SpoolFull):
                log.error("delivery lane failed for %s/%s: %r", self.site, self.vendor.name,
                          result)
        return len(rows)

    # ---- planning ---------------------------------------------------------------------------

    def _batch_size(self) -> int:
        configured = getattr(self.config, "batch_size", self.vendor.max_batch)
        return max(1, min(self.vendor.max_batch, int(configured)))

    async def _plan(self, rows: list[OutboxRow], now: float) -> list[_Lane]:
        rendered: list[tuple[OutboxRow, list[tuple[int, VendorRequest]]]] = []
        skipped: list[int] = []
        self._totals = {}
        self._parts_dead = {}
        for row in rows:
            # Time paused is not counted: the work was held on purpose, not failing.
            age = now - row.created_at - self.health.paused_between(row.created_at, now)
            if age > self.options.max_age:
                hours = self.options.max_age / 3600
                last = f"; last failure: {row.error}" if row.error else ""
                await self.spool.mark_dead([row.id], status=None,
                                           error=f"not delivered within the max age of "
                                                 f"{hours:g} h{last}")
                self.counters.dead += 1
                continue
            try:
                requests = self._render(row)
            except Exception as exc:  # retrying cannot fix a mapping; a bug must not loop
                reason = "mapping" if isinstance(exc, MappingError) else "adapter error"
                await self.spool.mark_dead([row.id], status=None, error=f"{reason}: {exc}")
                self.counters.dead += 1
                continue
            remaining = list(enumerate(requests))[row.sent:]
            if not remaining:
                skipped.append(row.id)
                continue
            self._totals[row.id] = len(requests)
            rendered.append((row, remaining))
        if skipped:
            await self.spool.mark_done(skipped, skipped=True)
            if self.bus is not None and self.bus.active:
                self.bus.publish("outcome", {
                    "site": self.site, "vendor": self.vendor.name, "outcome": "skipped",
                    "reason": "the adapter renders no request for this event",
                    "messageIds": [r.event.message_id for r in rows if r.id in skipped]})

        # Lanes: a visitor's rows always share a lane; a batch key joins every lane it touches.
        batching = self.vendor.max_batch > 1
        parent: dict[str, str] = {}

        def find(key: str) -> str:
            parent.setdefault(key, key)
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        for row, remaining in rendered:
            root = find(f"v:{row.visitor_id}")
            for _, request in remaining:
                if (batching and request.batch_key is not None
                        and not request.batch_key.startswith(UNITS_KEY)):
                    other = find(f"b:{request.batch_key}")
                    if other != root:
                        parent[other] = root
        grouped: dict[str, list[tuple[OutboxRow, list[tuple[int, VendorRequest]]]]] = {}
        for row, remaining in rendered:  # rows come oldest first, so lanes keep event order
            grouped.setdefault(find(f"v:{row.visitor_id}"), []).append((row, remaining))
        return [self._lane(items, batching) for items in grouped.values()]

    def _lane(self, items: list[tuple[OutboxRow, list[tuple[int, VendorRequest]]]],
              batching: bool) -> _Lane:
        """Jobs in event order; consecutive requests with one batch key become one request."""
        lane = _Lane()
        size = self._batch_size()
        open_key: str | None = None
        pending: list[tuple[OutboxRow, int, VendorRequest]] = []

        def flush() -> None:
            if len(pending) == 1:
                row, index, request = pending[0]
                lane.jobs.append(_Job([(row, index)], request))
            elif pending:
                requests = [r for _, _, r in pending]
                try:
                    merged = (self.vendor.merge_units(requests) if units
                              else self.vendor.merge(requests, self.config))
                except Exception:
                    log.exception("%s: merging a batch failed; sending one by one",
                                  self.vendor.name)
                    lane.jobs.extend(_Job([(row, i)], r) for row, i, r in pending)
                else:
                    lane.jobs.append(_Job([(row, i) for row, i, _ in pending], merged))
            pending.clear()

        units = False
        lone = self.health.lone_suspects
        for row, remaining in items:
            for index, request in remaining:
                key = request.batch_key if batching and row.id not in lone else None
                if request.batch_key is not None and request.batch_key.startswith(UNITS_KEY):
                    # Units of one adapter request go back together, whatever the size (the
                    # adapter sized the request); never with another row's.
                    key = f"{request.batch_key}@{row.id}"
                if key is None:
                    flush()
                    open_key = None
                    lane.jobs.append(_Job([(row, index)], request))
                    continue
                if key != open_key or (len(pending) >= size and not units):
                    flush()
                    open_key = key
                    units = key.startswith(UNITS_KEY)
                pending.append((row, index, request))
        flush()
        return lane

    # ---- sending ----------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        async with self._semaphore:
            parked: set[int] = set()
            jobs = list(lane.jobs)
            while jobs:
                job = jobs.pop(0)
                if self.stopping:
                    return
                if any(row.id in parked for row, _ in job.items):
                    continue
                try:
                    if not await self._run_job(job, jobs, parked):
                        return
                except SpoolFull:
                    return  # not the job's fault: its rows stay queued as they are
                except Exception as exc:  # a bug must not abort the round and resend forever
                    log.exception("%s/%s: handling a request failed", self.site,
                                  self.vendor.name)
                    await self._dead_on_error(job, exc, parked)

    async def _run_job(self, job: _Job, jobs: list[_Job], parked: set[int], *,
                       probe: bool = False) -> bool:
        """Send one job and settle what it carried. False: the rest of the lane waits (a
        retry or a pause keeps the visitors' order). `probe`: the one request a paused
        worker sends (`_probe_job`)."""
        if job.request.refusal:
            # A part the adapter cannot render: nothing to send, its reason kept.
            await self._dead(job.items, status=None, error=f"mapping: {job.request.refusal}",
                             parked=parked)
            return True
        if job.request.is_skip:
            # Nothing to send, only a reason to record (Vendor.skipped).
            await self._finish(job.items, skipped=True)
            self._noted(job.request)
            return True
        if self.health.paused and not probe:
            return False  # the work stays queued as it is until the vendor accepts again
        outcome, status, answer = await self._send(job)
        ids = [row.id for row in job.rows]
        if outcome.pause and not self.health.paused and self.health.suspected(ids):
            # Refused again, on a settings status, after the vendor accepted other events
            # since the pause: it is this content, not our key.
            await self._refused_alone(job, jobs, outcome, status, answer, parked)
            return True
        if outcome.pause:
            # Held, not failed: the rows keep their place and their attempt count.
            self.health.pause(status, outcome.detail, rows=ids, alone=len(ids) == 1)
            return False
        if outcome.retry and self.health.paused:
            self.health.pause(status, outcome.detail)  # refuses nothing: the probe waits
            return False
        self.health.resume()  # the vendor took the credentials and the address
        if outcome.ok and not outcome.failed_events:
            await self._finish(job.items, status=status, request=self._shown(job.request),
                               response=self._answer(answer))
            if job.request.notes:
                self._noted(job.request)
            return True
        if outcome.retry and not outcome.ok:
            rows = job.rows
            attempts = max(row.attempts for row in rows) + 1
            delay = backoff(attempts, outcome.retry_after,
                            first=self.options.first_retry, cap=self.options.max_retry)
            await self.spool.mark_retry([row.id for row in rows],
                                        next_at=time.time() + delay, status=status,
                                        error=outcome.detail,
                                        request=self._shown(job.request),
                                        response=self._answer(answer))
            self.counters.retried += len(rows)
            # The rest of this lane waits: order per visitor matters more than speed.
            return False
        await self._refused(job, jobs, outcome, status, answer, parked)
        return True

    async def _refused(self, job: _Job, jobs: list[_Job], outcome: Outcome,
                       status: int | None, answer: str, parked: set[int]) -> None:
        """Every refusal, of a whole request or of some of its events, batched or not, is
        settled here, on one rule: nothing the vendor may have stored is sent again, and
        what it refused goes to the dead letter, each event (or order line) on its own
        where that can be told.

        - A final refusal of the whole request (a 4xx: the vendor stored none of it): a
          request carrying several events or lines is sent again one by one, in order, so
          only the one at fault is dead-lettered and the rest delivered.
        - Accepted, but `failed_events` of its events not stored (Alana's `errors`): when
          that is all of them, each is dead-lettered; when only some, and the vendor does
          not say which, every event of the request goes to the dead letter with the count,
          and none is sent again (docs/vendors/alana.md: a resend would store the others
          twice, Alana describes no de-duplication).
        - A failure after which some events may be stored (`maybe_stored`): the same, never
          resent.
        """
        items = job.items
        request_text = self._shown(job.request, LETTER_REQUEST_CHARS)
        response = answer[:LETTER_ANSWER_CHARS]
        if outcome.ok or outcome.maybe_stored:
            error = outcome.detail or f"HTTP {status}"
            failed = outcome.failed_events
            if outcome.ok and failed >= len(items):
                log.warning("%s stored none of %d event(s): %s", self.vendor.name,
                            len(items), error)
                self.counters.refused_in_batch += len(items)
            else:
                if outcome.ok:
                    self.counters.refused_in_batch += failed
                if len(items) > 1:
                    error += (f"; the answer does not say which of the {len(items)} events of "
                              "this request, so none is sent again (a resend would store the "
                              "others twice)")
                log.warning("%s/%s: %s", self.site, self.vendor.name, error)
            await self._dead(items, status=status, error=error, request=request_text,
                             response=response, parked=parked)
            return
        if len(items) > 1:
            # The vendor refused the whole request: send its events (or lines) one by one, in
            # the same order, so only the one at fault goes to the dead letter.
            log.info("%s refused a batch of %d (%s); retrying them one by one",
                     self.vendor.name, len(items), outcome.detail)
            jobs[:0] = [_Job([item], r) for item, r in self._split(job)]
            return
        await self._dead(items, status=status, error=outcome.detail, request=request_text,
                         response=response, parked=parked)

    def _probe_job(self, lanes: list[_Lane]) -> _Job | None:
        """The request a paused worker probes with: one event's request, alone (a batch
        could hold the event the vendor refuses), and always a visitor's next one (per
        visitor order holds whatever the answer). In order of preference: the next event of
        a visitor none of whose events was refused during the pause; of one whose events
        were refused only within a batch (nothing of a refused request is stored, so it is
        still that visitor's next); else, every visitor's next event having been refused
        alone, the one refused longest ago (round robin: then it really is the vendor, and
        new visitors' events become probes as they arrive)."""
        refused = set().union(*self.health.refusals) if self.health.refusals else set()
        alone = self.health.refused_alone
        visitors: set[str] = set()
        batched: tuple[OutboxRow, int] | None = None
        retried: tuple[int, tuple[OutboxRow, int]] | None = None
        for lane in lanes:
            for job in lane.jobs:
                if job.request.refusal or job.request.is_skip:
                    continue  # nothing is sent for these: they hold no visitor's place
                for row, index in job.items:
                    if row.visitor_id in visitors:
                        continue  # never before that visitor's earlier events
                    visitors.add(row.visitor_id)
                    if row.id in alone:
                        if retried is None or alone[row.id] < retried[0]:
                            retried = (alone[row.id], (row, index))
                    elif row.id in refused:
                        batched = batched or (row, index)
                    else:
                        return self._alone((row, index))
        chosen = batched or (retried[1] if retried is not None else None)
        return self._alone(chosen) if chosen is not None else None

    def _alone(self, item: tuple[OutboxRow, int]) -> _Job:
        row, index = item
        return _Job([item], self._render(row)[index])

    async def _refused_alone(self, job: _Job, jobs: list[_Job], outcome: Outcome,
                             status: int | None, answer: str, parked: set[int]) -> None:
        """A request holding a suspect (an event refused during a pause the vendor came out
        of) refused again on a settings status while the vendor accepts others. Carrying one
        event (or one order line), it is dead-lettered with the vendor's answer, masked;
        carrying several, it is narrowed: its halves are sent in its place, in order (a
        request refused whole stored nothing, see docs/delivery.md), so the others are
        delivered once and the one refused is found in about 2 log2(n) requests."""
        if len(job.items) > 1:
            log.info("%s refused a request of %d holding an event refused before (%s); "
                     "sending its halves", self.vendor.name, len(job.items), outcome.detail)
            jobs[:0] = self._halves(job)
            return
        [(row, index)] = job.items
        error = (f"refused alone: the vendor answered {outcome.detail or f'HTTP {status}'} "
                 "to this event again while accepting other events (its content, not the "
                 "settings: a firewall rule, for instance)")
        log.warning("%s/%s: event %s dead-lettered: %s", self.site, self.vendor.name,
                    row.event.message_id, error)
        await self._dead(job.items, status=status, error=error,
                         request=self._shown(job.request, LETTER_REQUEST_CHARS),
                         response=self.vendor.mask(answer, self.config)[:LETTER_ANSWER_CHARS],
                         parked=parked)
        self.health.settled([row.id])
        self.health.refused_one(row.event.message_id, status, outcome.detail)

    def _halves(self, job: _Job) -> list[_Job]:
        """A job's items in two jobs, in order, each merged back into one request as the
        lane merged them (units of one adapter request with `merge_units`)."""
        split = self._split(job)
        middle = len(split) // 2
        out = []
        for part in (split[:middle], split[middle:]):
            items = [item for item, _ in part]
            requests = [request for _, request in part]
            if len(requests) == 1:
                out.append(_Job(items, requests[0]))
                continue
            units = all(r.batch_key is not None and r.batch_key.startswith(UNITS_KEY)
                        for r in requests)
            try:
                merged = (self.vendor.merge_units(requests) if units
                          else self.vendor.merge(requests, self.config))
            except Exception:  # as in `_lane`: one by one then
                log.exception("%s: merging a half failed; sending one by one",
                              self.vendor.name)
                out.extend(_Job([item], request) for item, request in part)
                continue
            out.append(_Job(items, merged))
        return out

    async def _dead(self, items: list[tuple[OutboxRow, int]], *, status: int | None,
                    error: str, request: str = "", response: str = "",
                    parked: set[int]) -> None:
        """Dead-letter these requests. One of a row's several requests (an order line) is
        dead-lettered alone and the row goes on with its others; a row's whole work (its one
        request, or a replayed part) is dead-lettered as the row, and its lane skips it."""
        parts: list[tuple[OutboxRow, int]] = []
        whole: dict[int, OutboxRow] = {}
        for row, index in items:
            if row.part is None and self._totals.get(row.id, 1) > 1:
                parts.append((row, index))
            else:
                whole.setdefault(row.id, row)
        for row, index in parts:
            await self.spool.mark_part_dead(row.id, index, status=status, error=error,
                                            request=request, response=response)
            self.counters.dead += 1
            self._parts_dead[row.id] = self._parts_dead.get(row.id, 0) + 1
            log.info("%s/%s: request %d of %s dead-lettered alone: %s", self.site,
                     self.vendor.name, index, row.event.message_id, error)
            if self.bus is not None and self.bus.active:
                self.bus.publish("outcome", {
                    "site": self.site, "vendor": self.vendor.name, "outcome": "dead",
                    "reason": f"request {index} dead-lettered alone: {error}",
                    "messageIds": [row.event.message_id]})
        if whole:
            await self.spool.mark_dead(list(whole), status=status, error=error,
                                       response=response, request=request)
            self.counters.dead += len(whole)
            parked.update(whole)
        if parts:
            await self._finish(parts)

    async def _dead_on_error(self, job: _Job, exc: Exception, parked: set[int]) -> None:
        """The relay itself failed on a job (a bug): its rows go to the dead letter with the
        error, not back to the queue, since the request may have reached the vendor."""
        ids = [row.id for row in job.rows if row.id not in parked]
        if not ids:
            return
        error = self.vendor.mask(f"relay error: {type(exc).__name__}: {exc}", self.config)
        await self.spool.mark_dead(ids, status=None, error=error,
                                   request=self._shown(job.request, LETTER_REQUEST_CHARS))
        self.counters.dead += len(ids)
        parked.update(ids)

    def _noted(self, request: VendorRequest) -> None:
        """What the adapter left out of a delivered request (a malformed optional field, an
        order line it could not render): counted, logged and shown in the debugger."""
        self.counters.fields_dropped += len(request.notes)
        log.info("%s/%s: %s%s", self.site, self.vendor.name,
                 "" if request.is_skip else "sent without: ", "; ".join(request.notes))
        if self.bus is not None and self.bus.active:
            # Shaped like a vendor exchange, so the debugger page shows it as one line.
            what = "not sent" if request.is_skip else "sent without"
            self.bus.publish("dropped", {
                "site": self.site, "vendor": self.vendor.name, "method": what,
                "url": "; ".join(request.notes)[:300], "status": "recorded",
                "notes": list(request.notes), "body": list(request.notes), "answer": None})

    def _shown(self, request: VendorRequest, limit: int = EXCHANGE_CHARS) -> str:
        """The request as a trace shows it: method, URL and body, secrets masked, cut short
        (it is kept per work row within the retention). Masked before it is cut: a secret
        cut in two would no longer be recognised."""
        body = request.body_bytes().decode("utf-8", "replace")
        # What the relay left out of the request's headers, where the trace shows it.
        noted = "".join(f"\n({note})" for note in request.notes if note.startswith(HEADER_NOTE))
        return self.vendor.mask(f"{request.method} {request.url}\n{body}{noted}",
                                self.config)[:limit]

    def _answer(self, answer: str) -> str:
        return self.vendor.mask(answer, self.config)[:EXCHANGE_CHARS]

    def _split(self, job: _Job) -> list[tuple[tuple[OutboxRow, int], VendorRequest]]:
        out = []
        for row, index in job.items:
            requests = self._render(row)
            out.append(((row, index), requests[index]))
        return out

    def _render(self, row: OutboxRow) -> list[VendorRequest]:
        """The row's requests: the event's, or the one part a replayed part letter is for
        (rendering is deterministic, so index `part` is the same request as before)."""
        requests = self.vendor.units(self.vendor.requests_for(row.event, self.config))
        if row.part is None:
            return requests
        return requests[row.part:row.part + 1]

    async def _finish(self, items: list[tuple[OutboxRow, int]], *, skipped: bool = False,
                      status: int | None = None, request: str = "",
                      response: str = "") -> None:
        """Record a delivered request: rows whose last request it was are done, others move
        their resume point past it (so a restart does not send it again)."""
        last: dict[int, int] = {}
        for row, index in items:
            last[row.id] = max(index, last.get(row.id, -1))
        done = [rid for rid, index in last.items() if index + 1 >= self._totals.get(rid, 1)]
        # Settled: no longer a suspect (an event's earlier line delivered settles nothing).
        self.health.settled(done)
        for rid, index in last.items():
            if rid not in done:
                await self.spool.mark_progress(rid, index + 1)
        # A row whose every request was dead-lettered alone was not delivered at all.
        refused = [rid for rid in done
                   if self._parts_dead.get(rid, 0) >= self._totals.get(rid, 1)]
        done = [rid for rid in done if rid not in refused]
        if refused:
            await self.spool.mark_done(refused, skipped=True, status=status)
        if done:
            await self.spool.mark_done(done, skipped=skipped, status=status, request=request,
                                       response=response)
            self.counters.delivered += len(done)

    async def _send(self, job: _Job) -> tuple[Outcome, int | None, str]:
        request = job.request
        ids = [row.event.message_id for row in job.rows]
        header = self.options.message_id_header
        if header:
            # A header holds printable ASCII only (httpx refuses the rest, which failed the
            # whole round, again and again): an id that cannot go in is left out, and said.
            fits = [i for i in ids if _HEADER_SAFE.fullmatch(i)]
            if len(fits) < len(ids):
                job.request = job.request.noted([
                    f"{HEADER_NOTE}{header} left out {len(ids) - len(fits)} messageId(s) "
                    "that cannot go in a header (printable ASCII without commas only)"])
            if fits:
                request = dataclasses.replace(
                    request, headers={**request.headers, header: ",".join(fits)})
        outcome, status, answer = await self._exchange(request)
        if self.bus is not None and self.bus.active:
            self._publish(request, outcome, status, answer, ids)
        return outcome, status, answer

    def _publish(self, request: VendorRequest, outcome: Outcome, status: int | None,
                 answer: str, message_ids: list[str]) -> None:
        """Show the exchange in the live debugger, with the vendor's secrets masked, and the
        messages it carried (the debugger's per-vendor columns)."""
        body = self.vendor.mask(request.body_bytes().decode("utf-8", "replace"), self.config)
        try:
            shown: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            shown = body
        self.bus.publish("vendor", {
            "site": self.site, "vendor": self.vendor.name, "method": request.method,
            "url": self.vendor.mask(request.url, self.config), "body": shown,
            "status": status, "ok": outcome.ok, "retry": outcome.retry,
            "detail": outcome.detail, "messageIds": message_ids,
            "answer": self.vendor.mask(answer[:2000], self.config)})

    async def _exchange(self, request: VendorRequest) -> tuple[Outcome, int | None, str]:
        taken: list[Limiter] = []
        try:
            try:
                for limiter in self.limiters:
                    await limiter.acquire()
                    taken.append(limiter)
            except Exception as exc:  # the limiter's store (Redis, the file) failed: not sent
                log.warning("%s: rate limiter failed: %r", self.vendor.name, exc)
                return Outcome(ok=False, retry=True, detail=f"rate limiter: {exc}"), None, ""
            self.counters.requests += 1
            try:
                response = await self.client.request(
                    request.method, request.url, headers=request.headers,
                    content=request.body_bytes(), timeout=self.options.timeout)
            except httpx.TimeoutException:
                return Outcome(ok=False, retry=True, detail="timed out"), None, ""
            except httpx.HTTPError as exc:  # refused, reset, closed without an answer
                detail = self.vendor.mask(f"{type(exc).__name__}: {exc}", self.config)
                return Outcome(ok=False, retry=True, detail=detail), None, ""
        finally:
            for limiter in taken:
                limiter.release()
        headers = dict(response.headers)
        outcome = self.vendor.read_response(response.status_code, headers, response.content)
        # The answer and what the adapter read of it, masked whole before anything keeps,
        # cuts or logs them: a vendor may echo the key (a 400 quoting the URL).
        answer = self.vendor.mask(response.text, self.config)
        if outcome.detail:
            outcome = dataclasses.replace(outcome,
                                          detail=self.vendor.mask(outcome.detail, self.config))
        if not outcome.ok and self.vendor.refuses_settings(response.status_code,
                                                           request.url.split("?", 1)[0]):
            where = self.vendor.mask(request.url.split("?", 1)[0], self.config)
            detail = outcome.detail or f"HTTP {response.status_code}"
            if detail == f"HTTP {response.status_code}" and answer:
                detail += f": {answer[:200]}"
            outcome = Outcome(ok=False, retry=True, pause=True, detail=f"{detail} ({where})")
        if outcome.retry and outcome.retry_after:
            # A 429 or 503 with Retry-After speaks for the credential, not just this request.
            for limiter in self.limiters:
                limiter.block_for(outcome.retry_after)
        if not outcome.ok:
            log.info("%s answered %s for %s", self.vendor.name, response.status_code,
                     self.vendor.mask(request.url.split("?", 1)[0], self.config))
        return outcome, response.status_code, answer


def _stored_states(store: Any) -> dict[str, Any]:
    """What the previous run wrote to the vendor-state store ({} when nothing can be read)."""
    if store is None:
        return {}
    try:
        states = store.read_all()
    except Exception:  # the status display must never stop delivery
        log.exception("could not read the vendor states left by the previous run")
        return {}
    return states if isinstance(states, dict) else {}


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False)


class Forwarder:
    """Starts one worker per configured (site, vendor) and wakes them when work arrives."""

    def __init__(self, spool: Spool, targets: Iterable[tuple[str, Vendor[Any], VendorConfig]],
                 options: DeliveryOptions | None = None, *,
                 limiter_factory: Callable[[int, float, str], Any] | None = None) -> None:
        self.spool = spool
        self.options = options or DeliveryOptions()
        #: One connection pool per vendor: httpcore walks every connection of its pool on
        #: each request and each answer (expiry checks that poll the socket), so one pool
        #: shared by all vendors cost ~20 % of the relay's CPU under load (bench/README.md).
        self.client = _client()
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.limiters: dict[tuple[str, str, str], Limiter] = {}
        #: With a SQLite spool file, each limit is also kept in a file beside it, so the
        #: relay and a backfill beside it stay within the limit together; the in-process
        #: limiter in front paces the starts (the shared log does not).
        self.file_limiters: dict[tuple[str, str, str], Limiter] = {}
        beside = (file_limiter_factory(spool, self.options.timeout + 5)
                  if limiter_factory is None else None)
        self.workers: list[VendorWorker] = []
        for site, vendor, config in targets:
            mine = []
            for limit in vendor.rate_limits(config):
                # Buckets are per credential, so two sites sharing a key share its limit.
                scope_value = vendor.scope_key(limit, config)
                key = (vendor.name, limit.scope, f"{scope_value}/{limit.per_seconds}")
                if key not in self.limiters:
                    # A factory (the Redis spool's) makes limiters shared by every process;
                    # same interface: acquire(), release(), block_for().
                    self.limiters[key] = (
                        limiter_factory(limit.requests, limit.per_seconds, "/".join(key))
                        if limiter_factory is not None
                        else SlidingWindowLimiter(limit.requests, limit.per_seconds))
                    if beside is not None:
                        self.file_limiters[key] = beside(limit.requests, limit.per_seconds,
                                                         "/".join(key))
                mine.append(self.limiters[key])
                if key in self.file_limiters:
                    mine.append(self.file_limiters[key])
            if vendor.name not in self._clients:
                self._clients[vendor.name] = self.client if not self._clients else _client()
            self.workers.append(VendorWorker(spool, site, vendor, config,
                                             self._clients[vendor.name], mine, self.options))
        #: Where vendor pause states are written for `shoprelay vendors status`.
        self.health_store = store_for(spool)
        for worker in self.workers:
            worker.health.store = self.health_store
        self._bus: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_began: float | None = None

    @property
    def bus(self) -> Any:
        return self._bus

    @bus.setter
    def bus(self, bus: Any) -> None:
        """The live debugger's bus: every vendor exchange is published on it."""
        self._bus = bus
        for worker in self.workers:
            worker.bus = bus

    def pause_reason(self, site: str, vendor: str) -> str | None:
        """Why (site, vendor) is paused on a credential or address failure, or None (the
        trace and the health page read this)."""
        for worker in self.workers:
            if worker.site == site and worker.vendor.name == vendor and worker.health.paused:
                return worker.health.shown_reason()
        return None

    def refused_event(self, site: str, vendor: str) -> dict[str, Any] | None:
        """The last event (site, vendor) refused alone and dead-lettered within the hour,
        while it accepts the others (shoprelay.operate.health reads it beside the pause)."""
        for worker in self.workers:
            if worker.site == site and worker.vendor.name == vendor:
                return worker.health.recent_refusal()
        return None

    def start(self, *, maintenance: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        stored = _stored_states(self.health_store)
        for worker in self.workers:  # a restart begins active: the settings may be fixed
            worker.health.restore(stored.get(f"{worker.site}/{worker.vendor.name}"))
            worker.health.save()
        self.spool.on_new_work = self._wake_threadsafe
        self._tasks = [asyncio.create_task(w.run(), name=f"deliver-{w.site}-{w.vendor.name}")
                       for w in self.workers]
        if maintenance:
            self._maintenance = asyncio.create_task(self._maintain(), name="spool-maintenance")

    async def _maintain(self) -> None:
        """Prune finished work past retention and log the spool's size, periodically."""
        while True:
            await self.maintain_once()
            await asyncio.sleep(self.options.maintenance_interval)

    async def maintain_once(self) -> None:
        try:
            if self.options.retention > 0:
                removed = await self.spool.prune(time.time() - self.options.retention)
                if removed:
                    log.info("spool: pruned %d finished deliveries", removed)
            stats = await self.spool.stats()
            log.info("spool: %s", stats.summary(time.time()))
        except Exception:  # maintenance must never take delivery down
            log.exception("spool maintenance failed")

    def _wake_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def begin_stop(self) -> None:
        """Start no new vendor request (requests in flight go on); safe to call twice."""
        if self._stop_began is None:
            self._stop_began = time.monotonic()
        for worker in self.workers:
            worker.stopping = True
            worker.wake.set()

    def begin_stop_threadsafe(self) -> None:
        """`begin_stop` from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.begin_stop)

    async def stop(self, deadline: float = 10.0) -> None:
        """Stop taking new work; let requests in flight finish within `deadline` seconds.
        Requests still running then are abandoned: their work stays queued in the spool and
        is sent again on the next start (the only source of duplicates). The deadline counts
        from the first `begin_stop` (the signal), not from this call."""
        self.begin_stop()
        assert self._stop_began is not None
        deadline -= time.monotonic() - self._stop_began
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=max(0.0, deadline))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for client in {id(c): c for c in (self.client, *self._clients.values())}.values():
            await client.aclose()
