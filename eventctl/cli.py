"""The `eventctl` command line: parse flags, load config, call the library, map errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from eventctl import __version__
from eventctl.config import (
    DEFAULT_CONSUMER_CONFIG,
    LOG_LEVELS,
    ConsumerConfig,
    load_config,
)
from eventctl.errors import EventctlError, ExitCode, Unavailable
from eventctl.store import Store, StoredEvent, describe_url, iso
from eventctl.timefmt import parse_since

app = typer.Typer(
    name="eventctl",
    help="Fire events at an HTTP endpoint, and catch, validate and store them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: ExitCode) -> typer.Exit:
    typer.echo(f"eventctl: error: {message}", err=True)
    return typer.Exit(code)


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into one line on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EventctlError as exc:
            raise _fail(str(exc), exc.exit_code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eventctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Fire events at an HTTP endpoint, and catch, validate and store them."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Consumer config file (default: {DEFAULT_CONSUMER_CONFIG}, if it exists)",
        dir_okay=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL, e.g. sqlite:///events.db"),
]


def consumer_config(config: Path | None, **overrides: Any) -> ConsumerConfig:
    return load_config(
        ConsumerConfig,
        config or DEFAULT_CONSUMER_CONFIG,
        required=config is not None,
        environ=os.environ,
        overrides=overrides,
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise Unavailable(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    sock.set_inheritable(True)
    return sock


@app.command()
@guarded
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: 8000)")] = None,
    database_url: DatabaseUrlOption = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body accepted (default: 1048576)")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help=f"Server log level: {', '.join(LOG_LEVELS)} (default: warning)"),
    ] = None,
) -> None:
    """Run the Event Consumer: accept events on POST /event and store them."""
    import uvicorn

    from eventctl.app import create_app

    cfg = consumer_config(
        config,
        host=host,
        port=port,
        database_url=database_url,
        max_body_bytes=max_body_bytes,
        log_level=log_level,
    )
    store = Store.open(cfg.database_url, create=True)
    try:
        sock = _listen(cfg.host, cfg.port)
        bound_port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(cfg, store),
                log_level=cfg.log_level,
                access_log=cfg.log_level in ("info", "debug"),
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
        )
        shown_host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        typer.echo(
            f"eventctl serve: listening on http://{shown_host}:{bound_port} "
            f"(database {describe_url(cfg.database_url)}); Ctrl-C stops",
            err=True,
        )
        # uvicorn restores the handlers it found and then re-raises the signal it caught;
        # with these no-op handlers in place, that re-raise ends in a normal exit 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
        server.run(sockets=[sock])
    finally:
        store.close()
    if not server.started:
        raise EventctlError("the server did not start (see the log above)")
    typer.echo("eventctl serve: stopped", err=True)


@app.command("list-events")
@guarded
def list_events(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many events.")] = 20,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only events of this event_type.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only events received since an ISO time or an age (10m, 2h, 1d)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Show stored events, newest first, straight from the database."""
    cfg = consumer_config(config, database_url=database_url)
    since_at = None
    if since is not None:
        try:
            since_at = parse_since(since, datetime.now(UTC))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    store = Store.open(cfg.database_url)
    try:
        events = store.events(limit=limit, event_type=event_type, since=since_at)
    finally:
        store.close()
    if as_json:
        json.dump([e.to_json() for e in events], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif not events:
        typer.echo(
            "No events yet." if since is None and event_type is None else "No events match.",
            err=True,
        )
    else:
        Console(highlight=False).print(_events_table(events))


def _shorten(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _events_table(events: list[StoredEvent]) -> Table:
    table = Table(title=f"{len(events)} events, newest first", title_justify="left")
    table.add_column("id", justify="right", style="cyan")
    table.add_column("received_at (UTC)", no_wrap=True)
    table.add_column("event_type", style="bold")
    table.add_column("event_payload", overflow="ellipsis", no_wrap=True)
    for event in events:
        table.add_row(
            str(event.id),
            iso(event.received_at)[:23] + "Z",
            event.event_type,
            _shorten(event.event_payload),
        )
    return table


def main() -> None:
    """Entry point of the `eventctl` console script and `python -m eventctl`."""
    app()
