"""What the run report costs: recording per event, writing it, its size and memory.

    python bench/report.py                          # 1,000,000 events over 500 s
    python bench/report.py --events 2000000 --seconds 7200 --json bench-report.json

Simulates a run through the real calls `propagate` makes per event (Timeline.sent and
.answered, the report's latency and service Histogram.record; a retry for each 503, a
dropped send now and then, Timeline.sample ten times a second), with lognormal service
times and 2% of answers 503. Random values are drawn in chunks outside the timed loop, so
the recording cost is the calls alone. Then it times write_report to .html and .json
(median of 3), and measures the files' sizes, the report's size in memory (tracemalloc of
a copy read back from its JSON), the extra memory a write takes (tracemalloc peak) and
the process's peak RSS. Prints a Markdown table; --json PATH also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventctl.histogram import Histogram  # noqa: E402
from eventctl.propagator.report import Report, Timeline, write_report  # noqa: E402

CHUNK = 10_000


def record(events: int, seconds: float, seed: int) -> tuple[Report, float]:
    """A simulated run's report, and the seconds spent in the recording calls."""
    rng = random.Random(seed)
    timeline, latency, service = Timeline(), Histogram(), Histogram()
    rate = events / seconds
    sample_every = max(1, round(rate / 10))
    spent = 0.0
    for first in range(0, events, CHUNK):
        n = min(CHUNK, events - first)
        due = [(first + i) / rate for i in range(n)]
        took = [rng.lognormvariate(-6.5, 0.7) for _ in range(n)]
        late = [t + rng.expovariate(2000.0) for t in took]
        results = ["503" if rng.random() < 0.02 else "200" for _ in range(n)]
        in_flight = [rng.randint(0, 64) for _ in range(n)]
        started = time.perf_counter()
        sent, answered = timeline.sent, timeline.answered
        record_latency, record_service = latency.record, service.record
        for i in range(n):
            t, s, lat, result = due[i], took[i], late[i], results[i]
            sent(t)
            answered(t + lat, result, lat, s)
            record_latency(lat)
            record_service(s)
            if result == "503":
                timeline.retried(t + lat + 0.05)
            if i % sample_every == 0:
                timeline.sample(t, rate, in_flight[i])
            if i % 5000 == 0:
                timeline.dropped(t)
        spent += time.perf_counter() - started
    meta = {
        "command": f"python bench/report.py --events {events} --seconds {seconds:g}",
        "endpoint": "http://127.0.0.1:8000/event",
        "started_at": "2026-12-03T06:00:00Z",
        "duration": seconds,
        "workers": 1,
        "stages": [{"rate": rate, "duration": f"{seconds:g}s"}],
    }
    summary = {
        "generated": events,
        "delivered": events,
        "failed": 0,
        "dropped": sum(row.dropped for _, row in timeline.rows()),
        "retries": sum(row.retries for _, row in timeline.rows()),
        "achieved_rate": rate,
    }
    return Report(meta, summary, latency, service, timeline), spent


def timed_write(path: Path, report: Report, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        write_report(path, report)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def traced_peak(path: Path, report: Report) -> int:
    tracemalloc.start()
    try:
        write_report(path, report)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def in_memory(report: Report) -> int:
    data = report.to_json()
    tracemalloc.start()
    try:
        copy = Report.from_json(data)
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del copy
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="write run.html and run.json here")
    args = parser.parse_args()

    report, spent = record(args.events, args.seconds, args.seed)
    figures: dict[str, Any] = {
        "events": args.events,
        "seconds": args.seconds,
        "rows": report.timeline.length,
        "row_width_s": report.timeline.width,
        "record_us_per_event": round(spent / args.events * 1e6, 3),
        "report_in_memory_mb": round(in_memory(report) / 1e6, 2),
    }
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for suffix in ("html", "json"):
            path = directory / f"run.{suffix}"
            figures[f"write_{suffix}_s"] = round(timed_write(path, report), 4)
            figures[f"{suffix}_bytes"] = path.stat().st_size
            figures[f"write_{suffix}_peak_mb"] = round(traced_peak(path, report) / 1e6, 2)
    figures["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)

    print(f"Report of {args.events:,} events over {args.seconds:g} s")
    print()
    print("| measure | value |")
    print("|---|---|")
    labels = {
        "rows": "timeline rows",
        "row_width_s": "row width (s)",
        "record_us_per_event": "recording per event (µs: sent, answered, 2 record)",
        "report_in_memory_mb": "report in memory (MB, tracemalloc)",
        "write_html_s": "write .html (s, median of 3)",
        "html_bytes": ".html size (bytes)",
        "write_html_peak_mb": "write .html peak (MB, tracemalloc)",
        "write_json_s": "write .json (s, median of 3)",
        "json_bytes": ".json size (bytes)",
        "write_json_peak_mb": "write .json peak (MB, tracemalloc)",
        "max_rss_mb": "process peak RSS (MB, whole benchmark)",
    }
    for key, label in labels.items():
        value = figures[key]
        print(f"| {label} | {value:,} |" if isinstance(value, int) else f"| {label} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
