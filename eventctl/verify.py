"""`eventctl verify`: the propagator's record against what the database holds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventctl.spool import Spool
from eventctl.store import Store

UNEXPECTED_MARGIN = timedelta(seconds=1)
SHOWN = 20


@dataclass
class Report:
    """Counts, and the first few ids of each kind of problem."""

    generated: int = 0
    acknowledged: int = 0
    stored: int = 0
    pending: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stored_unacknowledged: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated

    def to_json(self) -> dict[str, Any]:
        cuts = (
            statistics.quantiles(self.latencies, n=100, method="inclusive")
            if len(self.latencies) > 1
            else self.latencies * 99
        )
        return {
            "ok": self.ok,
            "generated": self.generated,
            "acknowledged": self.acknowledged,
            "stored": self.stored,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "pending": self.pending,
            "failed": self.failed,
            "stored_unacknowledged": self.stored_unacknowledged,
            "latency_p50_ms": round(cuts[49] * 1000, 2) if cuts else None,
            "latency_p99_ms": round(cuts[98] * 1000, 2) if cuts else None,
            "lost_ids": self.lost[:SHOWN],
            "duplicated_ids": self.duplicated[:SHOWN],
            "unexpected_ids": self.unexpected[:SHOWN],
        }


def verify(spool: Spool, store: Store) -> Report:
    """Compare every event the spool generated with the database's rows.

    lost: acknowledged (delivered) but not in the database; duplicated: an event id stored
    more than once; unexpected: rows received since the first generated event whose id the
    spool never generated; latency: from generation to the database's received_at.
    """
    report = Report()
    entries = spool.entries()
    if not entries:
        return report
    since = datetime.fromtimestamp(min(e.created_at for e in entries), UTC) - UNEXPECTED_MARGIN
    rows = store.ids_since(since)
    received: dict[str, datetime] = {}
    seen_twice: set[str] = set()
    for event_id, received_at in rows:
        if event_id in received:
            seen_twice.add(event_id)
        received[event_id] = received_at
    generated = set()
    for entry in entries:
        generated.add(entry.event_id)
        report.generated += 1
        stored_at = received.get(entry.event_id)
        if entry.state == "delivered":
            report.acknowledged += 1
            if stored_at is None:
                report.lost.append(entry.event_id)
        else:
            report.pending += entry.state == "pending"
            report.failed += entry.state == "failed"
            report.stored_unacknowledged += stored_at is not None
        if stored_at is not None:
            report.stored += 1
            report.latencies.append(max(stored_at.timestamp() - entry.created_at, 0.0))
    report.duplicated = sorted(seen_twice & generated)
    report.unexpected = sorted(set(received) - generated)
    return report
