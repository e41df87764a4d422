"""`eventctl replay`: send stored (or exported) events again, to any URL, at any speed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer

from eventctl.cli import output as out
from eventctl.cli.environment import current, guarded
from eventctl.cli.options import (
    ConsumerConfigOption,
    DatabaseUrlOption,
    JsonLogOption,
    MaxInFlightOption,
    PayloadTextOption,
    PropagatorConfigOption,
    QuietOption,
    RetryAttemptsOption,
    RetryMaxElapsedOption,
    SinceOption,
    SpoolOption,
    TimeoutOption,
    TypesOption,
    UntilOption,
    config_option,
    consumer_config,
    propagator_config,
    when,
)
from eventctl.config import PropagatorConfig as P
from eventctl.errors import ExitCode
from eventctl.textsafe import visible

if TYPE_CHECKING:
    from eventctl.auth import Credentials
    from eventctl.propagator.propagator import Pages
    from eventctl.replay import Pacing, Replay

DRY_RUN_SHOWN = 5


def _pacing(rate: float | None, interval: float | None, speed: float | None) -> Pacing:
    from eventctl.replay import Pacing, PacingKind

    options: list[tuple[PacingKind, float | None]] = [
        ("rate", rate),
        ("interval", interval),
        ("speed", speed),
    ]
    given = [(kind, value) for kind, value in options if value is not None]
    if len(given) > 1:
        flags = " and ".join(f"--{name}" for name, _ in given)
        raise typer.BadParameter(f"give one of --rate, --interval, --speed, not {flags}")
    if not given:
        return Pacing()
    kind, value = given[0]
    return Pacing(kind, value)


def _check_url(to: str) -> None:
    try:
        url = httpx.URL(to)
    except httpx.InvalidURL as exc:
        raise typer.BadParameter(f"{to!r}: {exc}", param_hint="--to") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise typer.BadParameter(f"{to!r}: not an http:// or https:// URL", param_hint="--to")


@guarded
def replay(
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            help="POST the events to this URL (repeatable: several share the events, "
            "failing over as propagate's endpoints do).",
            metavar="URL",
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file",
            help="Replay the events of this export (what list-events --output ndjson|json "
            "writes) instead of the database.",
            dir_okay=False,
        ),
    ] = None,
    consumer_config_path: ConsumerConfigOption = None,
    database_url: DatabaseUrlOption = None,
    event_types: TypesOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    q: PayloadTextOption = None,
    event_ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Only the event with this event_id (repeatable).", metavar="ID"),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Only the newest N events selected (sent oldest first)."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Send this many events per second.", min=0.001)
    ] = None,
    interval: Annotated[
        float | None, typer.Option(help="Send one event every this many seconds.", min=0.0001)
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(
            help="Keep the recorded gaps between events, divided by X (1: as they arrived).",
            metavar="X",
            min=0.0001,
        ),
    ] = None,
    new_ids: Annotated[
        bool,
        typer.Option(
            "--new-ids",
            help="Send each event with a fresh id (new copies), not its stored one.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print how many events would go and the first few."),
    ] = False,
    as_curl: Annotated[
        bool,
        typer.Option("--as-curl", help="Print one curl command per event instead of sending."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the answer as JSON.")
    ] = False,
    new_run: Annotated[
        bool,
        typer.Option("--new-run", help="Start afresh even if this replay was interrupted."),
    ] = False,
    config: PropagatorConfigOption = None,
    max_in_flight: MaxInFlightOption = None,
    retry_attempts: RetryAttemptsOption = None,
    retry_max_elapsed_seconds: RetryMaxElapsedOption = None,
    timeout: TimeoutOption = None,
    quiet: QuietOption = False,
    json_log: JsonLogOption = False,
    spool: SpoolOption = None,
    signing_secret_file: Annotated[str | None, config_option(P, "signing_secret_file")] = None,
    auth_token_file: Annotated[str | None, config_option(P, "auth_token_file")] = None,
) -> None:
    """Send stored events again, oldest first, to any URL: from the database (selected as
    list-events selects them) or from an export file."""
    from eventctl.propagator.run import (
        DisplayMode,
        ReplayJob,
        propagator_credentials,
        replay_events,
    )
    from eventctl.replay import Replay, Selection

    if to is None and not dry_run:
        raise typer.BadParameter("where to? give --to URL", param_hint="--to")
    for url in to or ():
        _check_url(url)
    if dry_run and as_curl:
        raise typer.BadParameter("give either --dry-run or --as-curl", param_hint="--as-curl")
    if as_json and not dry_run:
        raise typer.BadParameter("--json goes with --dry-run (--json-log logs a replay)")
    if from_file is not None and (database_url is not None or consumer_config_path is not None):
        raise typer.BadParameter("give either --from-file or a database", param_hint="--from-file")
    pacing = _pacing(rate, interval, speed)
    selection = Selection(
        types=tuple(event_types or ()),
        since=when(since, "--since"),
        until=when(until, "--until"),
        q=q,
        event_ids=tuple(dict.fromkeys(event_ids or ())),
        limit=limit,
        window_flags=(since, until),
    )
    cfg = propagator_config(
        config,
        api_endpoint=to,
        spool_path=spool,
        max_in_flight=max_in_flight,
        retry_attempts=retry_attempts,
        retry_max_elapsed_seconds=retry_max_elapsed_seconds,
        request_timeout_seconds=timeout,
        signing_secret_file=signing_secret_file,
        auth_token_file=auth_token_file,
    )
    destination = cfg.endpoints_text
    env = current()
    if from_file is not None:
        source = Replay.from_file(
            from_file, selection, needs_times=pacing.needs_times, to=destination, new_ids=new_ids
        )
    else:
        ccfg = consumer_config(consumer_config_path, database_url=database_url)
        source = Replay.from_database(ccfg.database_url, selection, to=destination, new_ids=new_ids)
    try:
        if dry_run:
            _dry_run(source, cfg.endpoints_text if to else None, pacing, as_json=as_json)
            return
        if as_curl:
            credentials = propagator_credentials(cfg, env.environ)
            _print_curl(source, cfg.api_endpoint[0], credentials)
            return

        def plan(upto: int | None, after: int | None, window: str | None) -> tuple[int, int, Pages]:
            source.keep_window(window)
            bounds = source.bounds(upto)
            return bounds.total, bounds.upto_id, source.pages(pacing, bounds, after)

        job = ReplayJob(
            source.name, source.key, pacing.describe(), pacing.interval, selection.window(), plan
        )
        mode = DisplayMode.choose(quiet=quiet, json_log=json_log, tty=bool(env.stderr_isatty))
        stats = replay_events(
            cfg,
            job,
            mode=mode,
            new_run=new_run,
            environ=env.environ,
            stdout=env.stdout,
            stderr=env.stderr,
        )
    finally:
        source.close()
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)


def _dry_run(source: Replay, to: str | None, pacing: Pacing, *, as_json: bool) -> None:
    bounds = source.bounds()
    first = source.first(bounds, DRY_RUN_SHOWN)
    env = current()
    events = [
        {
            "event_id": None if source.new_ids else event_id,
            "event_type": event_type,
            "event_payload": payload,
            "received_at": None if at is None else at.isoformat(),
        }
        for _, event_id, event_type, payload, at in first
    ]
    if as_json:
        answer = {
            "events": bounds.total,
            "to": to,
            "source": source.name,
            "pacing": pacing.describe(),
            "first": events,
        }
        out.document(env.stdout, answer)
        return
    where = "" if to is None else f" to {to}"
    env.stdout.write(
        visible(
            f"would replay {bounds.total} events from {source.name}{where}, oldest first, "
            f"{pacing.describe()}"
        )
        + (":\n" if events else "\n")
    )
    for event in events:
        ids = "(new id)" if event["event_id"] is None else event["event_id"]
        line = f"  {ids}  {event['received_at']}  {event['event_type']}  {event['event_payload']}"
        env.stdout.write(visible(line[:200]) + "\n")
    if bounds.total > len(events):
        env.stdout.write(f"  ... and {bounds.total - len(events)} more\n")
    env.stdout.flush()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _print_curl(source: Replay, to: str, credentials: Credentials) -> None:
    from eventctl.events import Event, new_event_id
    from eventctl.propagator.propagator import curl_command

    env = current()
    bounds = source.bounds()
    for rows in source.rows(bounds):
        for _, event_id, event_type, payload, _at in rows:
            sent_id = new_event_id() if source.new_ids else event_id
            event = Event(event_type, payload)
            env.stdout.write(curl_command(to, credentials, sent_id, event, _utc_now) + "\n")
    env.stdout.flush()
