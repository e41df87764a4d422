"""The `eventctl` command line: parse flags, load config, call the library, map errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
import typer.core
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from eventctl import __version__
from eventctl.cli import output as out
from eventctl.config import (
    DEFAULT_CONSUMER_CONFIG,
    DEFAULT_EVENTS_FILE,
    DEFAULT_PROPAGATOR_CONFIG,
    LOG_LEVELS,
    ConsumerConfig,
    PropagatorConfig,
    load_config,
)
from eventctl.errors import (
    EventctlError,
    ExitCode,
    InvalidEvent,
    Refused,
    ServerFailed,
)
from eventctl.events import Event, new_event_id, parse_json, validate_event
from eventctl.propagator.templates import EventPool, load_events_file
from eventctl.textsafe import visible
from eventctl.timefmt import parse_duration, parse_since

if TYPE_CHECKING:
    from eventctl.store import Follower, StoredEvent

SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
OUTPUTS = ("table", "json", "ndjson", "csv")


def _metavar(option: typer.core.TyperOption) -> str:
    """A short capitalised name for an option's value, from its name and type."""
    name = option.name or ""
    kind = option.type_descriptor
    if kind.is_path or kind.is_file or name in ("config", "spool", "file"):
        return "PATH"
    if name.endswith("_file"):
        return "PATH"
    if name in ("endpoint", "database_url"):
        return "URL"
    if name == "port":
        return "PORT"
    if name in ("interval", "keep_alive") or "seconds" in name or "timeout" in name:
        return "SECONDS"
    annotation = kind.annotation
    return {int: "N", float: "NUMBER"}.get(annotation, "TEXT")


def _plain_help(command: Any) -> None:
    """Click's plain help for `command` and its sub-commands (Rich's panels squeeze the
    descriptions into a narrow column at 80 columns), with a metavar on every option that
    takes a value and none on flags (Typer would show `<bool>`, `<str>`, `<list[str]>`)."""
    if isinstance(command, typer.core.TyperCommand | typer.core.TyperGroup):
        command.rich_markup_mode = None
    for param in command.params:
        if isinstance(param, typer.core.TyperOption) and not param.is_flag:
            param.metavar = param.metavar or _metavar(param)
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


class EventctlGroup(typer.core.TyperGroup):
    """The root command: plain help that reads at 80 columns, and shell completion that
    takes both orders of the instruction (Typer's `source_bash`, Click's `bash_source`)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _plain_help(self)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Click cuts each command's line at the terminal width with "..."; wrap it instead
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _main_shell_completion(
        self, ctx_args: Any, prog_name: str, complete_var: str | None = None
    ) -> None:
        var = complete_var or f"_{prog_name}_COMPLETE".replace("-", "_").upper()
        shell, _, instruction = os.environ.get(var, "").partition("_")
        if shell in SHELLS and instruction in ("source", "complete"):
            os.environ[var] = f"{instruction}_{shell}"
        super()._main_shell_completion(ctx_args, prog_name, complete_var)


app = typer.Typer(
    name="eventctl",
    cls=EventctlGroup,
    help="Fire events at an HTTP endpoint, and catch, validate and store them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: ExitCode) -> typer.Exit:
    typer.echo(f"eventctl: error: {visible(message)}", err=True)
    return typer.Exit(code)


def _stdout_is_devnull() -> bool:
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


def _reader_went_away() -> typer.Exit:
    """Exit 0 quietly: whoever read stdout (`| head -1`) has all it wanted. What is still
    buffered goes to /dev/null, so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return typer.Exit(ExitCode.OK)


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into one line on stderr and the error's exit code, and a closed
    stdout into a quiet exit 0."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EventctlError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            raise _reader_went_away() from None
        except SystemExit as exc:
            # Rich's Console answers a closed stdout by pointing it at /dev/null and exiting 1
            if exc.code == 1 and _stdout_is_devnull():
                raise _reader_went_away() from None
            raise

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


def _complete_log_levels(incomplete: str) -> list[str]:
    return [level for level in LOG_LEVELS if level.startswith(incomplete)]


def _complete_outputs(incomplete: str) -> list[str]:
    return [output for output in OUTPUTS if output.startswith(incomplete)]


def _complete_event_types(ctx: typer.Context, incomplete: str) -> list[str]:
    """The event types in the propagator's events file (send-once's --config and
    --events-file, when given before); nothing when it cannot be read."""
    own = ctx.command.name == "send-once"
    try:
        cfg = propagator_config(
            ctx.params.get("config") if own else None,
            events_file=ctx.params.get("events_file") if own else None,
        )
        events = load_events_file(events_path(cfg.events_file)).as_written()
    except (EventctlError, OSError):
        return []
    types = dict.fromkeys(e.event_type for e in events)
    return [t for t in types if t.startswith(incomplete)]


def consumer_config(config: Path | None, **overrides: Any) -> ConsumerConfig:
    return load_config(
        ConsumerConfig,
        config or DEFAULT_CONSUMER_CONFIG,
        required=config is not None,
        environ=os.environ,
        overrides=overrides,
    )


@app.command("serve")
@guarded
def serve_command(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: 127.0.0.1)", metavar="HOST")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: 8000)")] = None,
    database_url: DatabaseUrlOption = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body accepted (default: 1048576)")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help=f"Server log level: {', '.join(LOG_LEVELS)} (default: warning)",
            metavar="LEVEL",
            autocompletion=_complete_log_levels,
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes sharing the port (default: 1)")
    ] = None,
    metrics: Annotated[
        bool | None,
        typer.Option(
            "--metrics/--no-metrics",
            help="Serve GET /metrics (default: only when listening on loopback)",
        ),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Most events in one POST /events (default: 1000)")
    ] = None,
    commit_max_events: Annotated[
        int | None, typer.Option(help="Most events in one commit (default: 1000)")
    ] = None,
    commit_max_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="Wait this long for more events before a commit (default: 0)", metavar="MS"
        ),
    ] = None,
    max_queued_events: Annotated[
        int | None,
        typer.Option(help="Events waiting for a commit before 503 (default: 10000)"),
    ] = None,
    fail_rate: Annotated[
        float | None,
        typer.Option(help="Fault drill: refuse this share (0-1) of ingest requests (default: 0)"),
    ] = None,
    fail_status: Annotated[
        int | None,
        typer.Option(help="Fault drill: status of the refusals (default: 503)", metavar="STATUS"),
    ] = None,
    latency: Annotated[
        str | None,
        typer.Option(help="Fault drill: delay every ingest request, e.g. 50ms", metavar="TIME"),
    ] = None,
    webhook_secrets_file: Annotated[
        str | None, typer.Option(help="File of whsec_ secrets; requests must be signed")
    ] = None,
    webhook_tolerance_seconds: Annotated[
        float | None, typer.Option(help="Accepted webhook-timestamp skew (default: 300)")
    ] = None,
    auth_token_file: Annotated[
        str | None, typer.Option(help="File holding the bearer token requests must carry")
    ] = None,
    max_header_bytes: Annotated[
        int | None, typer.Option(help="Largest request line plus headers (default: 16384)")
    ] = None,
    max_headers: Annotated[
        int | None, typer.Option(help="Most header fields in one request (default: 100)")
    ] = None,
    header_timeout: Annotated[
        float | None, typer.Option(help="Seconds to send a complete request head (default: 10)")
    ] = None,
    body_timeout: Annotated[
        float | None, typer.Option(help="Seconds to send a request body (default: 30)")
    ] = None,
    keep_alive: Annotated[
        float | None, typer.Option(help="Seconds an idle connection stays open (default: 5)")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="Open connections per worker before 503 (default: 1000)")
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Comma-separated Host names accepted besides loopback", metavar="NAMES"),
    ] = None,
) -> None:
    """Run the Event Consumer: accept events on POST /event and store them."""
    from eventctl.consumer.server import listen, serve

    cfg = consumer_config(
        config,
        host=host,
        port=port,
        database_url=database_url,
        max_body_bytes=max_body_bytes,
        log_level=log_level,
        workers=workers,
        metrics=metrics,
        max_batch=max_batch,
        commit_max_events=commit_max_events,
        commit_max_wait_ms=commit_max_wait_ms,
        max_queued_events=max_queued_events,
        fail_rate=fail_rate,
        fail_status=fail_status,
        latency_seconds=None if latency is None else _duration(latency, allow_zero=True),
        webhook_secrets_file=webhook_secrets_file,
        webhook_tolerance_seconds=webhook_tolerance_seconds,
        auth_token_file=auth_token_file,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout_seconds=header_timeout,
        body_timeout_seconds=body_timeout,
        keep_alive_seconds=keep_alive,
        max_connections=max_connections,
        allowed_hosts=allowed_hosts,
    )
    serve(cfg, listen(cfg.host, cfg.port), Console(stderr=True, highlight=False))


def _when(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


@app.command("list-events")
@guarded
def list_events(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many events.")] = 20,
    event_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Only events of this event_type (repeatable).",
            metavar="TYPE",
            autocompletion=_complete_event_types,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only events received since an ISO time or an age (10m, 2h, 1d).",
            metavar="WHEN",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Only events received before an ISO time or an age.", metavar="WHEN"),
    ] = None,
    q: Annotated[
        str | None, typer.Option("--q", help="Only events whose payload contains this text.")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            help=f"Output format: {', '.join(OUTPUTS)}.",
            metavar="FORMAT",
            autocompletion=_complete_outputs,
        ),
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --output json.")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new events as they are stored (Ctrl-C stops)."
        ),
    ] = False,
) -> None:
    """Show stored events, newest first, straight from the database."""
    from eventctl.store import Follower, Store

    output = "json" if as_json else output
    if output not in OUTPUTS:
        raise typer.BadParameter(f"not one of {', '.join(OUTPUTS)}", param_hint="--output")
    if follow and output == "json":
        raise typer.BadParameter("--follow prints a stream: use ndjson, csv or table")
    cfg = consumer_config(config, database_url=database_url)
    filters: dict[str, Any] = {
        "types": event_types or [],
        "since": _when(since, "--since"),
        "until": _when(until, "--until"),
        "q": q,
    }
    store = Store.open(cfg.database_url)
    try:
        events = store.events(limit=limit, **filters)
        if not follow:
            _print_events(events, output, filtered=any(filters.values()))
            return
        layout = _print_events(events[::-1], output, filtered=True, quiet=True)
        _follow(Follower(store, events[0].id if events else 0, **filters), output, layout)
    finally:
        store.close()


def _print_events(
    events: list[StoredEvent],
    output: str,
    *,
    filtered: bool,
    header: bool = True,
    quiet: bool = False,
    layout: TableLayout | None = None,
) -> TableLayout | None:
    """Print events in the order given. `quiet`: no "No events" line for an empty list.
    A table is laid out by `layout` if given (no title or header then), and the layout it
    used is returned, so that rows printed later line up under the same header."""
    if output == "json":
        out.document([e.to_json() for e in events])
    elif output == "ndjson":
        out.lines(e.to_json() for e in events)
    elif output == "csv":
        out.csv_rows((e.to_json() for e in events), StoredEventFields, header=header)
    elif events:
        console = Console(highlight=False)
        if layout is None:
            layout = TableLayout.fit(events, console.width)
            order = "newest first" if events[0].id >= events[-1].id else "oldest first"
            console.print(_events_table(events, layout, f"{_count(len(events))}, {order}"))
        else:
            console.print(_events_table(events, layout, None))
    elif not quiet:
        typer.echo("No events match." if filtered else "No events yet.", err=True)
    sys.stdout.flush()
    return layout


def _follow(follower: Follower, output: str, layout: TableLayout | None) -> None:
    """Print the rows the follower finds, oldest first, until Ctrl-C."""
    import time

    from eventctl.store import FOLLOW_POLL_SECONDS

    typer.echo("eventctl list-events: following; Ctrl-C stops", err=True)
    try:
        while True:
            new = follower.next_batch()
            if new:
                layout = _print_events(
                    new, output, filtered=True, header=False, quiet=True, layout=layout
                )
            else:
                time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return


@app.command()
@guarded
def tail(
    config: ConfigOption = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="The consumer's base URL (default: from the consumer config)"),
    ] = None,
    event_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Only this event_type (repeatable).",
            metavar="TYPE",
            autocompletion=_complete_event_types,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Follow a running consumer's stream of new events (Ctrl-C stops)."""
    from eventctl.consumer.server import base_url
    from eventctl.consumer.stream import follow_stream, stream_url

    cfg = consumer_config(config)
    url = stream_url(endpoint or base_url(cfg.host, cfg.port))
    console = Console(highlight=False)
    try:
        follow_stream(
            url,
            event_types or [],
            lambda data: _print_streamed(console, data, as_json),
            lambda notice: typer.echo(f"eventctl tail: {visible(notice)}", err=True),
        )
    except KeyboardInterrupt:
        return


STREAMED_FIELDS = ("received_at", "event_type", "event_payload")


def _print_streamed(console: Console, data: str, as_json: bool) -> None:
    """Print one streamed event; a message that is not one is reported on stderr."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict) or not all(
        isinstance(event.get(name), str) for name in STREAMED_FIELDS
    ):
        typer.echo(f"eventctl tail: not an event, skipped: {visible(data[:200])}", err=True)
        return
    if as_json:
        out.line(event)
        return
    line = Text(visible(f"{event['received_at'][11:23]}  "))
    line.append(visible(event["event_type"]), style="bold")
    line.append(f"  {_shorten(event['event_payload'], 80)}")
    console.print(line, soft_wrap=True)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(counts: list[int]) -> str:
    """One character per value, scaled to the largest."""
    peak = max(counts, default=0)
    if peak == 0:
        return SPARKS[0] * len(counts)
    return "".join(SPARKS[min(len(SPARKS) - 1, n * len(SPARKS) // (peak + 1))] for n in counts)


@app.command()
@guarded
def stats(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    since: Annotated[
        str, typer.Option(help="The window: an ISO time or an age (10m, 2h, 1d).", metavar="WHEN")
    ] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts per event type, first and last seen, and events per minute, from the database."""
    from eventctl.store import Store, iso

    now = datetime.now(UTC)
    start = _when(since, "--since") or now
    cfg = consumer_config(config, database_url=database_url)
    minutes = max(1, math.ceil((now - start).total_seconds() / 60))
    store = Store.open(cfg.database_url)
    try:
        types = store.type_counts(since=start)
        per_minute = store.per_bucket(start=start, bucket_seconds=60, buckets=minutes)
    finally:
        store.close()
    if as_json:
        report = {
            "since": iso(start),
            "until": iso(now),
            "total": sum(n for _, n, _, _ in types),
            "types": [
                {"event_type": t, "count": n, "first": iso(first), "last": iso(last)}
                for t, n, first, last in types
            ],
            "per_minute": per_minute,
        }
        out.document(report)
        return
    if not types:
        typer.echo(f"No events since {iso(start)}.", err=True)
        return
    table = Table(title=f"events since {iso(start)[:19]}Z", title_justify="left")
    table.add_column("event_type", style="bold")
    table.add_column("count", justify="right")
    table.add_column("first seen (UTC)", no_wrap=True)
    table.add_column("last seen (UTC)", no_wrap=True)
    for event_type, n, first, last in types:
        table.add_row(Text(visible(event_type)), str(n), iso(first)[:19], iso(last)[:19])
    console = Console(highlight=False)
    console.print(table)
    # the sparkline on a line of its own, one character a minute, as many as fit
    shown = per_minute[-min(60, console.width) :]
    console.print(
        f"per minute, last {len(shown)} min (peak {max(shown)}/min, "
        f"total {sum(n for _, n, _, _ in types)}):",
        markup=False,
    )
    console.print(sparkline(shown), markup=False)


StoredEventFields = ("id", "event_id", "event_type", "event_payload", "received_at")


def _shorten(text: str, width: int = 60) -> str:
    """`text` shown escaped (see eventctl.textsafe), cut to `width` characters."""
    shown = visible(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _count(n: int) -> str:
    return "1 event" if n == 1 else f"{n} events"


RECEIVED_WIDTH = len("2026-11-27T09:20:23.432Z")
# between two of the four columns: a space of padding and the (blank) divider
TABLE_GAPS = 3 * 2


class TableLayout:
    """The widths of the list-events table's columns, fitted to the terminal once."""

    def __init__(self, id_width: int, type_width: int, payload_width: int) -> None:
        self.id_width = id_width
        self.type_width = type_width
        self.payload_width = payload_width

    @classmethod
    def fit(cls, events: list[StoredEvent], width: int) -> TableLayout:
        # room for ids ten times larger, for the rows --follow prints later
        id_width = max(len("id"), len(str(max(e.id for e in events))) + 1)
        longest = max(len(visible(e.event_type)) for e in events)
        type_width = min(32, max(len("event_type"), longest))
        # the payload gets what the other columns leave, so a narrow terminal shortens
        # the payload instead of squeezing the id and type away
        payload_width = max(12, width - id_width - RECEIVED_WIDTH - type_width - TABLE_GAPS)
        return cls(id_width, type_width, payload_width)


def _events_table(events: list[StoredEvent], layout: TableLayout, title: str | None) -> Table:
    """The events as a table under a header line, or only the rows when `title` is None."""
    from eventctl.store import iso

    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        show_header=title is not None,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("id", justify="right", style="cyan", no_wrap=True, width=layout.id_width)
    table.add_column("received_at (UTC)", no_wrap=True, width=RECEIVED_WIDTH)
    table.add_column(
        "event_type", style="bold", no_wrap=True, width=layout.type_width, overflow="ellipsis"
    )
    table.add_column("event_payload", no_wrap=True, width=layout.payload_width)
    for event in events:
        table.add_row(
            str(event.id),
            iso(event.received_at)[:23] + "Z",
            Text(visible(event.event_type)),
            Text(_shorten(event.event_payload, layout.payload_width)),
        )
    return table


PropagatorConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Propagator config file (default: {DEFAULT_PROPAGATOR_CONFIG}, if it exists)",
        dir_okay=False,
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint", help="URL to POST events to (default: http://localhost:8000/event)"),
]
EventsFileOption = Annotated[
    str | None,
    typer.Option(
        "--events-file", help="JSON list of events to choose from (default: events/events.json)"
    ),
]
IntervalOption = Annotated[
    float | None,
    typer.Option("--interval", help="Seconds between two events (default: 5)"),
]
CountOption = Annotated[
    int | None, typer.Option("--count", min=1, help="Stop after sending this many events.")
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed the random choice of events (reproducible).")
]


def _duration(value: str | None, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if seconds <= 0 and not (allow_zero and seconds == 0):
        raise typer.BadParameter("must be greater than 0")
    return seconds


DurationOption = Annotated[
    str | None,
    typer.Option(
        "--duration", help="Stop sending after this long, e.g. 30s, 5m, 1h30m.", metavar="TIME"
    ),
]


SpoolOption = Annotated[
    str | None,
    typer.Option(
        "--spool", help="Spool file: the record of generated events (default: .eventctl/spool.db)"
    ),
]


def propagator_config(config: Path | None, **overrides: Any) -> PropagatorConfig:
    return load_config(
        PropagatorConfig,
        config or DEFAULT_PROPAGATOR_CONFIG,
        required=config is not None,
        environ=os.environ,
        overrides=overrides,
    )


SAMPLE_EVENTS = Path(__file__).parent.parent / "sample_events.json"


def events_path(events_file: str) -> Path:
    """The events file to read: `events_file`, or eventctl's sample events (a copy of the
    repository's events/events.json) where it is the default one and this directory has
    none, so that `propagate`, `up` and `send-once` work in any directory."""
    path = Path(events_file)
    if events_file == DEFAULT_EVENTS_FILE and not path.exists():
        return SAMPLE_EVENTS
    return path


def with_events(cfg: PropagatorConfig) -> PropagatorConfig:
    """`cfg` with the events file it will read (see events_path), the sample events said
    on stderr."""
    if events_path(cfg.events_file) != SAMPLE_EVENTS:
        return cfg
    print(
        f"eventctl: no {DEFAULT_EVENTS_FILE} here, so sending eventctl's sample events "
        f"({SAMPLE_EVENTS}); --events-file or EVENTCTL_EVENTS_FILE names your own",
        file=sys.stderr,
    )
    return dataclasses.replace(cfg, events_file=str(SAMPLE_EVENTS))


@app.command()
@guarded
def propagate(
    config: PropagatorConfigOption = None,
    interval: IntervalOption = None,
    endpoint: EndpointOption = None,
    events_file: EventsFileOption = None,
    count: CountOption = None,
    duration: DurationOption = None,
    seed: SeedOption = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Most events unsettled at once (default: 100).")
    ] = None,
    retry_attempts: Annotated[
        int | None, typer.Option(help="Attempts per event before it fails (default: 100).")
    ] = None,
    retry_base_seconds: Annotated[
        float | None, typer.Option(help="First retry delay, doubled each time (default: 0.2).")
    ] = None,
    retry_max_seconds: Annotated[
        float | None, typer.Option(help="Longest retry delay (default: 10).")
    ] = None,
    retry_max_elapsed_seconds: Annotated[
        float | None,
        typer.Option(help="Seconds an event is retried for, from its first try (default: 120)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for one answer (default: 5).")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live status or log lines; only the summary.")
    ] = False,
    json_log: Annotated[
        bool, typer.Option("--json-log", help="One JSON object per attempt on stdout (NDJSON).")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(help="Events per second, instead of --interval (open model).", min=0.001),
    ] = None,
    drain: Annotated[
        bool, typer.Option("--drain", help="Only resend what the spool holds as pending; exit.")
    ] = False,
    new_run: Annotated[
        bool,
        typer.Option(
            "--new-run", help="Start a new run even if an unfinished one with this --count exists."
        ),
    ] = False,
    spool: SpoolOption = None,
    spool_max_pending: Annotated[
        int | None,
        typer.Option(help="Pending events in the spool before generation pauses (default: 10000)."),
    ] = None,
    signing_secret_file: Annotated[
        str | None, typer.Option(help="File holding the whsec_ secret to sign events with.")
    ] = None,
    auth_token_file: Annotated[
        str | None, typer.Option(help="File holding the bearer token to send.")
    ] = None,
) -> None:
    """Run the Event Propagator: send a random event from the events file every interval."""
    from eventctl.propagator.run import DisplayMode, propagate_events

    if rate is not None and interval is not None:
        raise typer.BadParameter("give either --interval or --rate", param_hint="--rate")
    if drain and (count is not None or duration is not None):
        raise typer.BadParameter("--drain sends only what is pending", param_hint="--drain")
    cfg = propagator_config(
        config,
        spool_path=spool,
        spool_max_pending=spool_max_pending,
        signing_secret_file=signing_secret_file,
        auth_token_file=auth_token_file,
        interval_seconds=interval if rate is None else 1 / rate,
        api_endpoint=endpoint,
        events_file=events_file,
        max_in_flight=max_in_flight,
        retry_attempts=retry_attempts,
        retry_base_seconds=retry_base_seconds,
        retry_max_seconds=retry_max_seconds,
        retry_max_elapsed_seconds=retry_max_elapsed_seconds,
        request_timeout_seconds=timeout,
    )
    seconds = _duration(duration)
    if not drain:
        cfg = with_events(cfg)
    events = EventPool([]) if drain else load_events_file(Path(cfg.events_file))
    mode = DisplayMode.choose(quiet=quiet, json_log=json_log, tty=sys.stderr.isatty())
    stats = propagate_events(
        cfg,
        events,
        count=0 if drain else count,
        duration=seconds,
        seed=seed,
        mode=mode,
        new_run=new_run,
    )
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)


def _event_from_flags(
    event_type: str | None, payload: str | None, file: str | None
) -> Event | None:
    if file is not None:
        if event_type is not None or payload is not None:
            raise typer.BadParameter("give either --file or --type/--payload", param_hint="--file")
        where = "stdin" if file == "-" else file
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidEvent(None, f"{where}: cannot read: {exc}") from None
        data = parse_json(text, where)
        try:
            return validate_event(data)
        except InvalidEvent as exc:
            raise InvalidEvent(None, f"{where}: {exc}") from None
    if event_type is None and payload is None:
        return None
    if event_type is None or payload is None:
        raise typer.BadParameter("--type and --payload go together", param_hint="--type")
    return validate_event({"event_type": event_type, "event_payload": payload})


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or key not in ("event_type", "event_payload"):
            raise typer.BadParameter(
                f"{pair!r}: use event_type=VALUE or event_payload=VALUE", param_hint="--set"
            )
        fields[key] = value
    return fields


@app.command("send-once")
@guarded
def send_once(
    config: PropagatorConfigOption = None,
    endpoint: EndpointOption = None,
    events_file: EventsFileOption = None,
    event_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="event_type of the event to send.",
            metavar="TYPE",
            autocompletion=_complete_event_types,
        ),
    ] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="event_payload of the event to send.")
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", help="Send the JSON event in this file ('-' reads stdin)."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Send this Idempotency-Key (default: a new UUIDv7).", metavar="KEY"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for the answer (default: 5).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a field of the event: event_type=... or event_payload=... (repeatable).",
            metavar="KEY=VALUE",
        ),
    ] = None,
) -> None:
    """Send exactly one event and print the outcome."""
    import random
    import time

    from eventctl.propagator.propagator import Answer, classify, send_event
    from eventctl.propagator.run import propagator_credentials

    cfg = propagator_config(
        config,
        api_endpoint=endpoint,
        events_file=events_file,
        request_timeout_seconds=timeout,
    )
    event = _event_from_flags(event_type, payload, file)
    if event is None:
        source = load_events_file(Path(with_events(cfg).events_file))
        event = source.pick(random.Random(), 1, lambda: datetime.now(UTC))
    if overrides:
        event = validate_event({**event._asdict(), **_parse_sets(overrides)})
    sent = send_event(
        cfg.api_endpoint,
        event,
        event_id=idempotency_key or new_event_id(),
        timeout=cfg.request_timeout_seconds,
        clock=time.monotonic,
        credentials=propagator_credentials(cfg),
    )
    if as_json:
        outcome = {
            "endpoint": cfg.api_endpoint,
            "status_code": sent.status,
            "event_id": sent.event_id,
            "replayed": sent.replayed,
            "latency_ms": round(sent.latency * 1000, 3),
            "event": event.to_json(),
            "response": sent.body,
        }
        out.document(outcome)
    where = f"{cfg.api_endpoint}: {sent.status}"
    answer = classify(sent.status)
    if answer is Answer.REFUSED:
        raise Refused(f"refused by {where} {sent.error_text()}")
    if answer is Answer.TRY_AGAIN:
        what = "server error from" if sent.status >= 500 else "not stored, try again later:"
        raise ServerFailed(f"{what} {where} {sent.error_text()}")
    if not as_json:
        replayed = " (replayed: already stored)" if sent.replayed else ""
        typer.echo(
            visible(
                f"{sent.status} {event.event_type} -> {cfg.api_endpoint} "
                f"event_id={sent.event_id} {sent.latency * 1000:.1f} ms{replayed}"
            )
        )


@app.command()
@guarded
def up(
    port: Annotated[int | None, typer.Option(help="Consumer port (default: 8000)")] = None,
    interval: IntervalOption = None,
    database_url: DatabaseUrlOption = None,
    count: CountOption = None,
    duration: DurationOption = None,
    seed: SeedOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live status or log lines; only the summary.")
    ] = False,
) -> None:
    """Run the consumer and the propagator together, until Ctrl-C (or --count/--duration)."""
    from eventctl.cli.run import run_up
    from eventctl.consumer.server import listen
    from eventctl.propagator.run import DisplayMode

    ccfg = consumer_config(None, port=port, database_url=database_url)
    pcfg = with_events(propagator_config(None, interval_seconds=interval))
    seconds = _duration(duration)
    events = load_events_file(Path(pcfg.events_file))
    mode = DisplayMode.choose(quiet=quiet, json_log=False, tty=sys.stderr.isatty())
    sock = listen(ccfg.host, ccfg.port)
    stats = run_up(ccfg, pcfg, events, sock, count=count, duration=seconds, seed=seed, mode=mode)
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)


spool_app = typer.Typer(
    help="Look at and retry the propagator's spool of generated events.",
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")


@spool_app.command("list")
@guarded
def spool_list(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    state: Annotated[
        str,
        typer.Option(help="pending, failed, delivered, unsettled (pending and failed) or all"),
    ] = "unsettled",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Show events in the spool: by default the ones not delivered yet."""
    from eventctl.propagator.spool import SELECTIONS, Spool

    if state not in SELECTIONS:
        raise typer.BadParameter(f"not one of {', '.join(SELECTIONS)}", param_hint="--state")
    cfg = propagator_config(config, spool_path=spool)
    if not Path(cfg.spool_path).exists():  # a command that only reads creates nothing
        if as_json:
            out.document([])
        typer.echo(f"{cfg.spool_path}: no spool here (nothing generated yet)", err=True)
        return
    opened = Spool.open(Path(cfg.spool_path))
    try:
        entries = opened.entries(*SELECTIONS[state])
        counts = opened.counts()
    finally:
        opened.close()
    if as_json:
        out.document([e.to_json() for e in entries])
        return
    typer.echo(
        f"{cfg.spool_path}: {counts['pending']} pending, {counts['failed']} failed, "
        f"{counts['delivered']} delivered",
        err=True,
    )
    if entries:
        console = Console(highlight=False)
        # event_id, state and tries are shown whole; the two free texts share what is left
        fixed = 36 + len("delivered") + len("tries") + 2 * 5
        free = max(console.width - fixed, 16)
        result_width = min(20, free // 2)
        table = Table(box=None, header_style="dim")
        table.add_column("event_id", no_wrap=True, width=36)
        table.add_column("state", no_wrap=True, width=len("delivered"))
        table.add_column("tries", justify="right", no_wrap=True, width=len("tries"))
        table.add_column("last result", no_wrap=True, width=result_width, overflow="ellipsis")
        table.add_column(
            "event_type", no_wrap=True, max_width=free - result_width, overflow="ellipsis"
        )
        for e in entries:
            table.add_row(
                Text(visible(e.event_id)),
                e.state,
                str(e.attempts),
                Text(visible(e.last_result or "-")),
                Text(visible(e.event.event_type)),
            )
        console.print(table)


@spool_app.command("retry")
@guarded
def spool_retry(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    endpoint: EndpointOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live status or log lines; only the summary.")
    ] = False,
) -> None:
    """Make failed events pending again and send everything pending now."""
    from eventctl.propagator.run import DisplayMode, propagate_events
    from eventctl.propagator.spool import Spool

    cfg = propagator_config(config, spool_path=spool, api_endpoint=endpoint)
    opened = Spool.open(Path(cfg.spool_path))
    try:
        requeued = opened.requeue_failed()
    finally:
        opened.close()
    typer.echo(f"eventctl spool retry: {requeued} failed events are pending again", err=True)
    mode = DisplayMode.choose(quiet=quiet, json_log=False, tty=sys.stderr.isatty())
    stats = propagate_events(
        cfg,
        EventPool([]),
        count=0,
        duration=None,
        seed=None,
        mode=mode,
        title="eventctl spool retry",
    )
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)


@app.command()
@guarded
def verify(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    consumer_config_path: Annotated[
        Path | None,
        typer.Option(
            "--consumer-config",
            help=f"Where database_url comes from (default: {DEFAULT_CONSUMER_CONFIG})",
            dir_okay=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    run_id: Annotated[
        int | None, typer.Option("--run", help="Check this run (default: the latest).", min=1)
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="Check every event in the spool, of every run.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Prove delivery: compare the spool's record of a run with what the database holds."""
    from eventctl.propagator.spool import Spool, SpoolError
    from eventctl.store import Store
    from eventctl.verify import compare

    if run_id is not None and all_runs:
        raise typer.BadParameter("give either --run or --all", param_hint="--all")
    pcfg = propagator_config(config, spool_path=spool)
    ccfg = consumer_config(consumer_config_path, database_url=database_url)
    spool_path = Path(pcfg.spool_path)
    if not spool_path.exists():
        raise SpoolError(f"{spool_path}: no spool here; run `eventctl propagate` first")
    opened = Spool.open(spool_path)
    try:
        run = None if run_id is None else opened.run(run_id)
        if run_id is not None and run is None:
            known = [r.run_id for r in opened.runs()]
            shown = f"runs {known[0]} to {known[-1]}" if known else "no runs"
            raise typer.BadParameter(
                f"no run {run_id} in {spool_path} ({shown})", param_hint="--run"
            )
        store = Store.open(ccfg.database_url)
        try:
            report = compare(opened, store, run, all_runs=all_runs)
        finally:
            store.close()
    finally:
        opened.close()
    result = report.to_json()
    if as_json:
        out.document(result)
    else:
        for line in _verify_lines(report, result, spool_path):
            typer.echo(line)
    if report.verdict == "FAILED":
        raise typer.Exit(ExitCode.MISMATCH)
    if report.verdict == "INCOMPLETE":
        raise typer.Exit(ExitCode.UNDELIVERED)


def _verify_lines(report: Any, result: dict[str, Any], spool_path: Path) -> list[str]:
    """verify's report: the verdict line, then what is wrong and how to mend it."""
    if report.run_id is not None:
        scope = f"run {report.run_id}"
    else:
        scope = f"all {report.runs} runs" if report.runs != 1 else "all of the spool"
    lines = [
        f"{report.verdict}: {result['generated']} generated, {result['acknowledged']} "
        f"acknowledged, {result['stored']} stored; lost {result['lost']}, duplicated "
        f"{result['duplicated']}, pending {result['pending']}, failed {result['failed']}; "
        f"latency p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms ({scope})"
    ]
    for kind in ("lost", "duplicated"):
        lines += [f"  {kind}: {visible(event_id)}" for event_id in result[f"{kind}_ids"]]
    if report.failed:
        lines.append(
            f"  {report.failed} failed: they are in {spool_path}; "
            "`eventctl spool retry` resends them"
        )
    if report.pending:
        lines.append(
            f"  {report.pending} pending: `eventctl propagate --drain` (or the next "
            "`eventctl propagate`) sends them"
        )
    if report.unfinished:
        lines.append(
            f"  unfinished: {report.generated} of {report.target} generated; "
            f"`eventctl propagate --count {report.target}` resumes the run"
        )
    if report.other:
        lines.append(
            f"  other: {len(report.other)} stored since, not from this spool "
            "(send-once, curl, other senders); not checked"
        )
    return lines


def main() -> None:
    """Entry point of the `eventctl` console script and `python -m eventctl`."""
    # one program name however it was started, so completion reads _EVENTCTL_COMPLETE
    app(prog_name="eventctl")
