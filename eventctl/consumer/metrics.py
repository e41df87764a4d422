"""Prometheus metrics of the consumer, one set per app (no global registry).

With several worker processes (`serve --workers N`), values go through prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serve`), and any worker's /metrics
answers for all of them.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters, gauges and histograms of one consumer app."""

    def __init__(self, *, multiprocess: bool = False) -> None:
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

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
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
