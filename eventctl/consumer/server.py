"""Serving the consumer: the listening socket, uvicorn with eventctl's limits, workers.

The CLI calls these; they raise domain errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn
from rich.console import Console
from uvicorn.supervisors.multiprocess import Multiprocess

from eventctl.auth import AUTH_TOKEN_ENV, WEBHOOK_SECRETS_ENV, Credentials
from eventctl.config import ConsumerConfig
from eventctl.consumer.app import ConsumerApp, create_app
from eventctl.consumer.httpserver import Limits, ServerConfig, fit_connections
from eventctl.consumer.logs import log_config
from eventctl.errors import EventctlError, Unavailable
from eventctl.store import Store, describe_url


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


def base_url(host: str, port: int) -> str:
    """http://host:port of a consumer listening on `host`: a wildcard address becomes
    loopback, an IPv6 address goes in brackets (with a zone's % escaped, RFC 6874)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = "[" + host.replace("%", "%25") + "]"
    return f"http://{host}:{port}"


def local_url(sock: socket.socket, path: str = "") -> str:
    """The URL of a listening socket (see base_url), with `path`."""
    host, port = sock.getsockname()[:2]
    return base_url(host, port) + path


WORKER_CONFIG_ENV = "EVENTCTL_WORKER_CONFIG"
WORKER_PARENT_ENV = "EVENTCTL_WORKER_PARENT"
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`values` in os.environ for the block (None: the variable is unset), and what was
    there before afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _ignoring_signals(*signals: signal.Signals) -> Iterator[None]:
    """No-op handlers for `signals` for the block; the handlers found are put back after."""
    saved = {sig: signal.signal(sig, lambda signum, frame: None) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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


CREDENTIAL_VARIABLES = (AUTH_TOKEN_ENV, WEBHOOK_SECRETS_ENV)
"""The environment variables consumer_credentials reads."""


def consumer_credentials(cfg: ConsumerConfig, environ: Mapping[str, str]) -> Credentials:
    """The credentials `cfg` requires, read from its files and from `environ`."""
    return Credentials.load(
        token_file=cfg.auth_token_file,
        secrets_variable=WEBHOOK_SECRETS_ENV,
        secrets_file=cfg.webhook_secrets_file,
        environ=environ,
    )


def consumer_server(
    cfg: ConsumerConfig, store: Store, *, environ: Mapping[str, str] = os.environ
) -> uvicorn.Server:
    """uvicorn serving the app of `cfg` and `store`, with credentials from `environ`."""
    return _server(cfg, store, consumer_credentials(cfg, environ))


def _server(cfg: ConsumerConfig, store: Store, credentials: Credentials) -> uvicorn.Server:
    app = create_app(cfg, store, credentials=credentials)
    return uvicorn.Server(_uvicorn_config(cfg, app))


PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int) -> None:
    """Ask Linux to send this worker SIGTERM (a graceful stop) when the `serve` process that
    started it dies, even by kill -9: uvicorn's workers outlive a killed parent otherwise,
    still serving and forwarding from the database."""
    if not sys.platform.startswith("linux") or parent == os.getpid():  # not a worker process
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the request was made


def worker_app() -> ConsumerApp:
    """The app of one `serve --workers N` process, built from what the parent put in this
    process's environment (see worker_environment)."""
    if WORKER_PARENT_ENV in os.environ:
        _end_with_parent(int(os.environ[WORKER_PARENT_ENV]))
    cfg = ConsumerConfig.from_json(os.environ[WORKER_CONFIG_ENV])
    multiprocess = PROMETHEUS_ENV in os.environ
    return create_app(
        cfg,
        Store.open(cfg.database_url),
        credentials=consumer_credentials(cfg, os.environ),
        multiprocess_metrics=multiprocess,
    )


def worker_environment(
    cfg: ConsumerConfig, metrics_dir: str, environ: Mapping[str, str]
) -> dict[str, str | None]:
    """What the workers' environment must hold (None: must not hold): they are new
    processes, so the config, the metrics directory and the credential variables of
    `environ` reach them there."""
    values: dict[str, str | None] = {
        WORKER_CONFIG_ENV: cfg.to_json(),
        WORKER_PARENT_ENV: str(os.getpid()),
        PROMETHEUS_ENV: metrics_dir,
    }
    values.update({name: environ.get(name) for name in CREDENTIAL_VARIABLES})
    return values


def _serve_workers(cfg: ConsumerConfig, sock: socket.socket, environ: Mapping[str, str]) -> None:
    """N uvicorn worker processes sharing `sock`, supervised by uvicorn until a signal."""
    with (
        tempfile.TemporaryDirectory(prefix="eventctl-metrics-") as metrics_dir,
        _environment(worker_environment(cfg, metrics_dir, environ)),
    ):
        config = _uvicorn_config(
            cfg, "eventctl.consumer.server:worker_app", factory=True, workers=cfg.workers
        )
        Multiprocess(config, sockets=[sock]).run()


def serve(
    cfg: ConsumerConfig,
    sock: socket.socket,
    console: Console,
    *,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Run the consumer on `sock` until SIGINT/SIGTERM; return after a graceful shutdown.
    Credentials come from the config's files and from `environ`."""
    try:
        # checked before any worker starts: a bad secret is one error, not one per worker
        credentials = consumer_credentials(cfg, environ)
        for route in cfg.forward:
            Credentials.from_files(
                token_file=route.auth_token_file, secrets_file=route.signing_secret_file
            )
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
    for route in cfg.forward:
        only = f" ({', '.join(route.match)} only)" if route.match else ""
        named = f" as {route.name}" if route.name != route.url else ""
        ordered = ", one at a time in order" if route.ordered else ""
        console.print(
            f"eventctl serve: forwarding to {route.url}{named}{only}{ordered}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    try:
        if cfg.workers > 1:
            store.close()
            _serve_workers(cfg, sock, environ)
        else:
            server = _server(cfg, store, credentials)
            # uvicorn restores the handlers it found and then re-raises the signal it
            # caught; with these no-op handlers in place, that re-raise ends in a return.
            with _ignoring_signals(signal.SIGINT, signal.SIGTERM):
                server.run(sockets=[sock])
            if not server.started:
                raise EventctlError("the server did not start (see the log above)")
    finally:
        store.close()
        sock.close()
    console.print("eventctl serve: stopped", highlight=False)
