"""Running the services in a process: sockets, uvicorn, signals and the propagator's display.

The CLI calls these; they raise domain errors and print only through a Display.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]
from httpx_aiohttp import AiohttpTransport
from rich.console import Console
from uvicorn.supervisors.multiprocess import Multiprocess

from eventctl.app import ConsumerApp, create_app
from eventctl.auth import SIGNING_SECRET_ENV, WEBHOOK_SECRETS_ENV, Credentials
from eventctl.config import ConsumerConfig, PropagatorConfig
from eventctl.display import Display, JsonDisplay, LiveDisplay, LogDisplay
from eventctl.errors import EventctlError, Unavailable
from eventctl.httpserver import Limits, ServerConfig, fit_connections
from eventctl.logs import log_config
from eventctl.propagator import Propagator, RetryPolicy, Stats
from eventctl.spool import Run, Spool
from eventctl.store import Store, describe_url
from eventctl.templates import EventSource
from eventctl.transport import LeanTransport

REFRESH_SECONDS = 0.25
GRACE_SECONDS = 3.0
STARTUP_TIMEOUT_SECONDS = 15.0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or Unavailable with the reason (e.g. address already in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise Unavailable(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    return sock


def local_url(sock: socket.socket, path: str = "") -> str:
    """http://host:port of a listening socket, with a wildcard host replaced by loopback."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


WORKER_CONFIG_ENV = "EVENTCTL_WORKER_CONFIG"


def limits(cfg: ConsumerConfig) -> Limits:
    """The connection limits of `cfg`, with max_connections fitted to the open-file limit."""
    return Limits(
        max_header_bytes=cfg.max_header_bytes,
        max_headers=cfg.max_headers,
        header_timeout=cfg.header_timeout_seconds,
        body_timeout=cfg.body_timeout_seconds,
        max_connections=fit_connections(cfg.max_connections),
    )


def _uvicorn_config(cfg: ConsumerConfig, app: Any, **kwargs: Any) -> uvicorn.Config:
    return ServerConfig(
        app,
        limits=limits(cfg),
        timeout_keep_alive=cfg.keep_alive_seconds,
        log_config=log_config(cfg.log_level),
        log_level=cfg.log_level,
        access_log=cfg.log_level in ("info", "debug"),
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,  # no "server: uvicorn": what runs here is nobody else's business
        **kwargs,
    )


def consumer_credentials(cfg: ConsumerConfig) -> Credentials:
    return Credentials.load(
        token_file=cfg.auth_token_file,
        secrets_variable=WEBHOOK_SECRETS_ENV,
        secrets_file=cfg.webhook_secrets_file,
        environ=os.environ,
    )


def propagator_credentials(cfg: PropagatorConfig) -> Credentials:
    return Credentials.load(
        token_file=cfg.auth_token_file,
        secrets_variable=SIGNING_SECRET_ENV,
        secrets_file=cfg.signing_secret_file,
        environ=os.environ,
    )


def consumer_server(cfg: ConsumerConfig, store: Store) -> uvicorn.Server:
    app = create_app(cfg, store, credentials=consumer_credentials(cfg))
    return uvicorn.Server(_uvicorn_config(cfg, app))


def worker_app() -> ConsumerApp:
    """The app of one `serve --workers N` process, built from the parent's config."""
    cfg = ConsumerConfig(**json.loads(os.environ[WORKER_CONFIG_ENV]))
    multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    return create_app(
        cfg,
        Store.open(cfg.database_url),
        credentials=consumer_credentials(cfg),
        multiprocess_metrics=multiprocess,
    )


def _serve_workers(cfg: ConsumerConfig, sock: socket.socket) -> None:
    """N uvicorn worker processes sharing `sock`, supervised by uvicorn until a signal."""
    with tempfile.TemporaryDirectory(prefix="eventctl-metrics-") as metrics_dir:
        os.environ[WORKER_CONFIG_ENV] = json.dumps(asdict(cfg))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        config = _uvicorn_config(
            cfg, "eventctl.runner:worker_app", factory=True, workers=cfg.workers
        )
        Multiprocess(config, sockets=[sock]).run()


def serve(cfg: ConsumerConfig, sock: socket.socket, console: Console) -> None:
    """Run the consumer on `sock` until SIGINT/SIGTERM; return after a graceful shutdown."""
    try:
        store = Store.open(cfg.database_url, create=True)
    except EventctlError:
        sock.close()
        raise
    workers = f", {cfg.workers} workers" if cfg.workers > 1 else ""
    console.print(
        f"eventctl serve: listening on {local_url(sock)} "
        f"(database {describe_url(cfg.database_url)}{workers}); Ctrl-C stops",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        if cfg.workers > 1:
            store.close()
            _serve_workers(cfg, sock)
        else:
            server = consumer_server(cfg, store)
            # uvicorn restores the handlers it found and then re-raises the signal it
            # caught; with these no-op handlers in place, that re-raise ends in a return.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: None)
            server.run(sockets=[sock])
            if not server.started:
                raise EventctlError("the server did not start (see the log above)")
    finally:
        store.close()
        sock.close()
    console.print("eventctl serve: stopped", highlight=False)


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
    events: EventSource,
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
        )
        display = make_display(mode, propagator.stats, clock(), title)
        propagator.on_record = display.record
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
                # start-up's objects live for the whole run: keep the collector off them
                gc.freeze()
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
    events: EventSource,
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


def run_up(
    ccfg: ConsumerConfig,
    pcfg: PropagatorConfig,
    events: EventSource,
    sock: socket.socket,
    *,
    count: int | None,
    duration: float | None,
    seed: int | None,
    mode: DisplayMode,
    new_run: bool = False,
) -> Stats:
    """The consumer on `sock` in a background thread, the propagator in front, both stopped
    together; the port is free again when this returns."""
    console = Console(stderr=True, highlight=False)
    store = Store.open(ccfg.database_url, create=True)
    server = consumer_server(ccfg, store)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="eventctl-consumer", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise EventctlError("the consumer did not start (see the log above)")
            time.sleep(0.01)
        endpoint = local_url(sock, "/event")
        console.print(
            f"eventctl up: consumer on {local_url(sock)} "
            f"(database {describe_url(ccfg.database_url)}), "
            f"sending every {pcfg.interval_seconds:g}s; Ctrl-C stops",
            markup=False,
            soft_wrap=True,
        )
        stats = propagate_events(
            replace(pcfg, api_endpoint=endpoint),
            events,
            count=count,
            duration=duration,
            seed=seed,
            mode=mode,
            new_run=new_run,
        )
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
        stored = store.count()
        store.close()
    console.print(f"eventctl up: {stored} events in the database", highlight=False)
    return stats
