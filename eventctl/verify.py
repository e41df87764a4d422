"""`eventctl verify`: the propagator's record of a run against what the database holds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventctl.propagator.spool import Run, Spool
from eventctl.store import Store

OTHER_MARGIN = timedelta(seconds=1)
SHOWN = 20


@dataclass
class Report:
    """Counts, and the first few ids of each kind of problem, for one run or all of them."""

    run_id: int | None = None
    kind: str = "propagate"
    target: int | None = None
    runs: int = 0
    generated: int = 0
    acknowledged: int = 0
    stored: int = 0
    pending: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    stored_unacknowledged: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def unfinished(self) -> bool:
        """The run generated fewer events than its --count asked for."""
        return self.target is not None and self.generated < self.target

    @property
    def verdict(self) -> str:
        """FAILED: acknowledged events lost or duplicated; INCOMPLETE: events failed, are
        still pending, or are yet to be generated; OK: none of these."""
        if self.lost or self.duplicated:
            return "FAILED"
        if self.failed or self.pending or self.unfinished:
            return "INCOMPLETE"
        return "OK"

    @property
    def ok(self) -> bool:
        return self.verdict == "OK"

    def to_json(self) -> dict[str, Any]:
        cuts = (
            statistics.quantiles(self.latencies, n=100, method="inclusive")
            if len(self.latencies) > 1
            else self.latencies * 99
        )
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "run": self.run_id,
            "target": self.target,
            "runs": self.runs,
            "generated": self.generated,
            "acknowledged": self.acknowledged,
            "stored": self.stored,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "pending": self.pending,
            "failed": self.failed,
            "other": len(self.other),
            "stored_unacknowledged": self.stored_unacknowledged,
            "latency_p50_ms": round(cuts[49] * 1000, 2) if cuts else None,
            "latency_p99_ms": round(cuts[98] * 1000, 2) if cuts else None,
            "lost_ids": self.lost[:SHOWN],
            "duplicated_ids": self.duplicated[:SHOWN],
            "other_ids": self.other[:SHOWN],
        }


def compare(
    spool: Spool, store: Store, run: Run | None = None, *, all_runs: bool = False
) -> Report:
    """Compare the events of `run` (default: the latest run; every event with `all_runs`,
    or when the spool has no runs) with the database's rows.

    lost: acknowledged (delivered) but not in the database (looked up by id, so that an event
    a replay sent with an id stored earlier is found); duplicated: an event id stored
    more than once; other: rows received since the first event checked that no run of the
    spool generated (send-once, curl, another sender), counted but never a problem; latency:
    from generation to the database's received_at.
    """
    if run is None and not all_runs:
        run = spool.latest_run()
    report = Report()
    if run is not None:
        report.run_id, report.target, report.runs = run.run_id, run.target, 1
        report.kind = run.kind
    else:
        report.runs = len(spool.runs())
    entries = spool.entries(run_id=None if run is None else run.run_id)
    if not entries:
        return report
    since = datetime.fromtimestamp(min(e.created_at for e in entries), UTC) - OTHER_MARGIN
    rows = store.ids_since(since)
    received: dict[str, datetime] = {}
    seen_twice: set[str] = set()
    for event_id, received_at in rows:
        if event_id in received:
            seen_twice.add(event_id)
        received[event_id] = received_at
    # an event replayed with its own id may have been stored before this run began
    replays = {r.run_id for r in spool.runs() if r.kind == "replay"}
    unseen = [
        e.event_id
        for e in entries
        if e.state == "delivered" and e.event_id not in received and e.run_id in replays
    ]
    stored_before = store.stored_ids(unseen) if unseen else set()
    generated = set()
    for entry in entries:
        generated.add(entry.event_id)
        report.generated += 1
        stored_at = received.get(entry.event_id)
        if entry.state == "delivered":
            report.acknowledged += 1
            if entry.event_id in stored_before:
                report.stored += 1
            elif stored_at is None:
                report.lost.append(entry.event_id)
        else:
            report.pending += entry.state == "pending"
            report.failed += entry.state == "failed"
            report.stored_unacknowledged += stored_at is not None
        if stored_at is not None:
            report.stored += 1
            report.latencies.append(max(stored_at.timestamp() - entry.created_at, 0.0))
    report.duplicated = sorted(seen_twice & generated)
    spooled = generated if run is None else {e.event_id for e in spool.entries()}
    report.other = sorted(set(received) - spooled)
    return report
