"""The background forwarder: reads due work from the spool and delivers it to each vendor.

Each (site, vendor) pair has its own worker, so a vendor that is down or slow only ever delays
its own queue. Within a worker, work is split into lanes — one per visitor, or one per batch
key for vendors that take batches — that run concurrently; inside a lane requests go one after
another, so each visitor's events reach a vendor in the order they happened. A retryable failure
parks the rest of its lane until the retry is due (the spool's `due` query enforces that across
rounds too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from shoprelay.delivery.limits import SlidingWindowLimiter
from shoprelay.delivery.retry import backoff
from shoprelay.spool.base import OutboxRow
from shoprelay.spool.sqlite import SqliteSpool
from shoprelay.vendors.base import MappingError, Outcome, Vendor, VendorConfig, VendorRequest

log = logging.getLogger("shoprelay.delivery")

#: Rows fetched per round.
ROUND_SIZE = 500


@dataclass(slots=True)
class DeliveryOptions:
    timeout: float = 10.0
    concurrency: int = 16
    max_age: float = 24 * 3600.0
    idle_poll: float = 1.0


@dataclass(slots=True)
class _Job:
    """One HTTP request and the outbox rows it completes."""

    rows: list[OutboxRow]
    request: VendorRequest
    #: For a single row with several requests: index of this request, and how many there are.
    index: int = 0
    total: int = 1


@dataclass(slots=True)
class _Lane:
    jobs: list[_Job] = field(default_factory=list)


@dataclass(slots=True)
class DeliveryCounters:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    requests: int = 0


class VendorWorker:
    def __init__(
        self,
        spool: SqliteSpool,
        site: str,
        vendor: Vendor,
        config: VendorConfig,
        client: httpx.AsyncClient,
        limiters: list[SlidingWindowLimiter],
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

    async def run(self) -> None:
        while not self.stopping:
            try:
                handled = await self.run_once()
            except Exception:  # keep delivering whatever one round hit
                log.exception("delivery round failed for %s/%s", self.site, self.vendor.name)
                handled = 0
            if handled or self.stopping:
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), await self._idle_wait())

    async def _idle_wait(self) -> float:
        next_at = await self.spool.next_due_at(self.site, self.vendor.name)
        if next_at is None:
            return self.options.idle_poll * 5
        return min(max(0.01, next_at - time.time()), self.options.idle_poll * 5)

    async def run_once(self) -> int:
        now = time.time()
        rows = await self.spool.due(self.site, self.vendor.name, now, ROUND_SIZE)
        if not rows:
            return 0
        lanes = await self._plan(rows, now)
        await asyncio.gather(*(self._run_lane(lane) for lane in lanes))
        return len(rows)

    async def _plan(self, rows: list[OutboxRow], now: float) -> list[_Lane]:
        lanes: dict[str, _Lane] = {}
        batches: dict[str, list[tuple[OutboxRow, VendorRequest]]] = {}
        skipped: list[int] = []
        for row in rows:
            if now - row.created_at > self.options.max_age:
                await self.spool.mark_dead([row.id], status=None,
                                           error="older than the delivery max age; not sent")
                self.counters.dead += 1
                continue
            try:
                requests = self.vendor.requests_for(row.event, self.config)
            except MappingError as exc:
                await self.spool.mark_dead([row.id], status=None, error=f"mapping: {exc}")
                self.counters.dead += 1
                continue
            remaining = requests[row.sent:]
            if not remaining:
                skipped.append(row.id)
                continue
            key = remaining[0].batch_key
            if self.vendor.max_batch > 1 and len(remaining) == 1 and key is not None:
                batches.setdefault(key, []).append((row, remaining[0]))
                continue
            lane = lanes.setdefault(f"visitor:{row.visitor_id}", _Lane())
            for offset, request in enumerate(remaining):
                lane.jobs.append(_Job([row], request, row.sent + offset, len(requests)))
        if skipped:
            await self.spool.mark_done(skipped, skipped=True)
        size = max(1, min(self.vendor.max_batch,
                          int(getattr(self.config, "batch_size", self.vendor.max_batch))))
        for key, items in batches.items():
            lane = lanes.setdefault(f"batch:{key}", _Lane())
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                if len(chunk) == 1:
                    lane.jobs.append(_Job([chunk[0][0]], chunk[0][1]))
                else:
                    merged = self.vendor.merge([req for _, req in chunk], self.config)
                    lane.jobs.append(_Job([row for row, _ in chunk], merged))
        return list(lanes.values())

    async def _run_lane(self, lane: _Lane) -> None:
        async with self._semaphore:
            parked: set[int] = set()
            for job in lane.jobs:
                if self.stopping:
                    return
                if any(row.id in parked for row in job.rows):
                    continue
                outcome, status, answer = await self._send(job.request)
                ids = [row.id for row in job.rows]
                if outcome.ok:
                    if job.index + 1 < job.total:
                        await self.spool.mark_progress(ids[0], job.index + 1)
                        continue
                    await self.spool.mark_done(ids, status=status)
                    self.counters.delivered += len(ids)
                    if outcome.failed_events:
                        log.warning("%s accepted the request but refused %d event(s): %s",
                                    self.vendor.name, outcome.failed_events, outcome.detail)
                elif outcome.retry:
                    attempts = max(row.attempts for row in job.rows) + 1
                    delay = backoff(attempts, outcome.retry_after)
                    await self.spool.mark_retry(ids, next_at=time.time() + delay, status=status,
                                                error=outcome.detail)
                    self.counters.retried += len(ids)
                    # The rest of this lane waits: order per visitor matters more than speed.
                    return
                else:
                    request_text = self.vendor.mask(
                        f"{job.request.method} {job.request.url}\n"
                        f"{job.request.body_bytes().decode('utf-8', 'replace')}", self.config)
                    await self.spool.mark_dead(ids, status=status, error=outcome.detail,
                                               response=answer[:4000], request=request_text)
                    self.counters.dead += len(ids)
                    parked.update(ids)

    async def _send(self, request: VendorRequest) -> tuple[Outcome, int | None, str]:
        for limiter in self.limiters:
            await limiter.acquire()
        self.counters.requests += 1
        try:
            response = await self.client.request(
                request.method, request.url, headers=request.headers,
                content=request.body_bytes(), timeout=self.options.timeout)
        except httpx.TimeoutException:
            return Outcome(ok=False, retry=True, detail="timed out"), None, ""
        except httpx.HTTPError as exc:
            detail = self.vendor.mask(f"{type(exc).__name__}: {exc}", self.config)
            return Outcome(ok=False, retry=True, detail=detail), None, ""
        headers = dict(response.headers)
        outcome = self.vendor.read_response(response.status_code, headers, response.content)
        if response.status_code == 429 and outcome.retry_after:
            for limiter in self.limiters:
                limiter.block_for(outcome.retry_after)
        if not outcome.ok:
            log.info("%s answered %s for %s", self.vendor.name, response.status_code,
                     self.vendor.mask(request.url.split("?", 1)[0], self.config))
        return outcome, response.status_code, response.text


class Forwarder:
    """Starts one worker per configured (site, vendor) and wakes them when work arrives."""

    def __init__(self, spool: SqliteSpool, targets: Iterable[tuple[str, Vendor, VendorConfig]],
                 options: DeliveryOptions | None = None) -> None:
        self.spool = spool
        self.options = options or DeliveryOptions()
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False)
        limiters: dict[tuple[str, str, str], SlidingWindowLimiter] = {}
        self.workers: list[VendorWorker] = []
        for site, vendor, config in targets:
            mine = []
            for limit in vendor.rate_limits(config):
                # Buckets are per credential, so two sites sharing a key share its limit.
                scope_value = "+".join(str(getattr(config, part, "")) for part in
                                       limit.scope.split("+"))
                key = (vendor.name, limit.scope, f"{scope_value}/{limit.per_seconds}")
                if key not in limiters:
                    limiters[key] = SlidingWindowLimiter(limit.requests, limit.per_seconds)
                mine.append(limiters[key])
            self.workers.append(VendorWorker(spool, site, vendor, config, self.client, mine,
                                             self.options))
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.spool.on_new_work = self._wake_threadsafe
        self._tasks = [asyncio.create_task(w.run(), name=f"deliver-{w.site}-{w.vendor.name}")
                       for w in self.workers]

    def _wake_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    async def stop(self, deadline: float = 10.0) -> None:
        """Stop taking new work; let requests in flight finish within `deadline` seconds."""
        for worker in self.workers:
            worker.stopping = True
            worker.wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.client.aclose()
