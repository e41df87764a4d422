"""The commands that send: `propagate` (the Event Propagator) and `send-once`."""

from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from eventctl.cli import output as out
from eventctl.cli.environment import current, guarded
from eventctl.cli.options import (
    CountOption,
    DurationOption,
    EndpointOption,
    EventsFileOption,
    IntervalOption,
    JsonLogOption,
    MaxInFlightOption,
    PropagatorConfigOption,
    QuietOption,
    RetryAttemptsOption,
    RetryMaxElapsedOption,
    SeedOption,
    SpoolOption,
    TimeoutOption,
    complete_event_types,
    config_option,
    duration,
    propagator_config,
    with_events,
)
from eventctl.config import PropagatorConfig as P
from eventctl.errors import ExitCode, InvalidEvent, Refused, ServerFailed, Unavailable
from eventctl.events import Event, new_event_id, parse_json, validate_event
from eventctl.propagator.templates import EventPool, load_events_file
from eventctl.textsafe import visible

if TYPE_CHECKING:
    from eventctl.propagator.propagator import Sent


@guarded
def propagate(
    config: PropagatorConfigOption = None,
    interval: IntervalOption = None,
    endpoint: EndpointOption = None,
    events_file: EventsFileOption = None,
    count: CountOption = None,
    duration_text: DurationOption = None,
    seed: SeedOption = None,
    max_in_flight: MaxInFlightOption = None,
    retry_attempts: RetryAttemptsOption = None,
    retry_base_seconds: Annotated[float | None, config_option(P, "retry_base_seconds")] = None,
    retry_max_seconds: Annotated[float | None, config_option(P, "retry_max_seconds")] = None,
    retry_max_elapsed_seconds: RetryMaxElapsedOption = None,
    timeout: TimeoutOption = None,
    quiet: QuietOption = False,
    json_log: JsonLogOption = False,
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
    spool_max_pending: Annotated[int | None, config_option(P, "spool_max_pending")] = None,
    signing_secret_file: Annotated[str | None, config_option(P, "signing_secret_file")] = None,
    auth_token_file: Annotated[str | None, config_option(P, "auth_token_file")] = None,
    stages_text: Annotated[
        str | None,
        typer.Option(
            "--stages",
            help="Rate plan: DURATION@RATE (hold) or DURATION@FROM-TO (ramp), comma-separated, "
            "e.g. 30s@100,1m@100-2000,30s@2000.",
            metavar="PLAN",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write a report of the run here at its end: run.html (a page) or run.json.",
            dir_okay=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(help="Sender processes sharing the rate, the spool and the report.", min=1),
    ] = 1,
) -> None:
    """Run the Event Propagator: send a random event from the events file every interval."""
    from eventctl.propagator.report import check_report_path
    from eventctl.propagator.run import DisplayMode, propagate_events
    from eventctl.propagator.schedule import Schedule, StagesError, parse_stages
    from eventctl.propagator.workers import propagate_in_workers

    if rate is not None and interval is not None:
        raise typer.BadParameter("give either --interval or --rate", param_hint="--rate")
    if drain and (count is not None or duration_text is not None):
        raise typer.BadParameter("--drain sends only what is pending", param_hint="--drain")
    schedule = None
    if stages_text is not None:
        if drain:
            raise typer.BadParameter("--drain sends only what is pending", param_hint="--stages")
        if rate is not None or interval is not None or duration_text is not None:
            raise typer.BadParameter(
                "--stages sets the rate and the duration: leave out --rate, --interval and "
                "--duration",
                param_hint="--stages",
            )
        try:
            schedule = Schedule(parse_stages(stages_text))
        except StagesError as exc:
            raise typer.BadParameter(str(exc), param_hint="--stages") from None
    if report is not None:
        try:
            check_report_path(report)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--report") from None
        if not report.resolve().parent.is_dir():
            raise typer.BadParameter(f"{report}: no such directory", param_hint="--report")
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
    seconds = duration(duration_text)
    if schedule is not None:
        seconds = schedule.seconds
        rate = schedule.stages[0].start_rate or 1.0
        cfg = dataclasses.replace(cfg, interval_seconds=1 / rate)
    if not drain:
        cfg = with_events(cfg)
    events = EventPool([]) if drain else load_events_file(Path(cfg.events_file))
    env = current()
    mode = DisplayMode.choose(quiet=quiet, json_log=json_log, tty=bool(env.stderr_isatty))
    run = (
        propagate_events
        if workers == 1
        else functools.partial(propagate_in_workers, workers=workers)
    )
    stats = run(
        cfg,
        events,
        count=0 if drain else count,
        duration=seconds,
        seed=seed,
        mode=mode,
        new_run=new_run,
        schedule=schedule,
        report=report,
        keys=mode is DisplayMode.LIVE and bool(env.stdin_isatty),
        command=shlex.join(["eventctl", *sys.argv[1:]]),
        environ=env.environ,
        stdout=env.stdout,
        stderr=env.stderr,
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
            text = current().stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
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
            autocompletion=complete_event_types,
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
    timeout: TimeoutOption = None,
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

    from eventctl.delivery import Answer, classify
    from eventctl.propagator.propagator import send_event
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
    event_id = idempotency_key or new_event_id()
    credentials = propagator_credentials(cfg, current().environ)
    reached, sent = _send_to_first(
        cfg.api_endpoint,
        lambda url: send_event(
            url,
            event,
            event_id=event_id,
            timeout=cfg.request_timeout_seconds,
            clock=time.monotonic,
            credentials=credentials,
        ),
    )
    if as_json:
        outcome = {
            "endpoint": reached,
            "status_code": sent.status,
            "event_id": sent.event_id,
            "replayed": sent.replayed,
            "latency_ms": round(sent.latency * 1000, 3),
            "event": event.to_json(),
            "response": sent.body,
        }
        out.document(current().stdout, outcome)
    where = f"{reached}: {sent.status}"
    answer = classify(sent.status)
    if answer is Answer.REFUSED:
        raise Refused(f"refused by {where} {sent.error_text()}")
    if answer is Answer.TRY_AGAIN:
        what = "server error from" if sent.status >= 500 else "not stored, try again later:"
        raise ServerFailed(f"{what} {where} {sent.error_text()}")
    if not as_json:
        replayed = " (replayed: already stored)" if sent.replayed else ""
        current().print(
            visible(
                f"{sent.status} {event.event_type} -> {reached} "
                f"event_id={sent.event_id} {sent.latency * 1000:.1f} ms{replayed}"
            )
        )


def _send_to_first(urls: Sequence[str], send: Callable[[str], Sent]) -> tuple[str, Sent]:
    """Send to each of `urls` in turn (one event, one id) until one answers other than a
    5xx; the URL and answer of the last try. Unavailable when none answered at all."""
    unreachable: list[str] = []
    answer: tuple[str, Sent] | None = None
    for url in urls:
        try:
            sent = send(url)
        except Unavailable as exc:
            unreachable.append(str(exc))
            why = str(exc)
        else:
            answer = (url, sent)
            if sent.status < 500:
                break
            why = f"{sent.status} from {url}"
        if url != urls[-1]:
            typer.echo(visible(f"{why}; trying the next endpoint"), file=current().stderr)
    if answer is None:
        raise Unavailable("; ".join(unreachable))
    return answer
