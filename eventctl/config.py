"""Configuration for both services, loaded by one rule.

Precedence, lowest first: built-in defaults < YAML file < `EVENTCTL_*` environment
variables < command-line flags. Every error names where the bad value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from eventctl.errors import ConfigError

DEFAULT_CONSUMER_CONFIG = Path("config/consumer_config.yaml")
DEFAULT_PROPAGATOR_CONFIG = Path("config/propagator_config.yaml")
ENV_PREFIX = "EVENTCTL_"
DEFAULT_EVENTS_FILE = "events/events.json"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

Check = Callable[[Any], str | None]


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be between 0 and 65535"


def _positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else "must be a number greater than 0"


def _non_negative(value: float) -> str | None:
    return None if 0 <= value < math.inf else "must be a number of at least 0"


def _fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _error_status(value: int) -> str | None:
    return None if 400 <= value <= 599 else "must be an HTTP error status (400-599)"


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return "must be an http:// or https:// URL"


def _database_url(value: str) -> str | None:
    scheme = urlsplit(value).scheme
    if scheme in ("sqlite", "postgres", "postgresql"):
        return None
    return "must start with sqlite:/// or postgresql://"


def _log_level(value: str) -> str | None:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _option(default: Any, check: Check | None, doc: str, flag: str | None = None) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc, "flag": flag})


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag that overrides a config key."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


@dataclass(frozen=True)
class ConsumerConfig:
    """Settings of `eventctl serve` (config/consumer_config.yaml)."""

    port: int = _option(8000, _port, "TCP port to listen on")
    database_url: str = _option("sqlite:///events.db", _database_url, "where events are stored")
    host: str = _option("127.0.0.1", None, "address to listen on")
    max_body_bytes: int = _option(1_048_576, _positive, "largest request body accepted")
    log_level: str = _option("warning", _log_level, "server log level: " + ", ".join(LOG_LEVELS))
    max_batch: int = _option(1000, _positive, "most events in one POST /events")
    commit_max_events: int = _option(1000, _positive, "most events in one commit")
    commit_max_wait_ms: float = _option(
        0.0, _non_negative, "milliseconds to wait for more events before a commit"
    )
    max_queued_events: int = _option(10_000, _positive, "events waiting for a commit before 503")
    workers: int = _option(1, _positive, "worker processes")
    fail_rate: float = _option(0.0, _fraction, "fault drill: share of ingest requests refused")
    fail_status: int = _option(503, _error_status, "fault drill: status of a refused request")
    latency_seconds: float = _option(
        0.0, _non_negative, "fault drill: delay of every ingest request, e.g. 50ms", "--latency"
    )
    metrics: bool | None = _option(None, None, "serve /metrics (default: when bound to loopback)")
    webhook_secrets_file: str = _option("", None, "file of whsec_ secrets to verify signatures")
    webhook_tolerance_seconds: float = _option(300.0, _positive, "accepted webhook-timestamp skew")
    auth_token_file: str = _option("", None, "file holding the bearer token to require")
    max_header_bytes: int = _option(
        16_384, _positive, "largest request line plus headers; more is 431"
    )
    max_headers: int = _option(100, _positive, "most header fields in one request; more is 431")
    header_timeout_seconds: float = _option(
        10.0, _positive, "seconds to send a complete request head", "--header-timeout"
    )
    body_timeout_seconds: float = _option(
        30.0, _positive, "seconds to send a request body; slower is 408", "--body-timeout"
    )
    keep_alive_seconds: float = _option(
        5.0, _positive, "seconds an idle connection stays open", "--keep-alive"
    )
    max_connections: int = _option(
        1000, _positive, "open connections per worker; more are refused with 503"
    )
    allowed_hosts: str = _option(
        "", None, "comma-separated Host names accepted besides loopback ones"
    )


@dataclass(frozen=True)
class ForwardRoute:
    """One route of `serve`'s store and forward: every stored event whose type matches
    goes on to `url`, retried until delivered (config/consumer_config.yaml `forward:`)."""

    url: str
    name: str = ""  # the URL when not given
    match: tuple[str, ...] = ()  # event-type globs (fnmatch, case-sensitive); () matches all
    ordered: bool = False  # one at a time, in stored order
    signing_secret_file: str = ""
    auth_token_file: str = ""
    timeout_seconds: float = 5.0
    max_in_flight: int = 32
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 60.0
    retry_max_elapsed_seconds: float = 86_400.0
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 5.0
    breaker_max_cooldown_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.url)

    def matches(self, event_type: str) -> bool:
        return not self.match or any(fnmatchcase(event_type, glob) for glob in self.match)


def metrics_enabled(config: ConsumerConfig) -> bool:
    """`metrics` as set, or (unset) on exactly when the server listens on loopback only."""
    if config.metrics is not None:
        return config.metrics
    return config.host in ("localhost", "::1") or config.host.startswith("127.")


@dataclass(frozen=True)
class PropagatorConfig:
    """Settings of `eventctl propagate` (config/propagator_config.yaml)."""

    interval_seconds: float = _option(5.0, _positive, "seconds between two events", "--interval")
    api_endpoint: str = _option(
        "http://localhost:8000/event", _http_url, "where events are sent", "--endpoint"
    )
    events_file: str = _option(DEFAULT_EVENTS_FILE, None, "JSON list of events to choose from")
    max_in_flight: int = _option(100, _positive, "most events unsettled at once")
    retry_attempts: int = _option(100, _positive, "attempts per event before it fails")
    retry_base_seconds: float = _option(
        0.2, _positive, "first retry delay in seconds, doubled each time"
    )
    retry_max_seconds: float = _option(10.0, _positive, "longest retry delay in seconds")
    retry_max_elapsed_seconds: float = _option(
        120.0, _positive, "seconds an event is retried for, from its first attempt"
    )
    request_timeout_seconds: float = _option(
        5.0, _positive, "seconds to wait for one answer", "--timeout"
    )
    spool_path: str = _option(
        ".eventctl/spool.db", None, "the record of generated events", "--spool"
    )
    spool_max_pending: int = _option(10_000, _positive, "pending events before generation pauses")
    signing_secret_file: str = _option("", None, "file holding the whsec_ secret to sign with")
    auth_token_file: str = _option("", None, "file holding the bearer token to send")


C = TypeVar("C", ConsumerConfig, PropagatorConfig)

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _coerce(kind: type, value: Any) -> Any:
    """Return `value` as `kind`, or raise ValueError. bool is never a number."""
    if kind is bool:
        if value is None or isinstance(value, bool):
            return value
        raise ValueError
    if isinstance(value, bool):
        raise ValueError
    if kind is float and isinstance(value, int | float):
        return float(value)
    if isinstance(value, kind):
        return value
    raise ValueError


def _from_text(kind: type, text: str) -> Any:
    if kind is bool:
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError
    return kind(text.strip()) if kind in (int, float) else text


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    return data


def load_config(
    cls: type[C],
    path: Path,
    *,
    required: bool,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build a config of type `cls` from defaults, the YAML file, the environment and flags.

    `required=False` lets a missing file stand for an empty one (the default path);
    a file the user named must exist. `overrides` maps keys to flag values; None means
    the flag was not given. Raises ConfigError naming the file, variable or flag.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds: dict[str, type] = {name: _field_type(f) for name, f in fields.items()}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if required or path.exists():
        for key, value in _read_yaml(path).items():
            where = f"{path}: {key}"
            if key not in fields:
                hint = difflib.get_close_matches(str(key), fields, n=1)
                suggestion = f" (did you mean {hint[0]}?)" if hint else ""
                raise ConfigError(
                    f"{path}: unknown key {key!r}{suggestion}; known keys: {', '.join(fields)}"
                )
            try:
                values[key] = _coerce(kinds[key], value)
            except ValueError:
                raise ConfigError(
                    f"{where}: must be {_TYPE_NAMES[kinds[key]]}, not {value!r}"
                ) from None
            sources[key] = where

    for key, kind in kinds.items():
        var = ENV_PREFIX + key.upper()
        if var in environ:
            try:
                values[key] = _from_text(kind, environ[var])
            except ValueError:
                raise ConfigError(
                    f"{var}: must be {_TYPE_NAMES[kind]}, not {environ[var]!r}"
                ) from None
            sources[key] = var

    for key, value in (overrides or {}).items():
        if value is not None:
            sources[key] = flag_name(fields[key])
            try:
                values[key] = _coerce(kinds[key], value)
            except ValueError:
                raise ConfigError(
                    f"{sources[key]}: must be {_TYPE_NAMES[kinds[key]]}, not {value!r}"
                ) from None

    for key, value in values.items():
        check: Check | None = fields[key].metadata["check"]
        if check and (problem := check(value)):
            raise ConfigError(f"{sources[key]}: {problem}, not {value!r}")
    return cls(**values)


def _field_type(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "str": str, "bool | None": bool}[str(f.type)]


def describe(cls: type[ConsumerConfig | PropagatorConfig]) -> list[tuple[str, str, str, Any]]:
    """(key, environment variable, flag, default) for every key of a config class."""
    return [
        (f.name, ENV_PREFIX + f.name.upper(), flag_name(f), f.default)
        for f in dataclasses.fields(cls)
    ]
