"""The consumer's OpenAPI 3.1 document, built from the app it describes.

`document()` walks the app's real routes: a route without a description here is an error, so
the document cannot miss an endpoint, and it only lists what this server answers (`/metrics`
when metrics are on, 401s when credentials are required, the drill's status when a drill is
on). Limits, parameter names and error codes come from the modules that enforce them;
tests/consumer/test_openapi.py runs schemathesis against the live app to prove the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Route

from eventctl import __version__
from eventctl.auth import Credentials
from eventctl.config import ConsumerConfig
from eventctl.consumer.rules import (
    CURSOR_PATTERN,
    DEFAULT_PAGE,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_PAGE,
    MAX_ROW_ID,
    SummaryLimits,
)
from eventctl.events import CONTROL_CHARACTERS, FORMAT_CHARACTERS, MAX_EVENT_TYPE_LENGTH

JSON = "application/json"
Schema = dict[str, Any]

# The same rules as events.validate_event, as JSON Schema (Python `re` syntax, which both
# schemathesis and jsonschema use): no control characters, and not blank (some character that
# is neither whitespace nor a format character).
EVENT_TYPE_PATTERN = (
    f"^[^{CONTROL_CHARACTERS}]*[^{CONTROL_CHARACTERS}\\s{FORMAT_CHARACTERS}]"
    f"[^{CONTROL_CHARACTERS}]*$"
)
NO_NUL_PATTERN = r"^[^\x00]*$"
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?([mM][sS]|[sSmMhHdDwW]))+)\s*$"

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


def _error(codes: Sequence[str]) -> Schema:
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


@dataclass
class Answers:
    """The responses of one operation, error codes grouped by status."""

    ok: Schema
    errors: dict[int, list[str]] = field(default_factory=dict)
    headers: dict[int, dict[str, Schema]] = field(default_factory=dict)

    def add(self, status: int, *codes: str, headers: dict[str, Schema] | None = None) -> None:
        self.errors.setdefault(status, []).extend(codes)
        if headers:
            self.headers.setdefault(status, {}).update(headers)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"200": self.ok}
        for status in sorted(self.errors):
            answer: dict[str, Any] = {
                "description": ", ".join(sorted(set(self.errors[status]))),
                "content": {JSON: {"schema": _error(self.errors[status])}},
            }
            if status in self.headers:
                answer["headers"] = self.headers[status]
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


class Spec:
    """What the document says of one server: its config and credentials decide the details."""

    def __init__(
        self, config: ConsumerConfig, credentials: Credentials, *, checks_host: bool
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.checks_host = checks_host

    def _answers(self, ok: Schema) -> Answers:
        """The answers of an operation, starting with those that can come on any request: the
        HTTP layer's (eventctl/httpserver.py) and the Host check's."""
        answers = Answers(ok)
        answers.add(400, "malformed_request")
        answers.add(408, "request_timeout")
        if self.checks_host:
            answers.add(421, "misdirected_request")
        answers.add(431, "headers_too_large")
        answers.add(503, "too_many_connections", headers={"Retry-After": RETRY_AFTER})
        return answers

    def _fault(self, answers: Answers) -> None:
        if self.config.fail_rate > 0:
            status = self.config.fail_status
            headers = {"Retry-After": RETRY_AFTER} if status in (429, 503) else None
            answers.add(status, "injected_fault", headers=headers)

    def _ingest(self, ok: Schema, body: Schema, summary: str, batch: bool) -> dict[str, Any]:
        answers = self._answers(ok)
        answers.add(400, "malformed_json", "invalid_header")
        answers.add(413, "payload_too_large")
        answers.add(415, "unsupported_media_type")
        answers.add(
            422, "invalid_event", "idempotency_key_reused", *(["invalid_batch"] if batch else [])
        )
        answers.add(503, "overloaded", "database_unavailable", headers={"Retry-After": RETRY_AFTER})
        self._fault(answers)
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
            answers.add(
                401,
                "unauthorized",
                headers={"WWW-Authenticate": _header_schema('Bearer realm="eventctl"')},
            )
            operation["security"] = [{"bearer": []}]
        if self.credentials.keys:
            answers.add(401, "invalid_signature")
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
        operation["responses"] = answers.render()
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
        answers = self._answers(_json_ok("a page of events, newest first", page))
        answers.add(400, "invalid_parameter")
        answers.add(503, "database_unavailable")
        return {
            "summary": "Stored events, filtered and paged",
            "parameters": LIST_PARAMETERS,
            "responses": answers.render(),
        }

    def summary(self) -> dict[str, Any]:
        ok = _json_ok("totals, per-type counts and a time series, from one snapshot", SUMMARY)
        answers = self._answers(ok)
        answers.add(400, "invalid_parameter")
        answers.add(503, "database_unavailable")
        return {
            "summary": "Counts over every stored event, and per bucket of a recent window",
            "parameters": SUMMARY_PARAMETERS,
            "responses": answers.render(),
        }

    def favicon(self) -> dict[str, Any]:
        ok = _text_ok("the web page's icon", "image/svg+xml")
        return {"summary": "The web page's icon", "responses": self._answers(ok).render()}

    def get_event(self) -> dict[str, Any]:
        answers = self._answers(_json_ok("the event", STORED_EVENT))
        answers.add(400, "invalid_parameter")
        answers.add(404, "not_found")
        answers.add(503, "database_unavailable")
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
            "responses": answers.render(),
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
        answers = self._answers(ok)
        answers.add(400, "invalid_parameter")
        answers.add(503, "database_unavailable")
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
                    "schema": {"type": "string", "pattern": r"^\d{1,18}$"},
                },
            ],
            "responses": answers.render(),
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
        return {"summary": "The live web page", "responses": self._answers(ok).render()}

    def healthz(self) -> dict[str, Any]:
        ok = _json_ok("the process is up", {"const": {"status": "ok"}})
        return {"summary": "Liveness", "responses": self._answers(ok).render()}

    def readyz(self) -> dict[str, Any]:
        answers = self._answers(_json_ok("the database answers", {"const": {"status": "ok"}}))
        answers.add(503, "database_unavailable")
        return {"summary": "Readiness", "responses": answers.render()}

    def metrics(self) -> dict[str, Any]:
        ok = _text_ok("Prometheus text format", "text/plain")
        return {"summary": "Prometheus metrics", "responses": self._answers(ok).render()}

    def openapi(self) -> dict[str, Any]:
        ok = _json_ok("this document", {"type": "object"})
        return {"summary": "This OpenAPI document", "responses": self._answers(ok).render()}


OPERATIONS: dict[tuple[str, str], Callable[[Spec], dict[str, Any]]] = {
    ("POST", "/event"): Spec.post_event,
    ("POST", "/events"): Spec.post_events,
    ("GET", "/events"): Spec.list_events,
    ("GET", "/events/{event_id:path}"): Spec.get_event,
    ("GET", "/events/stream"): Spec.stream,
    ("GET", "/events/summary"): Spec.summary,
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
