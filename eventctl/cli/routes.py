"""The store-and-forward commands: `routes` (each route's state and backlog, from the
database), `routes retry` and `routes enable`.

The group's own options (`eventctl routes --database-url URL retry NAME`) reach its
sub-commands, so that either place for them works.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from eventctl.cli import output as out
from eventctl.cli.environment import current, guarded
from eventctl.cli.options import ConfigOption, DatabaseUrlOption, consumer_config
from eventctl.textsafe import visible

if TYPE_CHECKING:
    from eventctl.outbox import Outbox, RouteStatus


def lag_text(status: RouteStatus, now: datetime) -> str:
    """The age of a route's oldest undelivered event, for people: 3.2s, 4m05s, 2h10m, 3d4h;
    "-" when nothing is queued."""
    if status.oldest_queued is None:
        return "-"
    seconds = status.lag_seconds(now)
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    whole = max(int(seconds), 60)  # 59.96s reads 1m00s, not 60.0s
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600}h"


def _inherited(ctx: typer.Context, name: str, value: Any) -> Any:
    """A sub-command's option, or else the one given to the `routes` group."""
    if value is None and ctx.parent is not None:
        return ctx.parent.params.get(name)
    return value


@contextmanager
def _outbox(
    ctx: typer.Context, config: Path | None, database_url: str | None
) -> Iterator[tuple[Outbox, str]]:
    """The outbox of the database the options name, and that database's name for people."""
    from eventctl.outbox import Outbox
    from eventctl.store import Store, describe_url

    cfg = consumer_config(
        _inherited(ctx, "config", config),
        database_url=_inherited(ctx, "database_url", database_url),
    )
    store = Store.open(cfg.database_url)
    try:
        yield Outbox(store), describe_url(cfg.database_url)
    finally:
        store.close()


def _table(routes: list[RouteStatus], now: datetime) -> Table:
    """A row a route: a named route shows its URL under the name (an unnamed one is named
    by its URL)."""
    table = Table(box=None, header_style="dim", pad_edge=False)
    table.add_column("route (url)", overflow="fold", ratio=2)
    table.add_column("state", no_wrap=True)
    for name in ("queued", "delivered", "failed", "lag"):
        table.add_column(name, justify="right", no_wrap=True)
    styles = {"active": "green", "paused": "yellow", "disabled": "red"}
    for r in routes:
        route = Text(visible(r.name), style="bold")
        if r.url != r.name:
            route.append("\n" + visible(r.url), style="dim")
        table.add_row(
            route,
            Text(r.state, style=styles.get(r.state, "")),
            str(r.queued),
            str(r.delivered),
            str(r.failed),
            lag_text(r, now),
        )
    return table


def _reasons(routes: list[RouteStatus]) -> list[Text]:
    """Why each paused or disabled route is so, a line each (too long for a column)."""
    return [
        Text.assemble((visible(r.name), "bold"), f" is {r.state}: {visible(r.reason)}")
        for r in routes
        if r.reason
    ]


@guarded
def routes_list(
    ctx: typer.Context,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print one JSON object: {"routes": [...]}.')
    ] = False,
) -> None:
    """Show the forwarding routes of `serve` (store and forward): state, backlog, lag."""
    if ctx.invoked_subcommand is not None:
        return  # `routes retry` or `routes enable`, which take these options from here
    env = current()
    with _outbox(ctx, config, database_url) as (outbox, where):
        routes = outbox.status()
    now = datetime.now(UTC)
    if as_json:
        out.document(env.stdout, {"routes": [r.to_json(now) for r in routes]})
    if not routes:
        env.say(f"no forwarding routes in {where}; serve --forward-to URL adds one")
        return
    if not as_json:
        console = env.console()
        console.print(_table(routes, now))
        if reasons := _reasons(routes):
            console.print()
            for line in reasons:
                console.print(line)


def _count(n: int) -> str:
    return f"{n} failed event" if n == 1 else f"{n} failed events"


@guarded
def routes_retry(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="The route whose failed events to queue again.", metavar="NAME"),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every route's failed events.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"requeued": N}.')] = False,
) -> None:
    """Queue failed events again.

    The failed events of route NAME (or of every route, with --all) are queued again, due
    now and with their attempts counted afresh; a running `serve` sends them.
    """
    if name is None and not every:
        raise typer.BadParameter("give a route's name, or --all for every route", param_hint="NAME")
    if name is not None and every:
        raise typer.BadParameter("give a route's name or --all, not both", param_hint="NAME")
    with _outbox(ctx, config, database_url) as (outbox, _):
        requeued = outbox.retry(None if every else name)
    env = current()
    if as_json or _inherited(ctx, "as_json", None):
        out.document(env.stdout, {"requeued": requeued})
    scope = "every route" if every else visible(name or "")
    env.say(f"{_count(requeued)} of {scope} queued again")


@guarded
def routes_enable(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The route to make active.", metavar="NAME")],
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"route": NAME, "state": "active"}.')
    ] = False,
) -> None:
    """Make a route active again.

    After a 410 disabled route NAME, or to end its circuit breaker's pause now.
    """
    with _outbox(ctx, config, database_url) as (outbox, _):
        outbox.enable(name)
    env = current()
    if as_json or _inherited(ctx, "as_json", None):
        out.document(env.stdout, {"route": name, "state": "active"})
    env.say(f"{visible(name)} is active again")
