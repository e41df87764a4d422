"""Prometheus metrics of the consumer, one set per app (no global registry).

With several worker processes (`serve --workers N`), values go through prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serve`), and any worker's /metrics
answers for all of them.

Store and forward has two kinds. What this process's forwarder did (deliveries, attempts,
their durations) is counted by the forwarder itself (`RouteCounters`) and copied into
counters here at each scrape, and with several workers also every second by each worker,
so that the multiprocess collector sums every worker's (a worker stopping may take its last
second's counts with it). What a route is now (its state, backlog and lag) is the
database's, the same from any worker: those gauges are read from the outbox at each scrape,
by the worker scraped, and never summed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from eventctl.errors import DatabaseError
from eventctl.outbox import ACTIVE, DISABLED, PAUSED, Outbox

if TYPE_CHECKING:
    from eventctl.consumer.forwarder import Forwarder
    from eventctl.store import Store

log = logging.getLogger("eventctl.consumer.metrics")

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUTE_STATES = (ACTIVE, PAUSED, DISABLED)
SYNC_SECONDS = 1.0

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouteGauges(Collector):
    """The gauges of every route the database knows, read from the outbox at each scrape.
    A database that cannot answer leaves them out of that scrape (logged), rather than
    failing the rest of /metrics."""

    def __init__(self, store: Store) -> None:
        self.outbox = Outbox(store)

    def describe(self) -> list[Any]:
        return []  # the routes are known only at a scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            routes = self.outbox.status()
        except DatabaseError as exc:
            log.warning("/metrics without the forwarding gauges: %s", exc)
            return
        now = datetime.now(UTC)
        queued = GaugeMetricFamily(
            "eventctl_forward_queued",
            "Events waiting in the outbox to be delivered, per route (the database's count).",
            labels=["route"],
        )
        lag = GaugeMetricFamily(
            "eventctl_forward_lag_seconds",
            "Age of the oldest undelivered event, per route (0 when none is queued).",
            labels=["route"],
        )
        state = GaugeMetricFamily(
            "eventctl_forward_route_state",
            "1 for the route's current state (active, paused, disabled), 0 for the others.",
            labels=["route", "state"],
        )
        for route in routes:
            queued.add_metric([route.name], route.queued)
            lag.add_metric([route.name], route.lag_seconds(now))
            for name in ROUTE_STATES:
                state.add_metric([route.name, name], float(route.state == name))
        yield from (queued, lag, state)


class ForwardCounters:
    """What this process's forwarder did, copied from its RouteCounters into Prometheus
    counters and a histogram (`sync`: the increase since the last copy, and the durations
    the forwarder recorded since)."""

    FIELDS = ("enqueued", "attempts", "delivered", "retried", "failed")

    def __init__(self, forwarder: Forwarder, registry: CollectorRegistry | None) -> None:
        self.forwarder = forwarder
        helps = {
            "enqueued": "Outbox entries this process wrote (one per new event and matching route).",
            "attempts": "Deliveries this process attempted.",
            "delivered": "Events this process delivered (2xx).",
            "retried": "Attempts this process will retry (no answer, 5xx, 408, 429).",
            "failed": "Events that failed for good in this process (kept as failed).",
        }
        self.counters = {
            name: Counter(f"eventctl_forward_{name}", helps[name], ["route"], registry=registry)
            for name in self.FIELDS
        }
        self.seconds = Histogram(
            "eventctl_forward_delivery_seconds",
            "Time from sending an event to its 2xx answer, per route.",
            ["route"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.copied: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def sync(self) -> None:
        """Copy what the forwarder counted since the last call. Thread-safe; the forwarder
        only adds to its counts and appends durations, so reading them from another thread
        misses nothing (what it adds meanwhile is copied next time)."""
        with self.lock:
            for route in self.forwarder.routes:
                name = route.config.name
                counts = route.counters
                for field, counter in self.counters.items():
                    value = getattr(counts, field)
                    before = self.copied.get((name, field), 0)
                    child = counter.labels(name)
                    if value > before:
                        child.inc(value - before)
                        self.copied[name, field] = value
                durations = counts.durations
                taken = len(durations)
                observe = self.seconds.labels(name).observe
                for seconds in durations[:taken]:
                    observe(seconds)
                del durations[:taken]


class Metrics:
    """Counters, gauges and histograms of one consumer app."""

    def __init__(
        self,
        *,
        multiprocess: bool = False,
        store: Store | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        """With `store`, the forwarding gauges of its outbox; with `forwarder`, the counters
        of what it does."""
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        registry = None if multiprocess else self.registry
        self.received = Counter(
            "eventctl_events_received", "Valid events handed to the writer.", registry=registry
        )
        self.stored = Counter(
            "eventctl_events_stored", "Events committed as new rows.", registry=registry
        )
        self.duplicates = Counter(
            "eventctl_events_duplicate",
            "Events whose id was already stored (idempotent replays).",
            registry=registry,
        )
        self.rejected = Counter(
            "eventctl_requests_rejected",
            "Requests answered with an error, by status and error code.",
            ["status", "reason"],
            registry=registry,
        )
        self.commit_events = Histogram(
            "eventctl_commit_batch_events",
            "Events per commit (group commit batch size).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "eventctl_commit_duration_seconds",
            "Time to insert and commit one batch.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.commit_failures = Counter(
            "eventctl_commit_failures", "Commits that failed.", registry=registry
        )
        self.request_seconds = Histogram(
            "eventctl_request_duration_seconds",
            "Time from request start to response, for POST /event and /events.",
            ["path"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "eventctl_queue_depth_events",
            "Events handed to the writer and not yet committed (at the last commit).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.gauges = RouteGauges(store) if store is not None else None
        if self.gauges is not None and not multiprocess:
            self.registry.register(self.gauges)
        self.forwarding = ForwardCounters(forwarder, registry) if forwarder else None
        if self.forwarding is not None and multiprocess:
            # the other workers are not scraped: each copies its own counts every second
            threading.Thread(
                target=self._sync_every, name="eventctl-metrics-sync", daemon=True
            ).start()

    def _sync_every(self) -> None:
        assert self.forwarding is not None
        while True:
            time.sleep(SYNC_SECONDS)
            self.forwarding.sync()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format. Blocking: the forwarding gauges read the
        database."""
        if self.forwarding is not None:
            self.forwarding.sync()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            if self.gauges is not None:
                registry.register(self.gauges)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def on_commit(self, events: int, new: int, seconds: float, queued: int, failed: bool) -> None:
        """Called by the writer thread after each commit attempt."""
        self.commit_seconds.observe(seconds)
        self.queue_depth.set(queued)
        if failed:
            self.commit_failures.inc()
            return
        self.commit_events.observe(events)
        self.stored.inc(new)
        self.duplicates.inc(events - new)
