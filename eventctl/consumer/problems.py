"""Every problem the consumer answers with, once: its HTTP status, its error `code`, whether
it says `Retry-After`, and what it means.

The handlers raise `problems.X.error(message, ...)`, the HTTP layer (httpserver.py) writes
`problems.X.answer(message)`, and the OpenAPI document (openapi.py) lists each endpoint's
problems from here. docs/http-api.md has a row for each, which
tests/consumer/test_problems.py checks. The one answer outside the catalog is a response
rule's (responses.py), which only a config with rules answers. Every answer has one shape:
    {"status": "error", "code": "...", "message": "...", "errors": [{"field": ..., ...}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

RETRY_AFTER_SECONDS = 1
RETRY_STATUSES = frozenset({429, 503})
"""The statuses whose answers say when to try again."""


@dataclass(frozen=True)
class Problem:
    """One kind of error answer. `headers` are sent with every answer of this kind; a
    problem with `retry_after` also sends `Retry-After: RETRY_AFTER_SECONDS`. A problem
    with `any_status` is answered with a status chosen by config (`status` is the default),
    and `at(status)` gives it that status."""

    status: int
    code: str
    description: str
    retry_after: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    any_status: bool = False

    def at(self, status: int) -> Problem:
        """This problem with `status`, which says `Retry-After` when it is 429 or 503."""
        return replace(self, status=status, retry_after=status in RETRY_STATUSES)

    def answer_headers(self, *, retry: bool | None = None) -> dict[str, str]:
        """The headers of an answer; `retry` overrides `retry_after`."""
        headers = dict(self.headers)
        if self.retry_after if retry is None else retry:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return headers

    def error(
        self,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> ApiError:
        """The exception that answers this problem. `errors` defaults to one naming
        `field` (none without it); `headers` are added to the problem's own; `retry`
        overrides `retry_after`."""
        if errors is None:
            errors = [{"field": field, "message": message}] if field else []
        answer_headers = self.answer_headers(retry=retry)
        answer_headers.update(headers or {})
        return ApiError(self, message, errors=errors, headers=answer_headers)

    def answer(self, message: str) -> bytes:
        """A complete HTTP/1.1 answer that closes the connection, for the HTTP layer, which
        answers before (or instead of) the app."""
        body = json.dumps(ApiError(self, message, errors=[], headers={}).body()).encode()
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{name.lower()}: {value}" for name, value in self.answer_headers().items()),
        ]
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


class ApiError(Exception):
    """An answer of `problem`: raised by handlers, turned into the error shape once."""

    def __init__(
        self,
        problem: Problem,
        message: str,
        *,
        errors: list[dict[str, Any]],
        headers: dict[str, str],
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.errors = errors
        self.headers = headers

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def code(self) -> str:
        return self.problem.code

    def body(self) -> dict[str, Any]:
        return {
            "status": "error",
            "code": self.code,
            "message": self.message,
            "errors": self.errors,
        }


# The HTTP layer's (httpserver.py), on any path, before the app sees the request.
MALFORMED_REQUEST = Problem(400, "malformed_request", "the request is not parseable HTTP/1.1")
REQUEST_TIMEOUT = Problem(
    408, "request_timeout", "the request's head or body took longer than its timeout"
)
HEADERS_TOO_LARGE = Problem(
    431, "headers_too_large", "the request's head is over max_header_bytes or max_headers"
)
TOO_MANY_CONNECTIONS = Problem(
    503,
    "too_many_connections",
    "the worker already has max_connections connections open",
    retry_after=True,
)

# The app's, on any path.
MISDIRECTED_REQUEST = Problem(
    421,
    "misdirected_request",
    "the Host header names a host this server does not answer for",
)
NOT_FOUND = Problem(404, "not_found", "no such endpoint, or no event with that event_id")
METHOD_NOT_ALLOWED = Problem(
    405, "method_not_allowed", "the path does not take this method (see Allow)"
)
INTERNAL_ERROR = Problem(500, "internal_error", "a bug; the details are in the server's log")
INJECTED_FAULT = Problem(
    503,
    "injected_fault",
    "a fault drill refused the request (serve --fail-rate, with --fail-status)",
    retry_after=True,
    any_status=True,
)

# Ingest (POST /event, POST /events).
UNAUTHORIZED = Problem(
    401,
    "unauthorized",
    "a bearer token is required and Authorization does not carry it",
    headers=(("WWW-Authenticate", 'Bearer realm="eventctl"'),),
)
INVALID_SIGNATURE = Problem(
    401,
    "invalid_signature",
    "the Standard Webhooks headers are missing, malformed, stale or do not match",
)
UNSUPPORTED_MEDIA_TYPE = Problem(
    415, "unsupported_media_type", "the Content-Type is not application/json"
)
PAYLOAD_TOO_LARGE = Problem(413, "payload_too_large", "the body is over max_body_bytes")
INVALID_HEADER = Problem(
    400, "invalid_header", "the Idempotency-Key is not 1-255 printable ASCII characters"
)
MALFORMED_JSON = Problem(
    400,
    "malformed_json",
    "the body is not UTF-8 JSON, is nested too deeply, or is not an object (an array for a batch)",
)
INVALID_EVENT = Problem(422, "invalid_event", "an event breaks the event rules")
INVALID_BATCH = Problem(422, "invalid_batch", "a batch is empty or holds over max_batch events")
IDEMPOTENCY_KEY_REUSED = Problem(
    422,
    "idempotency_key_reused",
    "the event id is already stored with a different event; nothing was stored",
)
OVERLOADED = Problem(
    503,
    "overloaded",
    "max_queued_events events already wait for a commit; nothing was stored",
    retry_after=True,
)

# Any endpoint that reads or writes the database.
DATABASE_UNAVAILABLE = Problem(
    503,
    "database_unavailable",
    "the database failed or did not answer (no Retry-After on /readyz)",
    retry_after=True,
)

# The read endpoints (GET /events...).
INVALID_PARAMETER = Problem(
    400, "invalid_parameter", "a parameter is bad or unknown; errors[0].field names it"
)

CATALOG: tuple[Problem, ...] = (
    MALFORMED_REQUEST,
    REQUEST_TIMEOUT,
    HEADERS_TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    MISDIRECTED_REQUEST,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    INTERNAL_ERROR,
    INJECTED_FAULT,
    UNAUTHORIZED,
    INVALID_SIGNATURE,
    UNSUPPORTED_MEDIA_TYPE,
    PAYLOAD_TOO_LARGE,
    INVALID_HEADER,
    MALFORMED_JSON,
    INVALID_EVENT,
    INVALID_BATCH,
    IDEMPOTENCY_KEY_REUSED,
    OVERLOADED,
    DATABASE_UNAVAILABLE,
    INVALID_PARAMETER,
)
"""Every problem above (tests/consumer/test_problems.py checks that none is missing)."""


def http_problem(status: int) -> Problem:
    """The problem of Starlette's HTTPException with `status` (its router raises only 404
    and 405; any other is answered as `http_error`, which nothing here raises)."""
    for problem in (NOT_FOUND, METHOD_NOT_ALLOWED):
        if problem.status == status:
            return problem
    return Problem(status, "http_error", HTTPStatus(status).phrase)
