"""Running the propagator in a process: its transport, signals, the spool's runs and the
live display.

The CLI calls these; they raise domain errors and write only to the streams they are given,
through a Display. What a run changes in the process (signal handlers, the collector's
frozen generation) has one owner, `_process_state`, which puts back what it found.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import os
import random
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import httpx

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]
try:
    import termios
    import tty
except ImportError:  # not on Windows
    termios = None  # type: ignore[assignment]
from rich.console import Console

from eventctl.auth import SIGNING_SECRET_ENV, Credentials
from eventctl.config import PropagatorConfig
from eventctl.errors import EventctlError, ExitCode, Unavailable
from eventctl.events import Event
from eventctl.propagator.display import TITLE, Display, JsonDisplay, LiveDisplay, LogDisplay
from eventctl.propagator.propagator import (
    Delivery,
    Observers,
    Pages,
    Plan,
    Propagator,
    Runtime,
    Spooling,
    Stats,
)
from eventctl.propagator.report import Report, Timeline, write_report
from eventctl.propagator.schedule import Schedule
from eventctl.propagator.spool import Entry, Run, Spool
from eventctl.propagator.templates import EventPool
from eventctl.retry import RetryPolicy
from eventctl.transport import http_transport

REFRESH_SECONDS = 0.25
T = TypeVar("T")


class Rescalable(Protocol):
    def rescale(self, factor: float) -> None: ...


RATE_STEP = 1.1


GRACE_SECONDS = 3.0


class ReportError(EventctlError):
    """The report of a run cannot be written."""

    exit_code = ExitCode.FAILURE


def propagator_credentials(
    cfg: PropagatorConfig, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """The token and signing keys `cfg` names, read from its files or from `environ`."""
    return Credentials.load(
        token_file=cfg.auth_token_file,
        secrets_variable=SIGNING_SECRET_ENV,
        secrets_file=cfg.signing_secret_file,
        environ=environ,
    )


class DisplayMode(enum.Enum):
    LIVE = "live"
    LOG = "log"
    JSON = "json"
    QUIET = "quiet"

    @classmethod
    def choose(cls, *, quiet: bool, json_log: bool, tty: bool) -> DisplayMode:
        if json_log:
            return cls.JSON
        if quiet:
            return cls.QUIET
        return cls.LIVE if tty else cls.LOG


def make_display(
    mode: DisplayMode,
    stats: Stats,
    *,
    title: str,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Display:
    """The display of `mode`: the live view, log lines and the summary on `stderr`, NDJSON
    on `stdout` (the process's streams when not given)."""
    stdout = sys.stdout if stdout is None else stdout
    console = Console(file=sys.stderr if stderr is None else stderr, highlight=False)
    if mode is DisplayMode.LIVE:
        return LiveDisplay(stats, console, stats.started_at, title=title)
    if mode is DisplayMode.LOG:
        return LogDisplay(stats, console, title=title)
    if mode is DisplayMode.JSON:
        return JsonDisplay(stats, console, stdout, title=title)
    return Display(stats, console, title=title)


def delivery(
    cfg: PropagatorConfig, transport: httpx.AsyncBaseTransport, credentials: Credentials
) -> Delivery:
    """How `cfg` says events are sent: its endpoint, timeout, retry policy and cap."""
    policy = RetryPolicy(
        cfg.retry_attempts,
        cfg.retry_base_seconds,
        cfg.retry_max_seconds,
        cfg.retry_max_elapsed_seconds,
    )
    return Delivery(
        cfg.api_endpoint,
        transport,
        credentials,
        timeout=cfg.request_timeout_seconds,
        policy=policy,
        max_in_flight=cfg.max_in_flight,
    )


async def _propagate(propagator: Propagator, display: Display) -> Stats:
    """Run `propagator` on this loop with `display`, until done or interrupted: Ctrl-C (or
    SIGTERM) stops it with a grace period for what is in flight, a second one at once.
    When its stats say so (`keys`), `+` and `-` typed on the terminal raise and lower the
    rate."""

    def interrupted() -> None:
        if propagator.stopping:
            propagator.abort()
            return
        propagator.stop()
        if propagator.stats.in_flight:
            display.print(
                f"stopping: {propagator.stats.in_flight} in flight get "
                f"{GRACE_SECONDS:g}s to settle (Ctrl-C again stops now; they stay pending)"
            )

    clock = propagator.runtime.clock
    async with propagator.delivery.transport:
        with _process_state(interrupted), _rate_keys(propagator, propagator.stats.keys), display:
            refresher = asyncio.ensure_future(_refresh(display, clock))
            try:
                stats = await propagator.run(grace=GRACE_SECONDS)
            finally:
                refresher.cancel()
            display.refresh(clock())
    return stats


def spool_hints(stats: Stats, cfg: PropagatorConfig, run: Run | None) -> list[str]:
    """After the summary: where undelivered events are and the command that sends them."""
    hints = []
    where = f"the spool ({cfg.spool_path})"
    if stats.pending_at_exit:
        hints.append(
            f"{stats.pending_at_exit} pending events stay in {where} and are sent first by the "
            "next `eventctl propagate` (or now, alone: `eventctl propagate --drain`)"
        )
    if stats.failed:
        hints.append(
            f"{stats.failed} failed events stay in {where}: `eventctl spool list` shows them, "
            "`eventctl spool retry` resends them (each was retried for up to "
            f"{cfg.retry_max_elapsed_seconds:g}s or {cfg.retry_attempts} attempts; "
            "--retry-max-elapsed-seconds waits longer)"
        )
    if run is not None and run.target is not None and run.generated < run.target:
        hints.append(
            f"run {run.run_id}: {run.generated} of {run.target} events generated; "
            f"`eventctl propagate --count {run.target}` resumes it"
        )
    return hints


def propagator_transport(cfg: PropagatorConfig) -> httpx.AsyncBaseTransport:
    """The transport to `cfg`'s endpoint, as many connections as events in flight."""
    return http_transport(*cfg.api_endpoint, max_connections=cfg.max_in_flight)


async def _refresh(display: Display, clock: Callable[[], float]) -> None:
    stats = display.stats
    while True:
        now = clock()
        display.refresh(now)
        if stats.timeline is not None:
            target = stats.target_rate(now)
            stats.timeline.sample(now - stats.origin, target or 0.0, stats.in_flight)
        await asyncio.sleep(REFRESH_SECONDS)


@contextlib.contextmanager
def _rate_keys(propagator: Rescalable, enabled: bool) -> Iterator[None]:
    """While it lasts, `+` (or `=`) typed on stdin multiplies the rate by RATE_STEP and `-`
    (or `_`) divides it, one key at a time (the terminal in cbreak mode, put back after)."""
    saved = None
    if enabled and termios is not None:
        fd = sys.stdin.fileno()
        with contextlib.suppress(termios.error, OSError):
            # a job in the background (`propagate ... &`) is stopped by SIGTTOU if it
            # changes the terminal: the keys are for the job in the foreground only
            if os.tcgetpgrp(fd) == os.getpgrp():
                saved = termios.tcgetattr(fd)
    if saved is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def typed() -> None:
        data = os.read(fd, 64)
        if not data:  # the terminal is gone
            loop.remove_reader(fd)
        for key in data.decode(errors="replace"):
            if key in "+=":
                propagator.rescale(RATE_STEP)
            elif key in "-_":
                propagator.rescale(1 / RATE_STEP)

    tty.setcbreak(fd)
    loop.add_reader(fd, typed)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _process_state(on_interrupt: Callable[[], None]) -> Iterator[None]:
    """Everything a run changes in the process, and puts back when it ends: SIGINT and
    SIGTERM call `on_interrupt` on the running loop, and start-up's heap is frozen."""
    with _on_signals(on_interrupt), _frozen_heap():
        yield


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Start-up's objects live for the whole run: keep the cyclic collector off them while
    it lasts, and give them back to it after. A heap someone else froze stays theirs: it is
    left as it is (gc.unfreeze() would thaw their objects too)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _on_signals(handler: Callable[[], None]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM on the running loop; then the handlers found before
    (the loop's remove_signal_handler alone would leave the defaults)."""
    loop = asyncio.get_running_loop()
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in found:
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig, previous in found.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, previous)


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop where it is installed (uvicorn's loop too)."""
    if uvloop is None:
        return asyncio.run(coroutine)
    result: T = uvloop.run(coroutine)
    return result


def _resend(spool: Spool, pending: list[Entry]) -> list[tuple[str, Event]]:
    """What a run sends first: these pending entries, with their ids, each to settle in its
    own run."""
    spool.track(pending)
    return [(entry.event_id, entry.event) for entry in pending]


def _begin_run(
    spool: Spool, cfg: PropagatorConfig, count: int | None, *, new: bool
) -> tuple[Run | None, int | None]:
    """The spool's run these events belong to (none when only resending, count=0), and the
    number of events still to generate in it."""
    if count == 0:
        return None, count
    events_file = str(Path(cfg.events_file).resolve())
    run, resumed = spool.begin_run(count, cfg.endpoints_text, events_file, new=new)
    if resumed and count is not None:
        count = max(count - run.generated, 0)
    return run, count


def write_run_report(  # noqa: PLR0913 - the run's stats, summary and settings; where
    path: Path,
    stats: Stats,
    summary: dict[str, Any],
    cfg: PropagatorConfig,
    *,
    started: datetime,
    workers: int,
    command: str,
) -> None:
    """Write the report of a run to `path` (.html or .json); `command` as typed."""
    assert stats.timeline is not None
    meta = {
        "command": command,
        "endpoint": cfg.endpoints_text,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_seconds": summary["elapsed_seconds"],
        "workers": workers,
        "max_in_flight": cfg.max_in_flight,
        "stages": summary.get("stages") or [],
    }
    totals = {key: value for key, value in summary.items() if key != "stages"}
    report = Report(
        meta=meta,
        summary=totals,
        latency=stats.latency,
        service=stats.service,
        timeline=stats.timeline,
    )
    try:
        write_report(path, report)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report: {exc.strerror or exc}") from None


def propagate_events(  # noqa: PLR0913 - one keyword per flag of propagate; title, environ, streams
    cfg: PropagatorConfig,
    events: EventPool,
    *,
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
    """Resend what the spool holds as pending, then run the propagator until Ctrl-C/SIGTERM,
    `count` or `duration` or the end of `schedule` (count=0: only resend); show it on
    `mode`, on `stdout` and `stderr` (the process's when not given), with `+`/`-` on the
    terminal changing the rate when `keys`; write `report` (.html or .json) at the end.
    Secrets named by `cfg` are read from `environ`. (workers.propagate_in_workers does the
    same with several sender processes.)

    Events are generated in a run (see spool.py): with `count`, the latest run when it is
    unfinished with the same count, endpoint and events file (unless `new_run`), which then
    generates only what it is missing."""
    credentials = propagator_credentials(cfg, environ)
    spool = Spool.open(Path(cfg.spool_path))
    try:
        run, count = _begin_run(spool, cfg, count, new=new_run)
        resend = _resend(spool, spool.entries("pending", kind="propagate"))
        stats = Stats(cfg.endpoints_text, cfg.interval_seconds, cfg.max_in_flight)
        stats.keys = keys
        if report is not None:
            stats.timeline = Timeline()
        display = make_display(mode, stats, title=title, stdout=stdout, stderr=stderr)
        started = datetime.now(UTC)
        propagator = Propagator(
            Plan(events, cfg.interval_seconds, count, duration, schedule=schedule),
            delivery(cfg, propagator_transport(cfg), credentials),
            spooling=Spooling(spool, cfg.spool_max_pending, resend),
            runtime=Runtime(rng=random.Random(seed)),
            observers=Observers(stats, display.record),
        )
        if run is not None and run.generated:
            display.print(
                f"resuming run {run.run_id} ({run.generated} of "
                f"{run.target} generated, {len(resend)} pending); --new-run starts afresh"
            )
        stats = _run_async(_propagate(propagator, display))
        summary = stats.summary(propagator.runtime.clock())
        summary["workers"] = 1
        after = None if run is None else spool.run(run.run_id)
        if after is not None:
            summary.update(run=after.run_id, run_target=after.target, run_generated=after.generated)
        display.summary(summary)
        if report is not None:
            write_run_report(
                report, stats, summary, cfg, started=started, workers=1, command=command
            )
            display.print(f"report: {report}")
        for line in spool_hints(stats, cfg, after):
            display.print(line)
        return stats
    finally:
        spool.close()


@dataclass(frozen=True)
class ReplayJob:
    """What `eventctl replay` asks the propagator to do: send the events of a source (named
    `name`) to `cfg.api_endpoint`, paced as `pacing` says. `key` is the same for the same
    source, selection (its flags as typed: `--since 1h` is the same flag an hour later),
    destination and ids, so a run killed before its end is found again. `window` is the
    selection's time window as resolved now, kept with the run. `plan(upto, after, window)`
    gives (events selected, the snapshot's last position, the pages after position `after`)
    of the snapshot ending at `upto` (None: the source as it is), in `window` (None: now's)."""

    name: str
    key: str
    pacing: str
    interval: float
    window: str
    plan: Callable[[int | None, int | None, str | None], tuple[int, int, Pages]]


def check_reachable(urls: Sequence[str], timeout: float) -> None:
    """Raise Unavailable unless a TCP connection to the host and port of one of `urls`
    opens (the others are found down by their first attempt)."""
    problems = []
    for url in urls:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.host, port), timeout=timeout).close()
        except OSError as exc:
            problems.append(f"{url}: {exc.strerror or str(exc) or type(exc).__name__}")
        else:
            return
    raise Unavailable(f"cannot connect to {'; '.join(problems)}")


def replay_events(  # noqa: PLR0913 - the job, display mode, --new-run, title, environ, streams
    cfg: PropagatorConfig,
    job: ReplayJob,
    *,
    mode: DisplayMode,
    new_run: bool = False,
    title: str = "eventctl replay",
    environ: Mapping[str, str] = os.environ,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Stats:
    """Send `job`'s events to `cfg.api_endpoint` by the propagator's delivery: spooled
    first, retried, signed, shown on `mode`. The replay is a run of the spool (kind
    replay): the latest unfinished one with the job's key is resumed (unless `new_run`),
    its pending events resent first and its source read on from the cursor."""
    credentials = propagator_credentials(cfg, environ)
    spool = Spool.open(Path(cfg.spool_path))
    try:
        latest = None if new_run else spool.latest_run("replay", job.key)
        resumed = latest is not None and latest.unfinished
        # the selection is checked (in the window the run began with) before the URL is tried,
        # and both before anything is spooled
        if latest is not None and resumed:
            total, _, pages = job.plan(latest.upto, latest.cursor, latest.window)
            check_reachable(cfg.api_endpoint, cfg.request_timeout_seconds)
            spool.resume(latest)
            run = latest
        else:
            total, upto, pages = job.plan(None, None, None)
            check_reachable(cfg.api_endpoint, cfg.request_timeout_seconds)
            run = spool.new_run(
                total,
                cfg.endpoints_text,
                job.name,
                kind="replay",
                run_key=job.key,
                upto=upto,
                window=job.window,
            )
        resend = _resend(spool, spool.entries("pending", run_id=run.run_id))
        stats = Stats(cfg.endpoints_text, job.interval, cfg.max_in_flight, pacing=job.pacing)
        display = make_display(mode, stats, title=title, stdout=stdout, stderr=stderr)
        propagator = Propagator(
            Plan(replay=pages),
            delivery(cfg, propagator_transport(cfg), credentials),
            spooling=Spooling(spool, cfg.spool_max_pending, resend),
            observers=Observers(stats, display.record),
        )
        if resumed:
            display.print(
                f"resuming replay run {run.run_id} ({run.generated} of {run.target} sent, "
                f"{len(resend)} pending); --new-run starts afresh"
            )
        else:
            display.print(
                f"replaying {total} events from {job.name} to {cfg.endpoints_text} "
                f"(run {run.run_id})"
            )
        stats = _run_async(_propagate(propagator, display))
        summary = stats.summary(propagator.runtime.clock())
        after = spool.run(run.run_id)
        assert after is not None
        summary.update(
            run=after.run_id,
            run_target=after.target,
            run_generated=after.generated,
            pacing=job.pacing,
        )
        display.summary(summary)
        for line in replay_hints(stats, cfg, after):
            display.print(line)
        return stats
    finally:
        spool.close()


def replay_hints(stats: Stats, cfg: PropagatorConfig, run: Run) -> list[str]:
    """After a replay's summary: how to finish it, and where its failures are."""
    hints = []
    if run.unfinished:
        hints.append(
            f"run {run.run_id}: {run.generated} of {run.target} sent, {run.pending} pending; "
            "the same `eventctl replay` command resumes it"
        )
    if stats.failed:
        hints.append(
            f"{stats.failed} failed events are in the spool ({cfg.spool_path}, "
            f"`eventctl spool list`); run the replay again to resend the run's events "
            "(a consumer that honours ids stores each once)"
        )
    return hints
