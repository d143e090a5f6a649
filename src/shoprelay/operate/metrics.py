"""Prometheus metrics at `/metrics` (prometheus-client, one registry per relay app).

Ingest counts are kept as they happen; delivery counts are read from the forwarder's workers
and queue depth from the spool when Prometheus scrapes, so the hot paths pay nothing extra.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoprelay.spool.base import SpoolStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _DeliveryCollector(Collector):
    def __init__(self) -> None:
        self.forwarder: Any = None
        self.stats: SpoolStats | None = None

    def collect(self) -> Iterator[Any]:
        families = {
            name: CounterMetricFamily(f"shoprelay_vendor_{name}",
                                      f"Events {verb} per vendor since start",
                                      labels=["site", "vendor"])
            for name, verb in (("delivered", "delivered"), ("retried", "scheduled for a retry"),
                               ("dead_lettered", "sent to the dead letter"))
        }
        requests = CounterMetricFamily("shoprelay_vendor_requests",
                                       "HTTP requests sent to vendors since start",
                                       labels=["site", "vendor"])
        refused = CounterMetricFamily(
            "shoprelay_vendor_refused_in_batch",
            "Events of accepted batches the vendor did not store (dead-lettered)",
            labels=["site", "vendor"])
        dropped = CounterMetricFamily(
            "shoprelay_vendor_fields_dropped",
            "Malformed optional fields left out of vendor requests", labels=["site", "vendor"])
        paused = GaugeMetricFamily(
            "shoprelay_vendor_paused",
            "1 while a vendor is paused on a credential or address failure (its work queued)",
            labels=["site", "vendor", "reason"])
        pauses = CounterMetricFamily("shoprelay_vendor_pauses",
                                     "Times a vendor was paused since start",
                                     labels=["site", "vendor"])
        everything = GaugeMetricFamily(
            "shoprelay_vendor_refuses_everything",
            "1 while a paused vendor refused two different events (0: not paused, or a probe "
            "with another event is still telling)", labels=["site", "vendor"])
        alone = CounterMetricFamily(
            "shoprelay_vendor_refused_alone",
            "Events dead-lettered because the vendor refused them on a settings status while "
            "accepting others (a firewall on their content)", labels=["site", "vendor"])
        for worker in getattr(self.forwarder, "workers", []):
            labels = [worker.site, worker.vendor.name]
            counters = worker.counters
            families["delivered"].add_metric(labels, counters.delivered)
            families["retried"].add_metric(labels, counters.retried)
            families["dead_lettered"].add_metric(labels, counters.dead)
            requests.add_metric(labels, counters.requests)
            refused.add_metric(labels, getattr(counters, "refused_in_batch", 0))
            dropped.add_metric(labels, getattr(counters, "fields_dropped", 0))
            health = getattr(worker, "health", None)
            if health is not None:
                paused.add_metric([*labels, health.reason[:200]], 1 if health.paused else 0)
                pauses.add_metric(labels, health.pauses)
                everything.add_metric(labels, 1 if health.paused
                                      and getattr(health, "refuses", "") == "everything" else 0)
                alone.add_metric(labels, getattr(health, "events_refused", 0))
        yield from families.values()
        yield from (requests, refused, dropped, paused, pauses, everything, alone)
        queued = GaugeMetricFamily("shoprelay_vendor_queued", "Events waiting for a vendor",
                                   labels=["vendor"])
        oldest = GaugeMetricFamily("shoprelay_vendor_oldest_queued_seconds",
                                   "Age of the oldest event waiting for a vendor",
                                   labels=["vendor"])
        dead = GaugeMetricFamily("shoprelay_vendor_dead_letters", "Dead letters held",
                                 labels=["vendor"])
        spool = GaugeMetricFamily("shoprelay_spool_bytes", "Spool size on disk")
        intake = GaugeMetricFamily("shoprelay_intake_pending",
                                   "Accepted requests not yet routed by the rules stage")
        intake_age = GaugeMetricFamily("shoprelay_intake_oldest_seconds",
                                       "Age of the oldest accepted request not yet routed")
        intake_failed = GaugeMetricFamily("shoprelay_intake_failed",
                                          "Accepted requests the rules stage failed on (kept)")
        if self.stats is not None:
            first_in = self.stats.intake_oldest
            intake.add_metric([], self.stats.intake)
            intake_age.add_metric([], max(0.0, time.time() - first_in) if first_in else 0.0)
            intake_failed.add_metric([], self.stats.intake_failed)
            now = time.time()
            for vendor, counts in self.stats.counts.items():
                queued.add_metric([vendor], counts.get("queued", 0))
                dead.add_metric([vendor], counts.get("dead", 0))
                first = self.stats.oldest_queued.get(vendor)
                oldest.add_metric([vendor], max(0.0, now - first) if first else 0.0)
            spool.add_metric([], getattr(self.stats, "file_bytes", 0))
        yield from (queued, oldest, dead, spool, intake, intake_age, intake_failed)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter("shoprelay_messages_accepted", "Messages accepted and stored",
                                ["site"], registry=self.registry)
        self.rejected = Counter("shoprelay_messages_rejected", "Messages or requests refused",
                                ["reason"], registry=self.registry)
        #: Headers the relay would not believe although a trusted proxy passed them on.
        self.refused_headers = Counter(
            "shoprelay_headers_refused", "Request headers refused (e.g. a non-IP "
            "X-Forwarded-For from a trusted proxy)", ["header"], registry=self.registry)
        self.latency = Histogram(
            "shoprelay_request_duration_seconds", "Time to answer a request", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self._delivery = _DeliveryCollector()
        self.registry.register(self._delivery)

    def render(self, forwarder: Any, stats: SpoolStats | None) -> bytes:
        self._delivery.forwarder = forwarder
        self._delivery.stats = stats
        return generate_latest(self.registry)
