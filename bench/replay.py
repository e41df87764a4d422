"""Replay benchmark: `eventctl replay` of many stored events against `propagate` flat out.

    python bench/replay.py                       # 1,000,000 events (and 100,000 for memory)
    python bench/replay.py --events 200000       # a shorter run
    python bench/replay.py --postgres postgresql://postgres@127.0.0.1:5432/test

In one run, against bench/propagate.py's counting sink (bench/baselines.py's bare ASGI app,
pinned to CPU 1), every client pinned to CPU 0: `eventctl propagate` flat out (a rate far
above what one core sends) for --duration seconds, the baseline; then `eventctl replay` of
every event of a SQLite database of --events rows (made here, in a temporary directory) and
of a tenth of them, flat out with the spool. For each: the achieved rate (from its summary),
the events the sink answered, and the peak RSS of the process (os.wait4's ru_maxrss). The
replay's rate over propagate's is the figure issue 13 asks for (at least 0.8); the peak RSS
of the full replay against the tenth shows whether memory grows with the number of events.
With --postgres URL the replay is measured from PostgreSQL too (its events table is
replaced). Traffic stays on 127.0.0.1; every run is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import pinned  # noqa: E402
from propagate import FLAT_OUT_RATE, answered, sink  # noqa: E402

from eventctl.store import Store  # noqa: E402

T0 = datetime(2026, 12, 1, tzinfo=UTC)
PAYLOAD = '{"order_id": %d, "customer": "acme", "amount_cents": 4999}'


def make_source(url: str, n: int) -> None:
    """A database of n events, one every millisecond, written in bulk."""
    store = Store.open(url, create=True)
    store.database.drop_tables([store.model])
    store.database.create_tables([store.model])
    model = store.model
    fields = [model.event_id, model.event_type, model.event_payload, model.received_at]
    chunk = 5000
    with store.database.atomic():
        for start in range(0, n, chunk):
            rows = [
                (
                    f"bench-{i:08d}",
                    ("order.created", "payment.succeeded", "user.signed_up")[i % 3],
                    PAYLOAD % i,
                    (T0 + timedelta(milliseconds=i)).replace(tzinfo=None),
                )
                for i in range(start, min(start + chunk, n))
            ]
            model.insert_many(rows, fields=fields).execute()
    store.close()


def run_measured(args: list[str], cpu: int, spool: Path) -> tuple[str, float, int]:
    """Run `eventctl ARGS` pinned to `cpu`: its stderr, wall seconds and peak RSS in KiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}
    env["EVENTCTL_SPOOL_PATH"] = str(spool)
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            pinned(cpu, [sys.executable, "-m", "eventctl", *args]),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        err.seek(0)
        text = err.read()
    if process.returncode != 0:
        raise SystemExit(f"bench: eventctl {' '.join(args)} exited {process.returncode}:\n{text}")
    # taskset execs the command, so the process waited for is eventctl itself
    return text, elapsed, usage.ru_maxrss


def find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"bench: no {pattern!r} in:\n{text}")
    return found.group(1)


def measure(name: str, args: list[str], port: int, cpu: int, workdir: Path) -> dict[str, Any]:
    before = answered(port)
    stderr, elapsed, rss = run_measured(args, cpu, workdir / f"spool-{time.monotonic_ns()}.db")
    row = {
        "run": name,
        "sent": int(find(r": (\d+) sent", stderr)),
        "delivered": int(find(r"(\d+) delivered", stderr)),
        "answered_by_sink": answered(port) - before,
        "achieved_per_s": float(find(r"achieved ([\d.]+)/s", stderr)),
        "cpu_us_per_event": float(find(r"CPU ([\d.]+) µs/event", stderr)),
        "wall_seconds": round(elapsed, 2),
        "peak_rss_mib": round(rss / 1024, 1),
    }
    print(
        f"{name:44} {row['achieved_per_s']:9.1f}/s  {row['cpu_us_per_event']:6.1f} us CPU/event  "
        f"peak RSS {row['peak_rss_mib']:6.1f} MiB  ({row['sent']} sent in {elapsed:.1f} s)",
        file=sys.stderr,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=20.0, help="propagate's seconds")
    parser.add_argument("--postgres", metavar="URL", help="also replay from this PostgreSQL")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--sink-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sink(args.sink_cpu) as port:
        workdir = Path(tmp)
        url = f"http://127.0.0.1:{port}/event"
        full = f"sqlite:///{workdir / 'full.db'}"
        tenth = f"sqlite:///{workdir / 'tenth.db'}"
        started = time.perf_counter()
        make_source(full, args.events)
        make_source(tenth, args.events // 10)
        print(f"sources made in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        events_file = str(ROOT / "events" / "events.json")
        propagate = [
            *("propagate", "--rate", str(FLAT_OUT_RATE), "--duration", f"{args.duration:g}"),
            *("--endpoint", url, "--events-file", events_file, "--quiet"),
        ]
        rows.append(measure("propagate flat out", propagate, port, args.client_cpu, workdir))
        for name, source, n in (
            ("replay, SQLite", full, args.events),
            ("replay, SQLite, a tenth", tenth, args.events // 10),
        ):
            replay = ["replay", "--database-url", source, "--to", url, "--quiet"]
            rows.append(measure(f"{name} ({n} events)", replay, port, args.client_cpu, workdir))
        if args.postgres:
            make_source(args.postgres, args.events // 5)
            replay = ["replay", "--database-url", args.postgres, "--to", url, "--quiet"]
            name = f"replay, PostgreSQL ({args.events // 5} events)"
            rows.append(measure(name, replay, port, args.client_cpu, workdir))
            pg = Store.open(args.postgres)
            pg.database.drop_tables([pg.model])
            pg.close()
    baseline = rows[0]["achieved_per_s"]
    for row in rows:
        row["vs_propagate_flat_out"] = round(row["achieved_per_s"] / baseline, 3)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "events": args.events,
        "rows": rows,
        "replay_vs_propagate": rows[1]["vs_propagate_flat_out"],
        "rss_full_vs_tenth": round(rows[1]["peak_rss_mib"] / rows[2]["peak_rss_mib"], 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
