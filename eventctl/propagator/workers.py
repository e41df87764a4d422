"""`propagate --workers N`: N sender processes that share one run's rate, spool and report.

The parent begins (or resumes) the run in the spool and starts N workers, `python -m
eventctl.propagator.workers`, each in a session of its own (so that the terminal's Ctrl-C
reaches the parent alone). It hands each a spec (one JSON line on its stdin): the settings,
its share of the count and of the rate (every stage's rates divided by N), its share of the
pending events to resend, the run, and the parent's start on the monotonic clock, which the
processes share, so every timeline counts from the same moment. Each worker sends its
events in the same run of the same spool file (SQLite, WAL: the writes of N processes
interleave), so `eventctl verify` covers them all.

Over its stdout a worker sends JSON lines: `stats` snapshots twice a second (its counts and
histograms, which the parent adds up for the live display), `record`s when the parent
shows records (log lines, NDJSON), `error` if it cannot run, and last `final` with its
histograms and timeline, which the parent merges into one summary and one report. Over its
stdin the parent sends `scale F` (the `+` and `-` keys), `stop` (Ctrl-C: the grace period)
and `abort` (a second Ctrl-C); the end of stdin (the parent gone) is a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from eventctl.config import PropagatorConfig
from eventctl.endpoints import Endpoints
from eventctl.errors import EventctlError, ExitCode
from eventctl.histogram import Histogram
from eventctl.propagator.display import TITLE, Display
from eventctl.propagator.propagator import (
    Observers,
    Plan,
    Propagator,
    Record,
    Runtime,
    Spooling,
    Stats,
)
from eventctl.propagator.report import Timeline
from eventctl.propagator.run import (
    REFRESH_SECONDS,
    DisplayMode,
    _begin_run,
    _on_signals,
    _propagate,
    _rate_keys,
    _run_async,
    delivery,
    make_display,
    propagator_credentials,
    propagator_transport,
    spool_hints,
    write_run_report,
)
from eventctl.propagator.schedule import Schedule, Stage
from eventctl.propagator.spool import Run, Spool
from eventctl.propagator.templates import EventPool, load_events_file

SNAPSHOT_SECONDS = 0.5
READY_SECONDS = 60.0
KILL_SECONDS = 5.0
LINE_LIMIT = 2**24
COUNTS = (
    "generated",
    "attempts",
    "delivered",
    "failed",
    "retrying",
    "in_flight",
    "pending_at_exit",
    "replayed",
    "skipped_ticks",
    "dropped",
    "resent",
)
LATENESS_SAMPLES = 2_000


class WorkerError(EventctlError):
    """A sender process could not run, or ended without its results."""


def _shares(total: int, n: int) -> list[int]:
    return [total // n + (i < total % n) for i in range(n)]


def _stages_json(schedule: Schedule) -> list[list[float | None]]:
    """The stages as JSON: an endless stage's length as None."""
    return [
        [None if math.isinf(s.seconds) else s.seconds, s.start_rate, s.end_rate]
        for s in schedule.stages
    ]


def _stages_from_json(rows: list[list[float | None]]) -> Schedule:
    return Schedule(
        [Stage(math.inf if t is None else t, float(r0 or 0), float(r1 or 0)) for t, r0, r1 in rows]
    )


def _snapshot(stats: Stats, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": kind, **{name: getattr(stats, name) for name in COUNTS}}
    data.update(
        capped=stats.capped,
        spool_full=stats.spool_full,
        latency=stats.latency.to_json(),
        service=stats.service.to_json(),
        recent=[list(record) for record in stats.recent],
        endpoints=None if stats.endpoints is None else stats.endpoints.to_json(),
    )
    if kind == "final":
        data.update(
            stage_sent=stats.stage_sent,
            cpu_seconds=stats.cpu_seconds,
            started_at=stats.started_at,
            finished_at=stats.finished_at,
            lateness=list(stats.lateness)[-LATENESS_SAMPLES:],
            timeline=None if stats.timeline is None else stats.timeline.to_json(),
        )
    return data


class _PipeDisplay(Display):
    """A worker's display: JSON lines to the parent on `stream`, nothing on a terminal."""

    def __init__(self, stats: Stats, stream: TextIO, *, records: bool) -> None:
        super().__init__(stats, Console(file=io.StringIO()))
        self.stream = stream
        self.records = records
        self._sent_at = -math.inf
        self.broken = False
        self.on_broken: Callable[[], None] | None = None

    def _send(self, data: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            self.stream.write(json.dumps(data) + "\n")
            self.stream.flush()
        except OSError:  # the parent is gone: stop as on Ctrl-C (stdin's end says so too)
            self.broken = True
            if self.on_broken is not None:
                self.on_broken()

    def record(self, record: Record) -> None:
        if self.records:
            self._send({"kind": "record", "record": list(record)})

    def refresh(self, now: float) -> None:
        if now - self._sent_at >= SNAPSHOT_SECONDS:
            self._sent_at = now
            self._send(_snapshot(self.stats, "stats"))

    def print(self, line: str) -> None:
        self._send({"kind": "print", "line": line})

    def summary(self, summary: dict[str, Any]) -> None:
        return None


def _build(spec: dict[str, Any], spool: Spool, stream: TextIO) -> tuple[Propagator, _PipeDisplay]:
    """The propagator of a worker's spec, in its run of `spool`, reporting on `stream`."""
    config = spec["config"]
    cfg = PropagatorConfig(**{**config, "api_endpoint": tuple(config["api_endpoint"])})
    environ = os.environ
    credentials = propagator_credentials(cfg, environ)
    count = spec["count"]
    events = EventPool([]) if count == 0 else load_events_file(Path(cfg.events_file), environ)
    if spec["run_id"] is not None:
        run = spool.run(spec["run_id"])
        if run is None:
            raise WorkerError(f"{cfg.spool_path}: run {spec['run_id']} is not in the spool")
        spool.resume(run)
    wanted = set(spec["resend"])
    pending = [e for e in spool.entries("pending", kind="propagate") if e.event_id in wanted]
    spool.track(pending)
    spool.pending_count = len(pending)
    stats = Stats(cfg.endpoints_text, cfg.interval_seconds, cfg.max_in_flight)
    if spec["timeline"]:
        stats.timeline = Timeline()
    display = _PipeDisplay(stats, stream, records=spec["records"])
    schedule = _stages_from_json(spec["stages"]).share(spec["index"], spec["workers"])
    propagator = Propagator(
        Plan(events, cfg.interval_seconds, count, schedule=schedule),
        delivery(cfg, propagator_transport(cfg), credentials),
        spooling=Spooling(spool, cfg.spool_max_pending, [(e.event_id, e.event) for e in pending]),
        runtime=Runtime(rng=random.Random(spec["seed"])),
        observers=Observers(stats, display.record),
    )
    display.on_broken = propagator.stop
    return propagator, display


async def _worker(spec: dict[str, Any], stream: TextIO, buffered: bytes) -> None:
    """Build the propagator the spec says, say `ready`, start at the parent's `go`, and
    write the final report to spec["final_path"]."""
    spool = Spool.open(Path(spec["config"]["spool_path"]))
    try:
        propagator, display = _build(spec, spool, stream)
        stats = propagator.stats
        loop = asyncio.get_running_loop()
        go = asyncio.Event()

        def obey(line: bytes) -> None:
            word, _, value = line.decode().partition(" ")
            if word == "go":
                stats.origin = float(value)
            elif word == "scale":
                propagator.rescale(float(value))
            elif word == "stop":
                propagator.stop()
            elif word == "abort":
                propagator.abort()
            if word in ("go", "stop", "abort"):
                go.set()

        def control() -> None:
            nonlocal buffered
            data = os.read(0, 65536)
            if not data:  # the parent is gone: stop as on Ctrl-C
                loop.remove_reader(0)
                propagator.stop()
                go.set()
                return
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                obey(line)

        *early, buffered = buffered.split(b"\n")
        for line in early:
            obey(line)
        loop.add_reader(0, control)
        try:
            display._send({"kind": "ready"})
            await go.wait()
            stats = await _propagate(propagator, display)
        finally:
            loop.remove_reader(0)
        final = _snapshot(stats, "final")
        Path(spec["final_path"]).write_text(json.dumps(final), encoding="utf-8")
        display._send({"kind": "final"})
    finally:
        spool.close()


def worker_main() -> int:
    """A sender process: its spec on the first line of stdin, then control lines. What
    stops it (an EventctlError, or anything else) is said to the parent as an `error`."""
    data = bytearray()
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            return int(ExitCode.USAGE)
        data += chunk
    line, _, rest = bytes(data).partition(b"\n")
    spec = json.loads(line)
    stream = sys.stdout
    try:
        _run_async(_worker(spec, stream, rest))
    except BaseException as exc:  # every end, KeyboardInterrupt too, is told to the parent
        code = exc.exit_code if isinstance(exc, EventctlError) else ExitCode.FAILURE
        message = str(exc) if isinstance(exc, EventctlError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            stream.write(json.dumps({"kind": "error", "message": message, "exit": code}) + "\n")
            stream.flush()
        return int(code)
    return 0


class _Worker:
    """The parent's end of one sender process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.snapshot: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.ready = asyncio.Event()
        self.lost = False
        self.final_path: Path | None = None

    def tell(self, line: str) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                stdin.write(line.encode() + b"\n")


class _Fleet:
    """The workers as the parent drives them: the keys rescale all, Ctrl-C stops all."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.workers: list[_Worker] = []
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def rescale(self, factor: float) -> None:
        if self.stats.schedule is not None:
            self.stats.schedule.scale(factor, time.monotonic() - self.stats.schedule_start)
        for worker in self.workers:
            worker.tell(f"scale {factor!r}")

    def stop(self) -> None:
        self._stopping = True
        for worker in self.workers:
            worker.tell("stop")

    def abort(self) -> None:
        for worker in self.workers:
            worker.tell("abort")

    def add_up(self) -> None:
        """The stats shown: the sum of the workers' latest snapshots."""
        stats, found = self.stats, [w.final or w.snapshot for w in self.workers]
        found = [data for data in found if data]
        for name in COUNTS:
            setattr(stats, name, sum(int(data[name]) for data in found))
        stats.capped = any(data["capped"] for data in found)
        stats.spool_full = any(data["spool_full"] for data in found)
        latency, service = Histogram(), Histogram()
        for data in found:
            latency.merge(Histogram.from_json(data["latency"]))
            service.merge(Histogram.from_json(data["service"]))
        stats.latency, stats.service = latency, service
        recent = sorted(
            (Record(*row) for data in found for row in data["recent"]), key=lambda r: r.at
        )
        stats.recent.clear()
        stats.recent.extend(recent[-(stats.recent.maxlen or 0) :])
        parts = [data["endpoints"] for data in found if data.get("endpoints")]
        if stats.endpoints is not None and parts:
            stats.endpoints.add_up(parts)
        if recent:
            stats.last = recent[-1]


async def _read(worker: _Worker, fleet: _Fleet, display: Display) -> None:
    """Follow one worker's lines until its stdout ends; a worker that ends without its
    results (killed, or a line that is not the protocol's) stops the others."""
    stdout = worker.process.stdout
    assert stdout is not None
    try:
        while line := await stdout.readline():
            data = json.loads(line)
            kind = data["kind"]
            if kind == "stats":
                worker.snapshot = data
            elif kind == "record":
                display.record(Record(*data["record"]))
            elif kind == "print":
                display.print(data["line"])
            elif kind == "ready":
                worker.ready.set()
            elif kind == "final":
                assert worker.final_path is not None
                worker.final = json.loads(worker.final_path.read_text(encoding="utf-8"))
            elif kind == "error":
                worker.error = data
    except (ValueError, KeyError, OSError):
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
    finally:
        worker.ready.set()
        if worker.final is None:
            worker.lost = worker.error is None
            fleet.stop()


async def _start(fleet: _Fleet) -> None:
    """Once every worker is ready (or gone), the same start for all: `go T`."""
    try:
        await asyncio.wait_for(
            asyncio.gather(*(w.ready.wait() for w in fleet.workers)), timeout=READY_SECONDS
        )
    except TimeoutError:
        raise WorkerError(f"the sender processes did not start in {READY_SECONDS:g}s") from None
    start = time.monotonic()
    fleet.stats.started_at = fleet.stats.origin = fleet.stats.schedule_start = start
    for worker in fleet.workers:
        worker.tell(f"go {start!r}")


async def _run_fleet(
    specs: list[dict[str, Any]],
    fleet: _Fleet,
    display: Display,
    environ: Mapping[str, str],
) -> None:
    command = [sys.executable, "-m", "eventctl.propagator.workers"]
    for spec in specs:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=dict(environ),
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        worker = _Worker(process)
        worker.final_path = Path(spec["final_path"])
        worker.tell(json.dumps(spec))
        fleet.workers.append(worker)
    loop = asyncio.get_running_loop()

    def kill_all() -> None:
        for worker in fleet.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    def interrupted() -> None:
        if fleet.stopping:
            fleet.abort()
            loop.call_later(KILL_SECONDS, kill_all)  # a worker that does not stop is ended
            return
        fleet.stop()
        if fleet.stats.in_flight:
            display.print(
                f"stopping: {fleet.stats.in_flight} in flight get their grace period to settle "
                "(Ctrl-C again stops now; they stay pending)"
            )

    readers = [asyncio.ensure_future(_read(w, fleet, display)) for w in fleet.workers]
    waiting = asyncio.ensure_future(asyncio.gather(*(w.process.wait() for w in fleet.workers)))
    with _on_signals(interrupted), _rate_keys(fleet, fleet.stats.keys), display:
        try:
            await _start(fleet)
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=REFRESH_SECONDS)
                fleet.add_up()
                display.refresh(time.monotonic())
        finally:
            if not waiting.done():  # this process is going: take the workers along
                kill_all()
            await asyncio.gather(*readers, return_exceptions=True)
            await asyncio.gather(waiting, return_exceptions=True)
    fleet.add_up()


def propagate_in_workers(  # noqa: PLR0913 - propagate_events' keywords, and workers
    cfg: PropagatorConfig,
    events: EventPool,
    *,
    workers: int,
    count: int | None,
    duration: float | None,
    seed: int | None,
    mode: DisplayMode,
    new_run: bool = False,
    schedule: Schedule | None = None,
    report: Path | None = None,
    keys: bool = False,
    command: str = "eventctl propagate",
    title: str = TITLE,
    environ: Mapping[str, str] = os.environ,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Stats:
    """propagate_events with `workers` sender processes (see the module's docstring); the
    workers read `events` again from cfg.events_file."""
    del events  # checked by the caller; each worker loads the file itself
    spool = Spool.open(Path(cfg.spool_path))
    try:
        run, count = _begin_run(spool, cfg, count, new=new_run)
        pending = [e.event_id for e in spool.entries("pending", kind="propagate")]
    finally:
        spool.close()
    if schedule is None:
        schedule = Schedule.steady(1 / cfg.interval_seconds, duration)
    stats = Stats(cfg.endpoints_text, cfg.interval_seconds, cfg.max_in_flight * workers)
    stats.keys = keys
    stats.schedule = schedule
    stats.stage_sent = [0] * len(schedule.stages)
    stats.endpoints = Endpoints(cfg.api_endpoint, time.monotonic)
    display = make_display(
        mode, stats, title=f"{title} ({workers} workers)", stdout=stdout, stderr=stderr
    )
    started = datetime.now(UTC)
    stats.started_at = stats.origin = stats.schedule_start = time.monotonic()
    counts: list[int | None] = [None] * workers if count is None else [*_shares(count, workers)]
    config = dataclasses.asdict(cfg)
    config["spool_max_pending"] = max(cfg.spool_max_pending // workers, 1)
    fleet = _Fleet(stats)
    with tempfile.TemporaryDirectory(prefix="eventctl-workers-") as finals_dir:
        specs = [
            {
                "config": config,
                "count": counts[i],
                "stages": _stages_json(schedule),
                "index": i,
                "workers": workers,
                "seed": None if seed is None else seed + i,
                "run_id": None if run is None else run.run_id,
                "resend": pending[i::workers],
                "timeline": report is not None,
                "records": mode in (DisplayMode.LOG, DisplayMode.JSON),
                "final_path": str(Path(finals_dir) / f"worker-{i}.json"),
            }
            for i in range(workers)
        ]
        if run is not None and run.generated:
            display.print(
                f"resuming run {run.run_id} ({run.generated} of {run.target} generated, "
                f"{len(pending)} pending); --new-run starts afresh"
            )
        _run_async(_run_fleet(specs, fleet, display, environ))
    error = next((w.error for w in fleet.workers if w.error), None)
    if error is not None:
        raise WorkerError(f"a sender process failed: {error['message']}")
    finals = [w.final for w in fleet.workers if w.final is not None]
    lost = [w for w in fleet.workers if w.final is None]
    if finals:
        _merge_finals(stats, finals)
    after = None if run is None else _run_after(cfg, run.run_id)
    if lost and after is not None:  # what the lost ones left pending, the spool says
        stats.pending_at_exit = after.pending
    summary = stats.summary(stats.finished_at or time.monotonic())
    summary["workers"] = workers
    if after is not None:
        summary.update(run=after.run_id, run_target=after.target, run_generated=after.generated)
    display.summary(summary)
    if report is not None and finals:
        write_run_report(
            report, stats, summary, cfg, started=started, workers=workers, command=command
        )
        display.print(f"report: {report}" + (" (without the lost workers)" if lost else ""))
    for line in spool_hints(stats, cfg, after):
        display.print(line)
    if lost:
        codes = ", ".join(str(w.process.returncode) for w in lost)
        raise WorkerError(
            f"{len(lost)} of {workers} sender processes ended without their results "
            f"(exit code {codes}); the summary counts the others, the spool all: what they "
            "left pending is resent by the next run (or `eventctl propagate --drain`)"
        )
    return stats


def _run_after(cfg: PropagatorConfig, run_id: int) -> Run | None:
    spool = Spool.open(Path(cfg.spool_path))
    try:
        return spool.run(run_id)
    finally:
        spool.close()


def _merge_finals(stats: Stats, finals: list[dict[str, Any]]) -> None:
    """The run's stats from the workers' final reports."""
    stats.stage_sent = [sum(row) for row in zip(*(f["stage_sent"] for f in finals), strict=True)]
    stats.started_at = min(f["started_at"] for f in finals)
    stats.finished_at = max(f["finished_at"] for f in finals)
    stats.cpu_seconds = sum(f["cpu_seconds"] for f in finals)
    stats.lateness.clear()
    for final in finals:
        stats.lateness.extend(final["lateness"])
    timelines = [Timeline.from_json(f["timeline"]) for f in finals if f["timeline"]]
    if timelines:
        merged = timelines[0]
        for other in timelines[1:]:
            merged.merge(other)
        stats.timeline = merged


if __name__ == "__main__":
    sys.exit(worker_main())
