"""The options commands share, and the config they load.

An option that overrides a config key takes its flag, help and default from the key's own
field in eventctl.config (`config_option`), so they are written once.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from eventctl.cli.environment import current
from eventctl.config import (
    DEFAULT_CONSUMER_CONFIG,
    DEFAULT_EVENTS_FILE,
    DEFAULT_PROPAGATOR_CONFIG,
    LOG_LEVELS,
    C,
    ConsumerConfig,
    PropagatorConfig,
    flag_name,
    load_config,
)
from eventctl.errors import EventctlError
from eventctl.propagator.templates import load_events_file
from eventctl.timefmt import parse_duration, parse_since

OUTPUTS = ("table", "json", "ndjson", "csv")
SAMPLE_EVENTS = Path(__file__).parent.parent / "sample_events.json"


def _shown_default(value: Any) -> str | None:
    """A default as help shows it; None for one that goes without saying (unset, empty)."""
    if value is None or isinstance(value, bool) or value in ("", ()):
        return None
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def config_option(
    cls: type[ConsumerConfig | PropagatorConfig], key: str, *names: str, **extra: Any
) -> Any:
    """The option that overrides config key `key`: its flag (or `names`), and help from the
    key's description and default, e.g. "TCP port to listen on (default: 8000)"."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    doc: str = f.metadata["doc"]
    shown = _shown_default(f.default)
    text = doc[0].upper() + doc[1:] + (f" (default: {shown})" if shown else "")
    return typer.Option(*(names or (flag_name(f),)), help=text, **extra)


def complete_log_levels(incomplete: str) -> list[str]:
    return [level for level in LOG_LEVELS if level.startswith(incomplete)]


def complete_outputs(incomplete: str) -> list[str]:
    return [output for output in OUTPUTS if output.startswith(incomplete)]


def complete_event_types(ctx: typer.Context, incomplete: str) -> list[str]:
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


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Consumer config file (default: {DEFAULT_CONSUMER_CONFIG}, if it exists)",
        dir_okay=False,
    ),
]
DatabaseUrlOption = Annotated[str | None, config_option(ConsumerConfig, "database_url")]
PropagatorConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Propagator config file (default: {DEFAULT_PROPAGATOR_CONFIG}, if it exists)",
        dir_okay=False,
    ),
]
EndpointOption = Annotated[
    list[str] | None, config_option(PropagatorConfig, "api_endpoint", metavar="URL")
]
EventsFileOption = Annotated[str | None, config_option(PropagatorConfig, "events_file")]
IntervalOption = Annotated[float | None, config_option(PropagatorConfig, "interval_seconds")]
SpoolOption = Annotated[str | None, config_option(PropagatorConfig, "spool_path")]
TimeoutOption = Annotated[float | None, config_option(PropagatorConfig, "request_timeout_seconds")]
CountOption = Annotated[
    int | None, typer.Option("--count", min=1, help="Stop after sending this many events.")
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed the random choice of events (reproducible).")
]
DurationOption = Annotated[
    str | None,
    typer.Option(
        "--duration", help="Stop sending after this long, e.g. 30s, 5m, 1h30m.", metavar="TIME"
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No live status or log lines; only the summary.")
]
TypesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        help="Only events of this event_type (repeatable).",
        metavar="TYPE",
        autocompletion=complete_event_types,
    ),
]

ConsumerConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--consumer-config",
        help=f"Where database_url comes from (default: {DEFAULT_CONSUMER_CONFIG})",
        dir_okay=False,
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only events received since an ISO time or an age (10m, 2h, 1d).",
        metavar="WHEN",
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until", help="Only events received before an ISO time or an age.", metavar="WHEN"
    ),
]
PayloadTextOption = Annotated[
    str | None, typer.Option("--q", help="Only events whose payload contains this text.")
]
MaxInFlightOption = Annotated[int | None, config_option(PropagatorConfig, "max_in_flight")]
RetryAttemptsOption = Annotated[int | None, config_option(PropagatorConfig, "retry_attempts")]
RetryMaxElapsedOption = Annotated[
    float | None, config_option(PropagatorConfig, "retry_max_elapsed_seconds")
]
JsonLogOption = Annotated[
    bool, typer.Option("--json-log", help="One JSON object per attempt on stdout (NDJSON).")
]


def _config(cls: type[C], default: Path, config: Path | None, overrides: dict[str, Any]) -> C:
    """`cls` from `config` (or `default`, if it exists), the Environment's variables and the
    flags given."""
    return load_config(
        cls,
        config or default,
        required=config is not None,
        environ=current().environ,
        overrides=overrides,
    )


def consumer_config(config: Path | None, **overrides: Any) -> ConsumerConfig:
    return _config(ConsumerConfig, DEFAULT_CONSUMER_CONFIG, config, overrides)


def propagator_config(config: Path | None, **overrides: Any) -> PropagatorConfig:
    return _config(PropagatorConfig, DEFAULT_PROPAGATOR_CONFIG, config, overrides)


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
    current().say(
        f"eventctl: no {DEFAULT_EVENTS_FILE} here, so sending eventctl's sample events "
        f"({SAMPLE_EVENTS}); --events-file or EVENTCTL_EVENTS_FILE names your own"
    )
    return dataclasses.replace(cfg, events_file=str(SAMPLE_EVENTS))


def duration(value: str | None, *, allow_zero: bool = False) -> float | None:
    """Seconds from a duration flag (30s, 5m, 1h30m), or a usage error."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if seconds <= 0 and not (allow_zero and seconds == 0):
        raise typer.BadParameter("must be greater than 0")
    return seconds


def when(text: str | None, flag: str) -> datetime | None:
    """The moment a --since/--until flag names (an ISO time or an age), or a usage error."""
    if text is None:
        return None
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None
