"""The consumer's OpenAPI 3.1 document, built from the app it describes.

`document()` walks the app's real routes: a route without a description here is an error, so
the document cannot miss an endpoint, and it only lists what this server answers (`/metrics`
when metrics are on, 401s when credentials are required, the drill's status when a drill is
on, the response rules' statuses and bodies when the config has rules). Each operation
names the problems it can answer, and their statuses, codes, headers and descriptions come
from the catalog (problems.py, and responses.py for the rules'); limits and patterns come from the
modules that enforce them (rules.py, events.py, timefmt.py, the config). So the document
restates no rule; tests/consumer/test_openapi.py runs schemathesis against the live app to
prove the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from eventctl import __version__
from eventctl.auth import Credentials
from eventctl.config import ConsumerConfig
from eventctl.consumer import problems
from eventctl.consumer.httpserver import REFUSALS
from eventctl.consumer.problems import Problem
from eventctl.consumer.responses import answered_statuses, custom_bodies
from eventctl.consumer.rules import (
    CURSOR_PATTERN,
    DEFAULT_PAGE,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_PAGE,
    MAX_ROW_ID,
    ROW_ID_HEADER_PATTERN,
    SummaryLimits,
)
from eventctl.events import EVENT_TYPE_PATTERN, MAX_EVENT_TYPE_LENGTH, NO_NUL_PATTERN
from eventctl.outbox import ACTIVE, DISABLED, PAUSED
from eventctl.timefmt import DURATION_PATTERN

JSON = "application/json"
Schema = dict[str, Any]

EVENT: Schema = {
    "type": "object",
    "description": "One event: exactly these two strings.",
    "required": ["event_type", "event_payload"],
    "properties": {
        "event_type": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_EVENT_TYPE_LENGTH,
            "pattern": EVENT_TYPE_PATTERN,
            "examples": ["order.created"],
        },
        "event_payload": {
            "type": "string",
            "pattern": NO_NUL_PATTERN,
            "examples": ['{"order_id": 5531}'],
        },
    },
    "additionalProperties": False,
}

STORED_EVENT: Schema = {
    "type": "object",
    "required": ["id", "event_id", "event_type", "event_payload", "received_at"],
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "row id; orders the stream"},
        "event_id": {"type": "string", "description": "the Idempotency-Key, or a UUIDv7"},
        "event_type": {"type": "string"},
        "event_payload": {"type": "string"},
        "received_at": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
}


def _error(codes: Iterable[str]) -> Schema:
    return {
        "type": "object",
        "required": ["status", "code", "message", "errors"],
        "properties": {
            "status": {"const": "error"},
            "code": {"enum": sorted(set(codes))},
            "message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": ["string", "null"]},
                        "message": {"type": "string"},
                        "index": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    }


def _header_schema(description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, "schema": schema or {"type": "string"}}


RETRY_AFTER = _header_schema(
    "seconds to wait before retrying", {"type": "string", "pattern": r"^\d+$"}
)


def _problem_headers(problem: Problem) -> dict[str, Schema]:
    headers = {name: _header_schema(value) for name, value in problem.headers}
    if problem.retry_after:
        headers["Retry-After"] = RETRY_AFTER
    return headers


def responses(ok: Schema, answered: Iterable[Problem]) -> dict[str, Any]:
    """An operation's responses: `ok` as 200, and the `answered` problems grouped by status,
    each status with its codes, their descriptions and their headers."""
    by_status: dict[int, dict[str, Problem]] = {}
    for problem in answered:
        by_status.setdefault(problem.status, {})[problem.code] = problem
    out: dict[str, Any] = {"200": ok}
    for status in sorted(by_status):
        found = [by_status[status][code] for code in sorted(by_status[status])]
        answer: dict[str, Any] = {
            "description": "; ".join(f"{p.code}: {p.description}" for p in found),
            "content": {JSON: {"schema": _error(p.code for p in found)}},
        }
        headers = {name: h for p in found for name, h in _problem_headers(p).items()}
        if headers:
            answer["headers"] = headers
        out[str(status)] = answer
    return out


def _json_ok(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    ok: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        ok["headers"] = headers
    return ok


def _text_ok(description: str, media_type: str) -> Schema:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _query(name: str, description: str, schema: Schema, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


TYPE_FILTER = _query(
    "type",
    "only these event types (repeat the parameter for several)",
    {"type": "array", "items": {"type": "string", "pattern": NO_NUL_PATTERN}},
    style="form",
    explode=True,
)


def _time(name: str, meaning: str) -> Schema:
    return _query(
        name,
        f"{meaning}: an ISO-8601 time (UTC when it has no offset) or an age such as 30s, "
        "10m, 2h, 1d",
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        },
    )


LIST_PARAMETERS: list[Schema] = [
    TYPE_FILTER,
    _time("since", "received at or after"),
    _time("until", "received before"),
    _query("q", "the payload contains this text", {"type": "string", "pattern": NO_NUL_PATTERN}),
    _query(
        "limit",
        f"events per page (default {DEFAULT_PAGE})",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    ),
    _query(
        "cursor",
        "the next_cursor of the previous page (pass it back as it is)",
        {"type": "string", "pattern": CURSOR_PATTERN},
    ),
]


SUMMARY_PARAMETERS: list[Schema] = [
    _query(
        "window",
        f"seconds of the series, ending now (default {SummaryLimits.window}; rounded up to "
        "whole buckets)",
        {"type": "integer", "minimum": 1, "maximum": SummaryLimits.max_window},
    ),
    _query(
        "bucket",
        f"seconds per bucket of the series (default {SummaryLimits.bucket})",
        {"type": "integer", "minimum": 1, "maximum": SummaryLimits.max_bucket},
    ),
    _query(
        "top",
        f"list at most this many event types, most frequent first (default {SummaryLimits.top})",
        {"type": "integer", "minimum": 1, "maximum": SummaryLimits.max_top},
    ),
]

SUMMARY: Schema = {
    "type": "object",
    "required": ["total", "last_id", "type_count", "types", "now", "series"],
    "properties": {
        "total": {"type": "integer", "minimum": 0, "description": "every stored event"},
        "last_id": {
            "type": "integer",
            "minimum": 0,
            "description": "the highest row id counted (0 when empty): stream with after=last_id",
        },
        "type_count": {"type": "integer", "minimum": 0, "description": "distinct event types"},
        "types": {
            "type": "array",
            "maxItems": SummaryLimits.max_top,
            "items": {
                "type": "object",
                "required": ["event_type", "count"],
                "properties": {
                    "event_type": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
        },
        "now": {
            "type": "string",
            "format": "date-time",
            "description": "the server's clock when it answered (to the microsecond), so that a "
            "client can place new events in the series without trusting its own clock",
        },
        "series": {
            "type": "object",
            "required": ["start", "bucket_seconds", "counts"],
            "properties": {
                "start": {
                    "type": "string",
                    "format": "date-time",
                    "description": "the first bucket's start (a multiple of bucket_seconds)",
                },
                "bucket_seconds": {"type": "integer", "minimum": 1},
                "counts": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0},
                    "minItems": 1,
                    "maxItems": SummaryLimits.max_window,
                    "description": "events received in each bucket, oldest first; the last "
                    "bucket holds now",
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


ROUTE_STATUS: Schema = {
    "type": "object",
    "description": "one forwarding route of store and forward, as `eventctl routes --json`",
    "required": [
        "name",
        "url",
        "state",
        "reason",
        "queued",
        "failed",
        "delivered",
        "lag_seconds",
        "oldest_queued_at",
        "next_attempt_at",
    ],
    "properties": {
        "name": {"type": "string", "description": "the route's name (its url unless named)"},
        "url": {"type": "string", "description": "where its events are POSTed"},
        "state": {
            "enum": [ACTIVE, PAUSED, DISABLED],
            "description": "paused: its circuit breaker is open; disabled: the receiver "
            "answered 410 (`eventctl routes enable` resumes it)",
        },
        "reason": {"type": "string", "description": "why it is paused or disabled; else empty"},
        "queued": {"type": "integer", "minimum": 0, "description": "events waiting to go"},
        "failed": {
            "type": "integer",
            "minimum": 0,
            "description": "events refused for good, kept until `eventctl routes retry`",
        },
        "delivered": {"type": "integer", "minimum": 0, "description": "by every worker"},
        "lag_seconds": {
            "type": "number",
            "minimum": 0,
            "description": "the age of the oldest queued event (0 when none is queued)",
        },
        "oldest_queued_at": {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
            "description": "when the oldest queued event was received",
        },
        "next_attempt_at": {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
            "description": "the route waits until then (Retry-After, the breaker's pause)",
        },
    },
    "additionalProperties": False,
}


READ_PROBLEMS = (problems.INVALID_PARAMETER, problems.DATABASE_UNAVAILABLE)
"""What a read endpoint can answer: a bad parameter, a database that fails."""


class Spec:
    """What the document says of one server: its config and credentials decide the details."""

    def __init__(
        self, config: ConsumerConfig, credentials: Credentials, *, checks_host: bool
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.checks_host = checks_host

    def _responses(self, ok: Schema, *answered: Problem) -> dict[str, Any]:
        """The responses of an operation that answers `ok` or one of the `answered` problems,
        or one of those any request can get: the HTTP layer's (httpserver.py) and the Host
        check's."""
        anywhere = [*REFUSALS, *([problems.MISDIRECTED_REQUEST] if self.checks_host else [])]
        return responses(ok, [*anywhere, *answered])

    def _ingest(self, ok: Schema, body: Schema, summary: str, batch: bool) -> dict[str, Any]:
        answered = [
            problems.MALFORMED_JSON,
            problems.INVALID_HEADER,
            problems.PAYLOAD_TOO_LARGE,
            problems.UNSUPPORTED_MEDIA_TYPE,
            problems.INVALID_EVENT,
            problems.IDEMPOTENCY_KEY_REUSED,
            problems.OVERLOADED,
            problems.DATABASE_UNAVAILABLE,
        ]
        if batch:
            answered.append(problems.INVALID_BATCH)
        if self.config.fail_rate > 0:
            answered.append(problems.INJECTED_FAULT.at(self.config.fail_status))
        answered.extend(answered_statuses(self.config.responses))
        parameters: list[Schema] = [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "the event's id; a request with a stored key stores nothing "
                "and answers 200 with Idempotent-Replayed: true",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        ]
        operation: dict[str, Any] = {"summary": summary, "parameters": parameters}
        if self.credentials.token:
            answered.append(problems.UNAUTHORIZED)
            operation["security"] = [{"bearer": []}]
        if self.credentials.keys:
            answered.append(problems.INVALID_SIGNATURE)
            for name, meaning in (
                ("webhook-id", "the message id (the event id unless Idempotency-Key is sent)"),
                ("webhook-timestamp", "Unix seconds, within the tolerance of the server's clock"),
                ("webhook-signature", "space-separated v1,<base64 HMAC-SHA256> signatures"),
            ):
                parameters.append(
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "description": meaning,
                        "schema": {"type": "string"},
                    }
                )
        operation["requestBody"] = {
            "required": True,
            "description": f"at most {self.config.max_body_bytes} bytes",
            "content": {JSON: {"schema": body}},
        }
        operation["responses"] = self._responses(ok, *answered)
        for status, bodies in custom_bodies(self.config.responses).items():
            # a rule's own body is answered as written, in place of the error shape
            content = operation["responses"][str(status)]["content"][JSON]
            content["schema"] = {"anyOf": [content["schema"], *({"const": b} for b in bodies)]}
        return operation

    def post_event(self) -> dict[str, Any]:
        ok = _json_ok(
            "stored and committed (or already stored under this Idempotency-Key)",
            {"const": {"status": "success"}},
            {
                "Event-Id": _header_schema("the stored event's id"),
                "Idempotent-Replayed": _header_schema(
                    "present when the key was already stored", {"const": "true"}
                ),
            },
        )
        return self._ingest(ok, EVENT, "Store one event", batch=False)

    def post_events(self) -> dict[str, Any]:
        ok = _json_ok(
            "every event stored in one transaction",
            {
                "type": "object",
                "required": ["status", "count"],
                "properties": {
                    "status": {"const": "success"},
                    "count": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
            {
                "Events-Stored": _header_schema(
                    "how many events were new", {"type": "string", "pattern": r"^\d+$"}
                ),
                "Idempotent-Replayed": _header_schema(
                    "present when none was new", {"const": "true"}
                ),
            },
        )
        body = {
            "type": "array",
            "items": EVENT,
            "minItems": 1,
            "maxItems": self.config.max_batch,
        }
        return self._ingest(ok, body, "Store a batch of events, all or nothing", batch=True)

    def list_events(self) -> dict[str, Any]:
        page = {
            "type": "object",
            "required": ["events", "next_cursor"],
            "properties": {
                "events": {"type": "array", "items": STORED_EVENT, "maxItems": MAX_PAGE},
                "next_cursor": {
                    "anyOf": [{"type": "string", "pattern": CURSOR_PATTERN}, {"type": "null"}]
                },
            },
            "additionalProperties": False,
        }
        ok = _json_ok("a page of events, newest first", page)
        return {
            "summary": "Stored events, filtered and paged",
            "parameters": LIST_PARAMETERS,
            "responses": self._responses(ok, *READ_PROBLEMS),
        }

    def summary(self) -> dict[str, Any]:
        ok = _json_ok("totals, per-type counts and a time series, from one snapshot", SUMMARY)
        return {
            "summary": "Counts over every stored event, and per bucket of a recent window",
            "parameters": SUMMARY_PARAMETERS,
            "responses": self._responses(ok, *READ_PROBLEMS),
        }

    def forward_routes(self) -> dict[str, Any]:
        page = {
            "type": "object",
            "required": ["routes"],
            "properties": {"routes": {"type": "array", "items": ROUTE_STATUS}},
            "additionalProperties": False,
        }
        ok = _json_ok("every route the database knows, by name (none without forwarding)", page)
        return {
            "summary": "Store and forward: each route's state, backlog and lag",
            "responses": self._responses(ok, problems.DATABASE_UNAVAILABLE),
        }

    def favicon(self) -> dict[str, Any]:
        ok = _text_ok("the web page's icon", "image/svg+xml")
        return {"summary": "The web page's icon", "responses": self._responses(ok)}

    def get_event(self) -> dict[str, Any]:
        ok = _json_ok("the event", STORED_EVENT)
        return {
            "summary": "One stored event",
            "parameters": [
                {
                    "name": "event_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                }
            ],
            "responses": self._responses(ok, *READ_PROBLEMS, problems.NOT_FOUND),
        }

    def stream(self) -> dict[str, Any]:
        message = {
            "type": "object",
            "description": "one Server-Sent Events message: a stored event (`data`, its row id "
            "as `id`), the reconnection delay (`retry`), or nothing (a keep-alive comment)",
            "properties": {
                "id": {"type": "string", "pattern": r"^\d+$"},
                "event": {"const": "event"},
                "data": {
                    "type": "string",
                    "contentMediaType": JSON,
                    "contentSchema": STORED_EVENT,
                },
                "retry": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        }
        ok = {
            "description": "newly stored events, oldest first, from the given position on",
            "content": {"text/event-stream": {"schema": message}},
        }
        position = {"type": "integer", "minimum": 0, "maximum": MAX_ROW_ID}
        return {
            "summary": "Newly stored events, live",
            "parameters": [
                TYPE_FILTER,
                _query(
                    "after", "start after this row id (when there is no Last-Event-ID)", position
                ),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": "resume right after this row id",
                    "schema": {"type": "string", "pattern": ROW_ID_HEADER_PATTERN},
                },
            ],
            "responses": self._responses(ok, *READ_PROBLEMS),
        }

    def index(self) -> dict[str, Any]:
        ok = _text_ok("an HTML page", "text/html")
        headers = {
            name: _header_schema(meaning)
            for name, meaning in (
                ("Content-Security-Policy", "its own inline script and style, this origin only"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer"),
            )
        }
        ok["headers"] = headers
        return {"summary": "The live web page", "responses": self._responses(ok)}

    def healthz(self) -> dict[str, Any]:
        ok = _json_ok("the process is up", {"const": {"status": "ok"}})
        return {"summary": "Liveness", "responses": self._responses(ok)}

    def readyz(self) -> dict[str, Any]:
        ok = _json_ok("the database answers", {"const": {"status": "ok"}})
        return {
            "summary": "Readiness",
            "responses": self._responses(ok, problems.DATABASE_UNAVAILABLE),
        }

    def metrics(self) -> dict[str, Any]:
        ok = _text_ok("Prometheus text format", "text/plain")
        return {"summary": "Prometheus metrics", "responses": self._responses(ok)}

    def openapi(self) -> dict[str, Any]:
        ok = _json_ok("this document", {"type": "object"})
        return {"summary": "This OpenAPI document", "responses": self._responses(ok)}


OPERATIONS: dict[tuple[str, str], Callable[[Spec], dict[str, Any]]] = {
    ("POST", "/event"): Spec.post_event,
    ("POST", "/events"): Spec.post_events,
    ("GET", "/events"): Spec.list_events,
    ("GET", "/events/{event_id:path}"): Spec.get_event,
    ("GET", "/events/stream"): Spec.stream,
    ("GET", "/events/summary"): Spec.summary,
    ("GET", "/routes"): Spec.forward_routes,
    ("GET", "/favicon.svg"): Spec.favicon,
    ("GET", "/"): Spec.index,
    ("GET", "/healthz"): Spec.healthz,
    ("GET", "/readyz"): Spec.readyz,
    ("GET", "/metrics"): Spec.metrics,
    ("GET", "/openapi.json"): Spec.openapi,
}


def openapi_path(path: str) -> str:
    """Starlette's `/events/{event_id:path}` as OpenAPI's `/events/{event_id}`."""
    return path.replace(":path}", "}")


def document(
    routes: Sequence[BaseRoute],
    config: ConsumerConfig,
    credentials: Credentials,
    *,
    checks_host: bool,
) -> dict[str, Any]:
    """The OpenAPI document of an app with these routes, config and credentials; 421 is
    listed when the app `checks_host`."""
    spec = Spec(config, credentials, checks_host=checks_host)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            describe = OPERATIONS.get((method, route.path))
            if describe is None:
                raise LookupError(f"{method} {route.path} has no OpenAPI description")
            paths.setdefault(openapi_path(route.path), {})[method.lower()] = describe(spec)
    out: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "eventctl consumer",
            "version": __version__,
            "description": "Catches, validates and stores events. Every answer that is not "
            "2xx has the error shape: status, code, message, errors.",
        },
        "paths": paths,
    }
    if credentials.token:
        out["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    return out
