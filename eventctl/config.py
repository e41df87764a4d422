"""Configuration for both services, loaded by one rule.

Precedence, lowest first: built-in defaults < YAML file < `EVENTCTL_*` environment
variables < command-line flags. Every error names where the bad value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from eventctl.errors import ConfigError
from eventctl.timefmt import parse_duration

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


def _option(
    default: Any,
    check: Check | None,
    doc: str,
    flag: str | None = None,
    reader: KeyReader | None = None,
) -> Any:
    """A config key; `reader` reads it when it is not a scalar (see KeyReader)."""
    metadata = {"check": check, "doc": doc, "flag": flag, "reader": reader}
    return field(default=default, metadata=metadata)


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag that overrides a config key."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _route_field(default: Any, check: Check | None, doc: str) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


def _route_url(value: str) -> str | None:
    if any(c.isspace() for c in value):
        return "must be an http:// or https:// URL"
    return _http_url(value)


@dataclass(frozen=True)
class ForwardRoute:
    """One route of `serve`'s store and forward: every stored event whose type matches
    goes on to `url`, retried until delivered (config/consumer_config.yaml `forward:`)."""

    url: str = field(
        metadata={
            "check": _route_url,
            "doc": "where matching events are POSTed (a list: several share them, failing over)",
        }
    )
    """One URL, or several separated by a space (`url:` as a list in the YAML)."""
    name: str = _route_field("", None, "the route's own name (default: the url)")
    match: tuple[str, ...] = _route_field(
        (), None, "event-type globs (fnmatch, case-sensitive); none: every event"
    )
    ordered: bool = _route_field(False, None, "one event at a time, in stored order")
    signing_secret_file: str = _route_field("", None, "file of the whsec_ secret to sign with")
    auth_token_file: str = _route_field("", None, "file of the bearer token to send")
    timeout_seconds: float = _route_field(5.0, _positive, "seconds one delivery may take in all")
    max_in_flight: int = _route_field(32, _positive, "most deliveries in flight at once")
    retry_base_seconds: float = _route_field(
        0.2, _positive, "first retry delay in seconds, doubled each time"
    )
    retry_max_seconds: float = _route_field(60.0, _positive, "longest retry delay in seconds")
    retry_max_elapsed_seconds: float = _route_field(
        86_400.0, _positive, "seconds an event is retried for, from its first attempt"
    )
    breaker_failures: int = _route_field(
        5, _positive, "failures in a row that open the circuit breaker"
    )
    breaker_cooldown_seconds: float = _route_field(
        5.0, _positive, "seconds the breaker stays open before a trial delivery"
    )
    breaker_max_cooldown_seconds: float = _route_field(
        60.0, _positive, "longest the breaker stays open, as failed trials lengthen it"
    )

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.url)

    def matches(self, event_type: str) -> bool:
        return not self.match or any(fnmatchcase(event_type, glob) for glob in self.match)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self.url.split())


@dataclass(frozen=True)
class KeyReader:
    """How a key is read: from its YAML value, its environment variable's text and its
    flag's value, each given with where it came from; a bad value raises ConfigError naming
    that. Scalar keys have one by their type (`_scalar`), others their own (`forward`)."""

    from_yaml: Callable[[Any, str], Any]
    from_text: Callable[[str, str], Any]
    from_flag: Callable[[Any, str], Any]


_ROUTE_FIELDS = {f.name: f for f in dataclasses.fields(ForwardRoute)}


def _routes_from_yaml(value: Any, where: str) -> tuple[ForwardRoute, ...]:
    """`forward:`: a list of URLs and route mappings; no value at all is no routes."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list, not {value!r}")
    routes = tuple(_route(item, f"{where}[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(
                f"{where}[{i}]: the name {route.name!r} is used twice; give each route its own name"
            )
        seen.add(route.name)
    return routes


def _route(item: Any, where: str) -> ForwardRoute:
    """One item of `forward:`: a URL, or a mapping of ForwardRoute's fields with a url."""
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a URL or a mapping with a url, not {item!r}")
    for key in item:
        if key not in _ROUTE_FIELDS:
            raise _unknown_key(where, key, _ROUTE_FIELDS)
    if "url" not in item:
        raise ConfigError(f"{where}: has no url; every route needs one")
    if isinstance(item["url"], list) and not item.get("name"):
        raise ConfigError(
            f"{where}: a route of several URLs needs a name (its outbox entries and state "
            "go by it, so adding a URL later keeps them)"
        )
    return ForwardRoute(
        **{key: _route_value(key, value, f"{where}.{key}") for key, value in item.items()}
    )


def _route_value(key: str, value: Any, where: str) -> Any:
    if key == "match":
        return _globs(value, where)
    if key == "url" and isinstance(value, list):
        if not all(isinstance(url, str) for url in value):
            raise ConfigError(f"{where}: must be a URL or a list of URLs, not {value!r}")
        return " ".join(_endpoint_urls(value, where))
    f = _ROUTE_FIELDS[key]
    kind = _field_type(f)
    if value is None:  # `ordered:` with nothing after it is not false
        raise ConfigError(f"{where}: must be {_TYPE_NAMES[kind]}, not None")
    coerced = _scalar(kind).from_yaml(value, where)
    _check(f, coerced, where)
    return coerced


def _globs(value: Any, where: str, unmatched: str = "to forward every event") -> tuple[str, ...]:
    """`match:`: a list of event-type globs, or one glob; `unmatched` says what leaving it
    out does."""
    globs = [value] if isinstance(value, str) else value
    if not isinstance(globs, list) or not all(isinstance(glob, str) for glob in globs):
        raise ConfigError(f"{where}: must be a list of strings, not {value!r}")
    if not globs:
        raise ConfigError(f"{where}: must hold at least one glob; leave match out {unmatched}")
    for i, glob in enumerate(globs):
        if not glob.strip():
            at = where if isinstance(value, str) else f"{where}[{i}]"
            raise ConfigError(f"{at}: must be a non-empty glob, not {glob!r}")
    return tuple(globs)


def _routes_from_text(text: str, where: str) -> tuple[ForwardRoute, ...]:
    """`EVENTCTL_FORWARD`: URLs separated by whitespace; an empty value is no routes."""
    return _url_routes(text.split(), where)


def _routes_from_flag(value: Any, where: str) -> tuple[ForwardRoute, ...]:
    """`--forward-to URL`, repeated: a list of URLs; an empty one (`--forward-to ''`) adds
    no route, so that it alone turns the routes of the file and the environment off."""
    if isinstance(value, str) or not all(isinstance(url, str) for url in value):
        raise ConfigError(f"{where}: must be a list of URLs, not {value!r}")
    return _url_routes([url.strip() for url in value if url.strip()], where)


def _url_routes(urls: list[str], where: str) -> tuple[ForwardRoute, ...]:
    """A route with the defaults for each of `urls`."""
    for i, url in enumerate(urls):
        if problem := _route_url(url):
            raise ConfigError(f"{where}: {problem}, not {url!r}")
        if url in urls[:i]:
            raise ConfigError(f"{where}: {url!r} is given twice; give each URL once")
    return tuple(ForwardRoute(url) for url in urls)


ROUTES = KeyReader(_routes_from_yaml, _routes_from_text, _routes_from_flag)


MAX_ENDPOINTS = 64
"""Most URLs in `api_endpoint` (and its flag and variable)."""


def _endpoints(value: Any, where: str) -> tuple[str, ...]:
    """`api_endpoint:` and `--endpoint` (repeated): one URL, or a list of them that share
    the events."""
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list | tuple) or not all(isinstance(url, str) for url in urls):
        raise ConfigError(f"{where}: must be a URL or a list of URLs, not {value!r}")
    return _endpoint_urls([url.strip() for url in urls], where)


def _endpoints_from_text(text: str, where: str) -> tuple[str, ...]:
    """`EVENTCTL_API_ENDPOINT`: URLs separated by whitespace."""
    return _endpoint_urls(text.split(), where)


def _endpoint_urls(urls: list[str], where: str) -> tuple[str, ...]:
    if not urls:
        raise ConfigError(f"{where}: must name at least one http:// or https:// URL")
    if len(urls) > MAX_ENDPOINTS:
        raise ConfigError(f"{where}: names {len(urls)} URLs; at most {MAX_ENDPOINTS} are allowed")
    for i, url in enumerate(urls):
        if problem := _route_url(url):
            raise ConfigError(f"{where}: {problem}, not {url!r}")
        if url in urls[:i]:
            raise ConfigError(f"{where}: {url!r} is given twice; give each URL once")
    return tuple(urls)


ENDPOINTS = KeyReader(_endpoints, _endpoints_from_text, _endpoints)


MAX_RESPONSE_RULES = 100
"""Most rules in `responses:`."""
MAX_RESPONSE_LATENCY_SECONDS = 60.0
"""Longest latency a response rule may add (the high end of a range)."""
MAX_RETRY_AFTER_SECONDS = 86_400.0
"""Largest `retry_after` of a response rule: a day."""
MAX_RESPONSE_BODY_BYTES = 65_536
"""Largest `body` of a response rule, as compact JSON (UTF-8)."""


@dataclass(frozen=True)
class ResponseRule:
    """One rule of `responses:` (config/consumer_config.yaml): the ingest requests whose
    event type matches wait `latency` (seconds, uniform in the range), then with
    `probability` are answered `status` (with `Retry-After` and `body` if set) and stored
    not at all. A rule without a status only waits; one with neither answers as usual,
    which exempts its types from the rules after it."""

    match: tuple[str, ...] = ()
    status: int | None = None
    probability: float = 1.0
    latency: tuple[float, float] = (0.0, 0.0)
    retry_after: float | None = None
    body: str | None = None
    """The answer's body as JSON text; None: the consumer's own problem body."""

    def matches(self, event_type: str) -> bool:
        return not self.match or any(fnmatchcase(event_type, glob) for glob in self.match)


_RULE_KEYS = ("match", "status", "probability", "latency", "retry_after", "body")
_NEEDS_STATUS = ("probability", "retry_after", "body")


def _rules_from_yaml(value: Any, where: str) -> tuple[ResponseRule, ...]:
    """`responses:`: a list of rule mappings, the first that matches answering; no value at
    all is no rules."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list, not {value!r}")
    if len(value) > MAX_RESPONSE_RULES:
        raise ConfigError(
            f"{where}: holds {len(value)} rules; at most {MAX_RESPONSE_RULES} are allowed"
        )
    return tuple(_rule(item, f"{where}[{i}]") for i, item in enumerate(value))


def _rules_from_text(text: str, where: str) -> tuple[ResponseRule, ...]:
    """`EVENTCTL_RESPONSES` and `--responses`: the same list as YAML or JSON text; an empty
    value is no rules."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML or JSON: {problem}") from None
    return _rules_from_yaml(value, where)


def _rule(item: Any, where: str) -> ResponseRule:
    """One item of `responses:`: a mapping of _RULE_KEYS."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping of {', '.join(_RULE_KEYS)}, not {item!r}")
    for key in item:
        if key not in _RULE_KEYS:
            raise _unknown_key(where, key, _RULE_KEYS)
    for key in _NEEDS_STATUS:
        if key in item and "status" not in item:
            raise ConfigError(
                f"{where}.{key}: applies to a status only; give the rule a status (400-599)"
            )
    readers: dict[str, Callable[[Any, str], Any]] = {
        "match": lambda value, at: _globs(value, at, "to match every event type"),
        "status": _status,
        "probability": _probability,
        "latency": _latency,
        "retry_after": _retry_after,
        "body": _body,
    }
    values: dict[str, Any] = {
        key: readers[key](value, f"{where}.{key}") for key, value in item.items()
    }
    return ResponseRule(**values)


def _status(value: Any, where: str) -> int:
    status: int = _scalar(int).from_yaml(value, where)
    if problem := _error_status(status):
        raise ConfigError(f"{where}: {problem}, not {status!r}")
    return status


def _probability(value: Any, where: str) -> float:
    probability: float = _scalar(float).from_yaml(value, where)
    if problem := _fraction(probability):
        raise ConfigError(f"{where}: {problem}, not {probability!r}")
    return probability


_LATENCY_FORMS = "a duration (50ms, 0.05) or a range (50ms-200ms, [0.05, 0.2])"


def _seconds(value: Any, where: str) -> float:
    """A number of seconds or a duration text (`50ms`), at least 0."""
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ConfigError(f"{where}: must be {_LATENCY_FORMS}, not {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{where}: must be {_LATENCY_FORMS}, not {value!r}")
    if problem := _non_negative(seconds):
        raise ConfigError(f"{where}: {problem}, not {value!r}")
    return seconds


def _latency(value: Any, where: str) -> tuple[float, float]:
    """`latency:`: fixed (`50ms`, `0.05`) or a range (`50ms-200ms`, `[0.05, 0.2]`)."""
    if isinstance(value, str) and "-" in value:
        value = value.split("-")
    if isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: must be {_LATENCY_FORMS}, not {value!r}")
        low, high = (_seconds(end, where) for end in value)
    else:
        low = high = _seconds(value, where)
    if low > high:
        raise ConfigError(f"{where}: the range must run from low to high, not {low:g}-{high:g} s")
    if high > MAX_RESPONSE_LATENCY_SECONDS:
        raise ConfigError(
            f"{where}: must be at most {MAX_RESPONSE_LATENCY_SECONDS:g} seconds, not {high:g}"
        )
    return (low, high)


def _retry_after(value: Any, where: str) -> float:
    seconds: float = _scalar(float).from_yaml(value, where)
    if problem := _non_negative(seconds):
        raise ConfigError(f"{where}: {problem}, not {value!r}")
    if seconds > MAX_RETRY_AFTER_SECONDS:
        raise ConfigError(
            f"{where}: must be at most {MAX_RETRY_AFTER_SECONDS:g} seconds, not {value!r}"
        )
    return seconds


def _body(value: Any, where: str) -> str:
    """`body:`: any JSON value, kept as compact JSON text."""
    if value is None:
        raise ConfigError(f"{where}: is empty; leave body out for the consumer's own error body")
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be a JSON value, not {value!r}") from None
    size = len(text.encode())
    if size > MAX_RESPONSE_BODY_BYTES:
        raise ConfigError(
            f"{where}: must be at most {MAX_RESPONSE_BODY_BYTES} bytes as JSON, not {size}"
        )
    return text


RESPONSES = KeyReader(_rules_from_yaml, _rules_from_text, _rules_from_text)


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
    forward: tuple[ForwardRoute, ...] = _option(
        (),
        None,
        "forward stored events to this URL (repeatable; replaces the routes of the config "
        "file and EVENTCTL_FORWARD)",
        "--forward-to",
        ROUTES,
    )
    responses: tuple[ResponseRule, ...] = _option(
        (),
        None,
        "response rules by event type, as YAML or JSON text (replaces the config file's and "
        "EVENTCTL_RESPONSES; '' for none)",
        None,
        RESPONSES,
    )

    def to_json(self) -> str:
        """This config as JSON, for `serve --workers N` to hand its processes (from_json)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ConsumerConfig:
        """The config to_json wrote, routes rebuilt as ForwardRoutes and response rules as
        ResponseRules, lists as tuples."""
        data = json.loads(text)
        routes = tuple(
            ForwardRoute(**{**route, "match": tuple(route["match"])})
            for route in data.pop("forward", ())
        )
        rules = tuple(
            ResponseRule(
                **{**rule, "match": tuple(rule["match"]), "latency": tuple(rule["latency"])}
            )
            for rule in data.pop("responses", ())
        )
        return cls(**data, forward=routes, responses=rules)


def metrics_enabled(config: ConsumerConfig) -> bool:
    """`metrics` as set, or (unset) on exactly when the server listens on loopback only."""
    if config.metrics is not None:
        return config.metrics
    return config.host in ("localhost", "::1") or config.host.startswith("127.")


@dataclass(frozen=True)
class PropagatorConfig:
    """Settings of `eventctl propagate` (config/propagator_config.yaml)."""

    interval_seconds: float = _option(5.0, _positive, "seconds between two events", "--interval")
    api_endpoint: tuple[str, ...] = _option(
        ("http://localhost:8000/event",),
        None,
        "where events are sent (repeatable: several share the events, failing over)",
        "--endpoint",
        ENDPOINTS,
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

    @property
    def endpoints_text(self) -> str:
        """The endpoints as one line, as the spool's runs and the status show them."""
        return " ".join(self.api_endpoint)


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
    readers = {name: f.metadata["reader"] or _scalar(_field_type(f)) for name, f in fields.items()}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if required or path.exists():
        for key, value in _read_yaml(path).items():
            if key not in fields:
                raise _unknown_key(str(path), key, fields)
            sources[key] = f"{path}: {key}"
            values[key] = readers[key].from_yaml(value, sources[key])

    for key, reader in readers.items():
        var = ENV_PREFIX + key.upper()
        if var in environ:
            sources[key] = var
            values[key] = reader.from_text(environ[var], var)

    for key, value in (overrides or {}).items():
        if value is not None:
            sources[key] = flag_name(fields[key])
            values[key] = readers[key].from_flag(value, sources[key])

    for key, value in values.items():
        _check(fields[key], value, sources[key])
    return cls(**values)


def _scalar(kind: type) -> KeyReader:
    """The reader of a key of type `kind`: strict in YAML and flags (bool is never a number,
    an int is a float), words and numbers in the environment."""

    def coerce(value: Any, where: str) -> Any:
        try:
            return _coerce(kind, value)
        except ValueError:
            raise ConfigError(f"{where}: must be {_TYPE_NAMES[kind]}, not {value!r}") from None

    def from_text(text: str, where: str) -> Any:
        try:
            return _from_text(kind, text)
        except ValueError:
            raise ConfigError(f"{where}: must be {_TYPE_NAMES[kind]}, not {text!r}") from None

    return KeyReader(coerce, from_text, coerce)


def _check(f: dataclasses.Field[Any], value: Any, where: str) -> None:
    """ConfigError if `value` fails the check of field `f`."""
    check: Check | None = f.metadata["check"]
    if check and (problem := check(value)):
        raise ConfigError(f"{where}: {problem}, not {value!r}")


def _unknown_key(where: str, key: Any, known: Iterable[str]) -> ConfigError:
    """The error of a key not in `known`, with the closest known one if any is close."""
    known = list(known)
    hint = difflib.get_close_matches(str(key), known, n=1)
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    return ConfigError(f"{where}: unknown key {key!r}{suggestion}; known keys: {', '.join(known)}")


def _field_type(f: dataclasses.Field[Any]) -> type:
    """The scalar type of a field (an optional bool is a bool that may be unset)."""
    return {"int": int, "float": float, "str": str, "bool": bool, "bool | None": bool}[str(f.type)]


def describe(cls: type[ConsumerConfig | PropagatorConfig]) -> list[tuple[str, str, str, Any]]:
    """(key, environment variable, flag, default) for every key of a config class."""
    return [
        (f.name, ENV_PREFIX + f.name.upper(), flag_name(f), f.default)
        for f in dataclasses.fields(cls)
    ]
