"""The Event Consumer as a Starlette app: `create_app(config, store)`.

Every answer other than 2xx has the same JSON shape (see docs/http-api.md):
    {"status": "error", "code": "...", "message": "...", "errors": [{"field": ..., "message": ...}]}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eventctl.config import ConsumerConfig
from eventctl.errors import DatabaseError, InvalidEvent
from eventctl.events import new_event_id, validate_event
from eventctl.store import Incoming, Store
from eventctl.writer import Overloaded, Writer

log = logging.getLogger("eventctl.app")

EVENT_ID_HEADER = "Event-Id"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_AFTER_SECONDS = 1
READY_TIMEOUT_SECONDS = 3.0
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")

SUCCESS = {"status": "success"}


class ApiError(Exception):
    """An HTTP error answered in the one error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = [{"field": field, "message": message}] if field else []
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"status": "error", "code": code, "message": message, "errors": errors or []}
    return JSONResponse(body, status_code=status, headers=headers)


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {shown}",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "request body is not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "request body is nested too deeply") from None


def _event_id(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return new_event_id()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_header",
            f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
    return key


def create_app(config: ConsumerConfig, store: Store) -> Starlette:
    """The consumer app. It starts and stops its own writer in the lifespan."""
    writer = Writer(store)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(writer.stop)

    async def post_event(request: Request) -> Response:
        _require_json(request)
        body = await _read_body(request, config.max_body_bytes)
        data = _parse_json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "malformed_json", "request body must be a JSON object")
        try:
            event = validate_event(data)
        except InvalidEvent as exc:
            raise ApiError(422, "invalid_event", str(exc), field=exc.field) from None
        event_id = _event_id(request)
        stored = await _write(writer, [Incoming(event_id, event, datetime.now(UTC))])
        headers = {EVENT_ID_HEADER: event_id}
        if event_id not in stored:
            headers[REPLAYED_HEADER] = "true"
        return JSONResponse(SUCCESS, headers=headers)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            with anyio.fail_after(READY_TIMEOUT_SECONDS):
                await anyio.to_thread.run_sync(store.ping, abandon_on_cancel=True)
        except DatabaseError as exc:
            return error_response(503, "database_unavailable", str(exc))
        except TimeoutError:
            return error_response(503, "database_unavailable", "the database did not answer")
        return JSONResponse({"status": "ok"})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.errors, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: f"no such endpoint: {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, exc.detail)
        return error_response(exc.status_code, code, message, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")

    return Starlette(
        routes=[
            Route("/event", post_event, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )


async def _write(writer: Writer, records: list[Incoming]) -> set[str]:
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    try:
        return await writer.write(records)
    except Overloaded as exc:
        raise ApiError(503, "overloaded", f"try again later: {exc}", headers=retry) from None
    except DatabaseError as exc:
        raise ApiError(
            503, "database_unavailable", f"event not stored: {exc}", headers=retry
        ) from None
