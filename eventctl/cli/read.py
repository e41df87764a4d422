"""The commands that read: `list-events` and `stats` (from the database), `tail` (from a
running consumer's stream)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from eventctl.cli import output as out
from eventctl.cli.environment import current, guarded
from eventctl.cli.options import (
    OUTPUTS,
    ConfigOption,
    DatabaseUrlOption,
    PayloadTextOption,
    SinceOption,
    TypesOption,
    UntilOption,
    complete_outputs,
    consumer_config,
    when,
)
from eventctl.textsafe import visible

if TYPE_CHECKING:
    from eventctl.store import Follower, StoredEvent


@guarded
def list_events(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many events.")] = 20,
    event_types: TypesOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    q: PayloadTextOption = None,
    output: Annotated[
        str,
        typer.Option(
            help=f"Output format: {', '.join(OUTPUTS)}.",
            metavar="FORMAT",
            autocompletion=complete_outputs,
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
        "since": when(since, "--since"),
        "until": when(until, "--until"),
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
    env = current()
    if output == "json":
        out.document(env.stdout, [e.to_json() for e in events])
    elif output == "ndjson":
        out.lines(env.stdout, (e.to_json() for e in events))
    elif output == "csv":
        out.csv_rows(env.stdout, (e.to_json() for e in events), STORED_FIELDS, header=header)
    elif events:
        console = env.console()
        if layout is None:
            layout = TableLayout.fit(events, console.width)
            order = "newest first" if events[0].id >= events[-1].id else "oldest first"
            console.print(_events_table(events, layout, f"{_count(len(events))}, {order}"))
        else:
            console.print(_events_table(events, layout, None))
    elif not quiet:
        env.say("No events match." if filtered else "No events yet.")
    env.stdout.flush()
    return layout


def _follow(follower: Follower, output: str, layout: TableLayout | None) -> None:
    """Print the rows the follower finds, oldest first, until Ctrl-C."""
    import time

    from eventctl.store import FOLLOW_POLL_SECONDS

    current().say("eventctl list-events: following; Ctrl-C stops")
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


@guarded
def tail(
    config: ConfigOption = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="The consumer's base URL (default: from the consumer config)"),
    ] = None,
    event_types: TypesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Follow a running consumer's stream of new events (Ctrl-C stops)."""
    from eventctl.consumer.server import base_url
    from eventctl.consumer.stream import follow_stream, stream_url

    cfg = consumer_config(config)
    url = stream_url(endpoint or base_url(cfg.host, cfg.port))
    env = current()
    console = env.console()
    try:
        follow_stream(
            url,
            event_types or [],
            lambda data: _print_streamed(console, data, as_json),
            lambda notice: env.say(f"eventctl tail: {visible(notice)}"),
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
        current().say(f"eventctl tail: not an event, skipped: {visible(data[:200])}")
        return
    if as_json:
        out.line(current().stdout, event)
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
    start = when(since, "--since") or now
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
        out.document(current().stdout, report)
        return
    if not types:
        current().say(f"No events since {iso(start)}.")
        return
    table = Table(title=f"events since {iso(start)[:19]}Z", title_justify="left")
    table.add_column("event_type", style="bold")
    table.add_column("count", justify="right")
    table.add_column("first seen (UTC)", no_wrap=True)
    table.add_column("last seen (UTC)", no_wrap=True)
    for event_type, n, first, last in types:
        table.add_row(Text(visible(event_type)), str(n), iso(first)[:19], iso(last)[:19])
    console = current().console()
    console.print(table)
    # the sparkline on a line of its own, one character a minute, as many as fit
    shown = per_minute[-min(60, console.width) :]
    console.print(
        f"per minute, last {len(shown)} min (peak {max(shown)}/min, "
        f"total {sum(n for _, n, _, _ in types)}):",
        markup=False,
    )
    console.print(sparkline(shown), markup=False)


STORED_FIELDS = ("id", "event_id", "event_type", "event_payload", "received_at")


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
