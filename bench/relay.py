"""Sustained store and forward: `eventctl propagate` -> serve A -> serve B, for 60 s.

    python bench/relay.py                                    # 1,000 events/s for 60 s
    python bench/relay.py --rates 500,1000,2000,3000 --duration 20
    python bench/relay.py --json docs/bench-relay.json

For each rate R of --rates, two runs, each with fresh processes and databases:

  relay   a fresh serve B (SQLite), a fresh serve A (SQLite, `--forward-to` B's /event),
          and `eventctl propagate --rate R --duration D` sending to A
  direct  the baseline (unless --no-baseline): the same propagate sending to B alone, with
          B and propagate where they are in the relay run: what the two ends achieve on
          this machine at that moment, without the relay between them

in ABBA order over the rates (relay first at the first rate, direct first at the next), so
that drift of the (shared) machine falls on both. Everything is on 127.0.0.1, every
database and the propagator's spool in a temporary directory removed at the end. Pinning
(taskset): A, the relay under test, runs alone on the server core (--server-cpu, 0); the
propagator and B, the two ends, share the client core (--client-cpu, 1), as does this
script, which samples; so A's ingest and its forwarding compete for one core, as in
bench/ingest.py's `forward` target, and the ends take none of it.

Every second (through read-only SQLite connections) it samples A's and B's event counts,
A's outbox (queued entries), `forward_routes.delivered`, and the lag: now minus the
received_at of the oldest queued event, 0 with nothing queued (the lag_seconds of
`eventctl routes`), and the CPU time of every process (A's main thread, its event loop,
apart). The window runs from the first sample with an event stored at A to the last sample
after which A still grew (propagate's start-up and the partial last second are left out).
Over it: the rate achieved at B and at A (events/s), against R and against the direct run;
the lag p50/p99/max over the once-a-second samples, and the lag and backlog at the
window's end; each process's share of a core and CPU per event. From D seconds after
propagate starts (its sending ends within its start-up after that), samples come every
0.2 s, so that the window's end and the drain are timed to 0.2 s: the drain time runs from
the end of sending (the window's end plus the events A stored after it, at the window's
rate) to the first sample with A's outbox empty and B holding as many events as A (at most
--drain-timeout s); the direct run's is the floor of that measure. Last it checks that B
holds exactly A's events (the same count, the same set of distinct event ids) and A as many
as propagate delivered. Everything is bounded and stops by itself; --json PATH writes
every figure and the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import (  # noqa: E402
    Outboxed,
    _environ,
    cpu_seconds,
    free_port,
    machine,
    main_thread_cpu_seconds,
    outboxed,
    pinned,
    spawn,
)

DRAIN_TIMEOUT_SECONDS = 120.0
DRAIN_SAMPLE_SECONDS = 0.2


class Sample(NamedTuple):
    t: float  # seconds since propagate started
    a_events: int
    b_events: int
    queued: int
    delivered: int
    lag_s: float
    cpu_a: float
    loop_a: float
    cpu_b: float
    cpu_propagate: float
    sending: bool  # propagate still running
    tick: bool  # one of the once-a-second samples (the lag's percentiles are over these)


def count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
        conn.close()
    except sqlite3.OperationalError:  # the server is still creating its tables
        return 0
    return int(n)


def outbox_of(db: Path) -> Outboxed | None:
    try:
        return outboxed(db) if db.exists() else None
    except sqlite3.OperationalError:  # the forwarder is still creating its tables
        return None


def event_ids(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        ids = [row[0] for row in conn.execute("SELECT event_id FROM events")]
    conn.close()
    return ids


def serve_argv(port: int, db: Path, forward_to: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "eventctl", "serve", "--port", str(port)]
    argv += ["--database-url", f"sqlite:///{db}"]
    return argv + (["--forward-to", forward_to] if forward_to else [])


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _rate(first: Sample, last: Sample, field: str) -> float:
    span = last.t - first.t
    return (getattr(last, field) - getattr(first, field)) / span if span > 0 else 0.0


def window_of(samples: list[Sample]) -> tuple[int, int]:
    """Indexes of the first and last sample of the measured window: from the first sample
    with an event stored at A to the last after which A still grew (sending ended in the
    interval after it, so that partial interval and propagate's exit are left out, as is
    its start-up before)."""
    started = next((i for i, s in enumerate(samples) if s.a_events > 0), None)
    if started is None:
        raise SystemExit("bench: propagate stored nothing")
    end = max(
        (
            i
            for i in range(started, len(samples) - 1)
            if samples[i + 1].a_events > samples[i].a_events
        ),
        default=started,
    )
    if end - started < 1:
        raise SystemExit("bench: propagate stored too little to measure a window")
    return started, end


def summarize(rate: float, samples: list[Sample], end: int, first_index: int) -> dict[str, Any]:
    """The figures of one run's window."""
    window = samples[first_index : end + 1]
    first, last = window[0], window[-1]
    span = last.t - first.t
    lags = [s.lag_s for s in window if s.tick]
    stored_a = last.a_events - first.a_events
    stored_b = last.b_events - first.b_events
    b_rate = _rate(first, last, "b_events")
    a_rate = _rate(first, last, "a_events")

    def per_event(field: str, events: int) -> float:
        return (getattr(last, field) - getattr(first, field)) / events * 1e6 if events else 0.0

    return {
        "rate": rate,
        "window_s": round(span, 2),
        "achieved_b_per_s": round(b_rate, 1),
        "achieved_a_per_s": round(a_rate, 1),
        "b_vs_rate": round(b_rate / rate, 4),
        "a_vs_rate": round(a_rate / rate, 4),
        "b_vs_a": round(b_rate / a_rate, 4) if a_rate else 0.0,
        "forwarded_per_s": round(_rate(first, last, "delivered"), 1),
        "lag_p50_s": round(quantile(lags, 0.50), 3),
        "lag_p99_s": round(quantile(lags, 0.99), 3),
        "lag_max_s": round(max(lags), 3),
        "lag_end_s": round(last.lag_s, 3),
        "backlog_end": last.queued,
        "backlog_max": max(s.queued for s in window),
        "cpu_share_a": round((last.cpu_a - first.cpu_a) / span, 3),
        "cpu_share_a_loop": round((last.loop_a - first.loop_a) / span, 3),
        "cpu_share_b": round((last.cpu_b - first.cpu_b) / span, 3),
        "cpu_share_propagate": round((last.cpu_propagate - first.cpu_propagate) / span, 3),
        "cpu_us_per_event_a": round(per_event("cpu_a", stored_a), 1),
        "cpu_us_per_event_a_loop": round(per_event("loop_a", stored_a), 1),
        "cpu_us_per_event_b": round(per_event("cpu_b", stored_b), 1),
        "cpu_us_per_event_propagate": round(per_event("cpu_propagate", stored_a), 1),
    }


def propagate_summary(stderr: str) -> dict[str, Any]:
    found = re.search(r"(\d+) sent, .*?(\d+) delivered, (\d+) failed, (\d+) pending", stderr)
    achieved = re.search(r"achieved ([\d.]+)/s", stderr)
    if found is None:
        return {"propagate_output": stderr[-2000:]}
    sent, delivered, failed, pending = map(int, found.groups())
    return {
        "propagate_sent": sent,
        "propagate_delivered": delivered,
        "propagate_failed": failed,
        "propagate_pending": pending,
        "propagate_achieved_per_s": float(achieved.group(1)) if achieved else None,
    }


def routes_check(db: Path, taken: Sample, cpu: int, env: dict[str, str]) -> dict[str, Any]:
    """Once per relay run, mid-way: `eventctl routes --json` beside the sample just taken,
    to check that the SQL here reads the outbox as the CLI does (too slow to run every
    second: a Python start-up of its own), with SQL samples just before and just after."""
    argv = [sys.executable, "-m", "eventctl", "routes", "--json"]
    argv += ["--database-url", f"sqlite:///{db}"]
    done = subprocess.run(
        pinned(cpu, argv), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    after = outbox_of(db)
    try:
        (route,) = json.loads(done.stdout)["routes"]
    except (ValueError, KeyError, TypeError):
        return {"error": (done.stderr or done.stdout)[-500:]}
    return {
        "sql_before": {"queued": taken.queued, "lag_s": taken.lag_s},
        "routes": {k: route.get(k) for k in ("queued", "lag_seconds", "delivered", "state")},
        "sql_after": None
        if after is None
        else {"queued": after.backlog - after.failed, "lag_s": round(after.lag_seconds, 3)},
    }


def propagate_argv(rate: float, port: int, spool: Path, duration: float) -> list[str]:
    argv = [sys.executable, "-m", "eventctl", "propagate", "--rate", f"{rate:g}"]
    argv += ["--duration", f"{duration:g}s", "--quiet", "--seed", "1"]
    argv += ["--endpoint", f"http://127.0.0.1:{port}/event", "--spool", str(spool)]
    return [*argv, "--events-file", str(ROOT / "events" / "events.json")]


def run(rate: float, mode: str, args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - one run, start to end, in order
    """One run at `rate`: `relay` (propagate -> A -> B) or `direct` (propagate -> B, the
    baseline: the same ends, in the same places, without the relay between them)."""
    relay = mode == "relay"
    with tempfile.TemporaryDirectory(prefix="eventctl-relay-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        b_db = work / "b.db"
        a_db = work / "a.db" if relay else b_db
        b_port = free_port()
        env = _environ()
        b = stack.enter_context(spawn(serve_argv(b_port, b_db), args.client_cpu, b_port, env=env))
        a, a_port = b, b_port
        if relay:
            a_port = free_port()
            forward_to = f"http://127.0.0.1:{b_port}/event"
            a = stack.enter_context(
                spawn(serve_argv(a_port, a_db, forward_to), args.server_cpu, a_port, env=env)
            )
        log = stack.enter_context((work / "propagate.log").open("w+"))
        started = time.monotonic()
        sender = subprocess.Popen(
            pinned(args.client_cpu, propagate_argv(rate, a_port, work / "spool.db", args.duration)),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        samples: list[Sample] = []
        last_sender_cpu = 0.0

        def sample(sending: bool, tick: bool = False) -> Sample:
            nonlocal last_sender_cpu
            if sender.poll() is None:
                last_sender_cpu = cpu_seconds(sender.pid) or last_sender_cpu
            state = outbox_of(a_db) if relay else None
            b_events = count(b_db)
            taken = Sample(
                t=round(time.monotonic() - started, 3),
                a_events=count(a_db) if relay else b_events,
                b_events=b_events,
                queued=(state.backlog - state.failed) if state else 0,
                delivered=state.delivered if state else 0,
                lag_s=round(state.lag_seconds, 3) if state else 0.0,
                cpu_a=cpu_seconds(a.pid),
                loop_a=main_thread_cpu_seconds(a.pid),
                cpu_b=cpu_seconds(b.pid),
                cpu_propagate=last_sender_cpu,
                sending=sending,
                tick=tick,
            )
            samples.append(taken)
            if args.verbose:
                print(f"  {mode} {taken}", file=sys.stderr)
            return taken

        try:
            deadline = started + args.duration + 60  # propagate's start-up and its last settles
            tick = started
            interval = args.sample_interval
            checked: dict[str, Any] = {}
            while sender.poll() is None:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: propagate did not end in time")
                taken = sample(sending=True, tick=interval == args.sample_interval)
                if args.routes_check and relay and not checked and taken.t >= args.duration / 2:
                    checked = routes_check(a_db, taken, args.client_cpu, env)
                if taken.t >= args.duration:
                    # sending ends within propagate's start-up after this: time it closely
                    interval = min(DRAIN_SAMPLE_SECONDS, args.sample_interval)
                tick += interval
                time.sleep(max(tick - time.monotonic(), 0.0))
        finally:
            if sender.poll() is None:
                sender.send_signal(signal.SIGINT)
                try:
                    sender.wait(10)
                except subprocess.TimeoutExpired:
                    sender.kill()
                    sender.wait()
        exited = time.monotonic()
        # the backlog drains: A's outbox empty and B holding what A holds, bounded
        drained = False
        while time.monotonic() - exited < args.drain_timeout:
            s = sample(sending=False)
            if s.queued == 0 and s.b_events == s.a_events:
                drained = True
                break
            time.sleep(DRAIN_SAMPLE_SECONDS)
        first_index, end = window_of(samples)
        result = {"mode": mode, **summarize(rate, samples, end, first_index)}
        log.seek(0)
        result.update(propagate_summary(log.read()))
        a_ids, b_ids = event_ids(a_db), event_ids(b_db)
        final = samples[-1]
        # drained: the first sample with every event stored at A, none queued, B as A
        drained_at = next(
            (
                s.t
                for s in samples[end + 1 :]
                if s.a_events == final.a_events and s.queued == 0 and s.b_events == s.a_events
            ),
            None,
        )
        if not drained:
            drained_at = None
        # the end of sending, estimated: the window's last sample, plus the time the events
        # A stored after it took at the window's rate
        last = samples[end]
        sent_end = last.t + (
            (final.a_events - last.a_events) / result["achieved_a_per_s"]
            if result["achieved_a_per_s"]
            else 0.0
        )
        result.update(
            {
                "duration_s": args.duration,
                "propagate_exit": sender.returncode,
                "sending_end_s": round(sent_end, 2),
                "drain_s": None if drained_at is None else round(max(drained_at - sent_end, 0), 2),
                "drain_timeout_s": args.drain_timeout,
                "a_events": len(a_ids),
                "b_events": len(b_ids),
                "a_distinct_ids": len(set(a_ids)),
                "b_distinct_ids": len(set(b_ids)),
                "missing_at_b": len(set(a_ids) - set(b_ids)),
                "extra_at_b": len(set(b_ids) - set(a_ids)),
                "outbox_queued_end": final.queued,
                "delivered_counter": final.delivered,
            }
        )
        result["exact"] = (
            drained_at is not None
            and len(a_ids) == len(b_ids) == len(set(b_ids))
            and set(a_ids) == set(b_ids)
            and result.get("propagate_delivered") == len(a_ids)
        )
        result["routes_check"] = checked or None
        result["samples"] = [s._asdict() for s in samples]
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    direct = {r["rate"]: r for r in results if r["mode"] == "direct"}
    lines = [
        f"machine: {json.dumps(machine())}",
        f"{args.duration:g} s per run; A on CPU {args.server_cpu}; B and propagate on "
        f"CPU {args.client_cpu}; samples every {args.sample_interval:g} s",
        "",
        "| R (events/s) | direct: at B | relay: at A | relay: at B | B relay/direct | B/R "
        "| B/A | lag p50 s | lag p99 s | lag max s | lag at end s | backlog at end (max) "
        "| drain s | B holds exactly A's events |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["mode"] != "relay":
            continue
        base = direct.get(r["rate"])
        drain = "not drained" if r["drain_s"] is None else f"{r['drain_s']:.1f}"
        exact = (
            f"{'yes' if r['exact'] else 'NO'}: A {r['a_events']}, B {r['b_events']} "
            f"({r['b_distinct_ids']} distinct), missing {r['missing_at_b']}, "
            f"extra {r['extra_at_b']}; propagate delivered {r.get('propagate_delivered', '?')}"
        )
        cells = [
            f"{r['rate']:g}",
            f"{base['achieved_b_per_s']:.1f}" if base else "-",
            f"{r['achieved_a_per_s']:.1f}",
            f"{r['achieved_b_per_s']:.1f}",
            f"{r['achieved_b_per_s'] / base['achieved_b_per_s']:.3f}" if base else "-",
            f"{r['b_vs_rate']:.3f}",
            f"{r['b_vs_a']:.3f}",
            f"{r['lag_p50_s']:.3f}",
            f"{r['lag_p99_s']:.3f}",
            f"{r['lag_max_s']:.3f}",
            f"{r['lag_end_s']:.3f}",
            f"{r['backlog_end']} ({r['backlog_max']})",
            drain,
            exact,
        ]
        lines.append(f"| {' | '.join(cells)} |")
    lines += [
        "",
        "| run | R | A: share of a core (loop) | A: CPU µs/event (loop) | B: share "
        "| B: µs/event | propagate: share | propagate: µs/event |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        relay = r["mode"] == "relay"
        lines.append(
            f"| {r['mode']} | {r['rate']:g} "
            + (
                f"| {r['cpu_share_a']:.2f} ({r['cpu_share_a_loop']:.2f}) "
                f"| {r['cpu_us_per_event_a']:.0f} ({r['cpu_us_per_event_a_loop']:.0f}) "
                if relay
                else "| - | - "
            )
            + f"| {r['cpu_share_b']:.2f} | {r['cpu_us_per_event_b']:.0f} "
            f"| {r['cpu_share_propagate']:.2f} | {r['cpu_us_per_event_propagate']:.0f} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"json": str(args.json)},
                    "results": results,
                },
                indent=2,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="1000", help="comma-separated events/s, one run each")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending per rate")
    parser.add_argument("--sample-interval", type=float, default=1.0)
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_SECONDS)
    parser.add_argument("--server-cpu", type=int, default=0, help="serve A's core")
    parser.add_argument("--client-cpu", type=int, default=1, help="propagate's and serve B's core")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run propagate -> B directly at each rate, the baseline (default: yes)",
    )
    parser.add_argument(
        "--routes-check",
        action="store_true",
        help="once mid-way in each relay run, also read `eventctl routes --json` (its start-up "
        "on the client core disturbs B for a moment, so not by default)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.client_cpu})  # the sampling stays off A's core
    modes = ["relay", "direct"] if args.baseline else ["relay"]
    results = []
    for number, rate in enumerate(float(r) for r in args.rates.split(",")):
        # ABBA: relay first at one rate, the baseline first at the next
        for mode in modes if number % 2 == 0 else modes[::-1]:
            result = run(rate, mode, args)
            print(
                f"R={rate:g} {mode}: B {result['achieved_b_per_s']:.1f}/s, "
                f"A {result['achieved_a_per_s']:.1f}/s, "
                f"lag p99 {result['lag_p99_s']:.3f} s, max {result['lag_max_s']:.3f} s, "
                f"drain {result['drain_s']} s, exact {result['exact']}",
                file=sys.stderr,
            )
            results.append(result)
    report(results, args)


if __name__ == "__main__":
    main()
