"""How `list-events` (and the queries behind GET /events) hold up on a large table.

    python bench/list_events.py --rows 1000000

Builds a SQLite database of N events (12 types, received over the last N/100 seconds) in a
temporary directory, then times `eventctl list-events` as a real subprocess for each query
(median of 5 runs, start-up included) against `eventctl --version` as the start-up baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventctl.events import Event
from eventctl.store import Incoming, Store

QUERIES = {
    "newest 20": [],
    "--type (1 of 12 types)": ["--type", "type.7"],
    "--since 10m": ["--since", "10m"],
    "--until, old window": ["--until", "2000-01-01T00:00:00Z"],
    "--q (payload substring, found early)": ["--q", "needle-42"],
    "--q matching nothing (full scan)": ["--q", "absent-text"],
    "--limit 1000 --output ndjson": ["--limit", "1000", "--output", "ndjson"],
}


def build(path: Path, rows: int) -> None:
    store = Store.open(f"sqlite:///{path}", create=True)
    start = datetime.now(UTC) - timedelta(seconds=rows / 100)
    batch = 10_000
    for offset in range(0, rows, batch):
        store.insert(
            [
                Incoming(
                    f"bench-{i}",
                    Event(f"type.{i % 12}", f'{{"n": {i}, "tag": "needle-{i % 1000}"}}'),
                    start + timedelta(seconds=i / 100),
                )
                for i in range(offset, min(offset + batch, rows))
            ]
        )
    store.close()


def timed(args: list[str], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "eventctl", *args], check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.db"
        started = time.perf_counter()
        build(path, args.rows)
        print(
            f"built {args.rows} rows in {time.perf_counter() - started:.1f} s "
            f"({path.stat().st_size / 1e6:.0f} MB)"
        )
        baseline = timed(["--version"])
        print(f"| query | median wall time | minus start-up ({baseline * 1000:.0f} ms) |")
        print("|---|---|---|")
        for name, extra in QUERIES.items():
            took = timed(["list-events", "--database-url", f"sqlite:///{path}", *extra])
            print(f"| {name} | {took * 1000:.0f} ms | {(took - baseline) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
