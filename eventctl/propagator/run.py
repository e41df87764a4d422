"""Running the propagator in a process: its transport, signals, the spool's runs and the
live display.

The CLI calls these; they raise domain errors and print only through a Display.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]
from httpx_aiohttp import AiohttpTransport
from rich.console import Console

from eventctl.auth import SIGNING_SECRET_ENV, Credentials
from eventctl.config import PropagatorConfig
from eventctl.propagator.display import Display, JsonDisplay, LiveDisplay, LogDisplay
from eventctl.propagator.propagator import Propagator, Stats
from eventctl.propagator.spool import Run, Spool
from eventctl.propagator.templates import EventPool
from eventctl.propagator.transport import LeanTransport
from eventctl.retry import RetryPolicy

REFRESH_SECONDS = 0.25


GRACE_SECONDS = 3.0


def propagator_credentials(cfg: PropagatorConfig) -> Credentials:
    return Credentials.load(
        token_file=cfg.auth_token_file,
        secrets_variable=SIGNING_SECRET_ENV,
        secrets_file=cfg.signing_secret_file,
        environ=os.environ,
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
    mode: DisplayMode, stats: Stats, now: float, title: str = "eventctl propagate"
) -> Display:
    console = Console(stderr=True, highlight=False)
    if mode is DisplayMode.LIVE:
        return LiveDisplay(stats, console, now, title=title)
    if mode is DisplayMode.LOG:
        return LogDisplay(stats, console, title=title)
    if mode is DisplayMode.JSON:
        return JsonDisplay(stats, console, sys.stdout, title=title)
    return Display(stats, console, title=title)


async def _propagate(
    cfg: PropagatorConfig,
    events: EventPool,
    *,
    count: int | None,
    duration: float | None,
    seed: int | None,
    mode: DisplayMode,
    title: str = "eventctl propagate",
    spool: Spool,
    run: Run | None,
) -> Stats:
    clock = time.monotonic
    replay = [(entry.event_id, entry.event) for entry in spool.entries("pending")]
    policy = RetryPolicy(
        cfg.retry_attempts,
        cfg.retry_base_seconds,
        cfg.retry_max_seconds,
        cfg.retry_max_elapsed_seconds,
    )
    stats = Stats(cfg.api_endpoint, cfg.interval_seconds, cfg.max_in_flight)
    display = make_display(mode, stats, clock(), title)
    async with propagator_transport(cfg) as transport:
        propagator = Propagator(
            events,
            cfg.api_endpoint,
            transport,
            interval=cfg.interval_seconds,
            timeout=cfg.request_timeout_seconds,
            policy=policy,
            max_in_flight=cfg.max_in_flight,
            count=count,
            duration=duration,
            rng=random.Random(seed),
            clock=clock,
            spool=spool,
            spool_max_pending=cfg.spool_max_pending,
            replay=replay,
            credentials=propagator_credentials(cfg),
            stats=stats,
            on_record=display.record,
        )
        if run is not None and run.generated:
            display.print(
                f"resuming run {run.run_id} ({run.generated} of "
                f"{run.target} generated, {len(replay)} pending); --new-run starts afresh"
            )

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

        with _on_signals(interrupted), display:
            refresher = asyncio.ensure_future(_refresh(display, clock))
            try:
                with _frozen_heap():
                    stats = await propagator.run(grace=GRACE_SECONDS)
            finally:
                refresher.cancel()
            display.refresh(clock())
        summary = stats.summary(clock())
        after = None if run is None else spool.run(run.run_id)
        if after is not None:
            summary.update(run=after.run_id, run_target=after.target, run_generated=after.generated)
        display.summary(summary)
        for line in spool_hints(stats, cfg, after):
            display.print(line)
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
    """LeanTransport for http:// endpoints; httpx-aiohttp's pool for https://. Measured
    by bench/propagate.py: httpx's own pool costs several times the CPU per request."""
    if httpx.URL(cfg.api_endpoint).scheme == "http":
        return LeanTransport(max_connections=cfg.max_in_flight)
    limits = httpx.Limits(max_connections=cfg.max_in_flight, max_keepalive_connections=64)
    return AiohttpTransport(limits=limits)


async def _refresh(display: Display, clock: Callable[[], float]) -> None:
    while True:
        display.refresh(clock())
        await asyncio.sleep(REFRESH_SECONDS)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Start-up's objects live for the whole run: keep the cyclic collector off them while
    it lasts, and give them back to it after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _on_signals(handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _run_async(coroutine: Coroutine[Any, Any, Stats]) -> Stats:
    """asyncio.run, on uvloop where it is installed (uvicorn's loop too)."""
    if uvloop is None:
        return asyncio.run(coroutine)
    stats: Stats = uvloop.run(coroutine)
    return stats


def propagate_events(
    cfg: PropagatorConfig,
    events: EventPool,
    *,
    count: int | None,
    duration: float | None,
    seed: int | None,
    mode: DisplayMode,
    new_run: bool = False,
    title: str = "eventctl propagate",
) -> Stats:
    """Resend what the spool holds as pending, then run the propagator until Ctrl-C/SIGTERM,
    `count` or `duration` (count=0: only resend); show it on `mode`.

    Events are generated in a run (see spool.py): with `count`, the latest run when it is
    unfinished with the same count, endpoint and events file (unless `new_run`), which then
    generates only what it is missing."""
    spool = Spool.open(Path(cfg.spool_path))
    try:
        run = None
        if count != 0:
            events_file = str(Path(cfg.events_file).resolve())
            run, resumed = spool.begin_run(count, cfg.api_endpoint, events_file, new=new_run)
            if resumed and count is not None:
                count = max(count - run.generated, 0)
        return _run_async(
            _propagate(
                cfg,
                events,
                count=count,
                duration=duration,
                seed=seed,
                mode=mode,
                title=title,
                spool=spool,
                run=run,
            )
        )
    finally:
        spool.close()
