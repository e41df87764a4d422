"""The Event Consumer as a Starlette app: `create_app(config, store)`.

`POST /event` and `POST /events` are plain ASGI handlers reached before Starlette's router
(the hot path: no Request/Response objects); everything else is ordinary Starlette. Every
answer other than 2xx is a problem of the catalog (problems.py), raised as
`problems.X.error(message, ...)` and answered in its one JSON shape (see docs/http-api.md).
The module reads top-down: helpers, the ingest handlers, the other routes, then
`create_app`, which only wires them (tests/consumer/test_layout.py checks the order).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NoReturn

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from eventctl.auth import (
    Credentials,
    SignatureError,
    WebhookHeaders,
    check_signature,
    token_matches,
)
from eventctl.config import ConsumerConfig, metrics_enabled
from eventctl.consumer import problems
from eventctl.consumer.forwarder import Forwarder
from eventctl.consumer.metrics import CONTENT_TYPE, Metrics
from eventctl.consumer.openapi import LIST_PARAMETERS, SUMMARY_PARAMETERS, document
from eventctl.consumer.problems import ApiError
from eventctl.consumer.responses import Responses
from eventctl.consumer.rules import (
    CURSOR_PATTERN,
    CURSOR_PREFIX,
    DEFAULT_PAGE,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_PAGE,
    MAX_ROW_ID,
    SummaryLimits,
)
from eventctl.consumer.stream import event_stream
from eventctl.consumer.writer import Overloaded, Writer
from eventctl.errors import DatabaseError, IdempotencyConflict, InvalidEvent
from eventctl.events import Event, new_event_id, unique_keys, validate_event
from eventctl.outbox import Outbox
from eventctl.store import Incoming, Store, iso
from eventctl.timefmt import parse_since

log = logging.getLogger("eventctl.consumer.app")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

EVENT_ID_HEADER = "Event-Id"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"
READY_TIMEOUT_SECONDS = 3.0
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
CURSOR = re.compile(CURSOR_PATTERN)

SUCCESS_BODY = b'{"status":"success"}'
JSON_HEADER = (b"content-type", b"application/json")


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def misdirected() -> ApiError:
    return problems.MISDIRECTED_REQUEST.error(
        "this server does not answer for the host named in the Host header (see allowed_hosts)"
    )


def is_loopback(host: str) -> bool:
    """Whether a listening address is loopback only: 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host: bytes) -> bytes | None:
    """The name in a Host value, lower case and without its port; None if malformed."""
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]") + 1
        if not end:
            return None
        name, rest = host[:end], host[end:]
    else:
        name, colon, port = host.partition(b":")
        rest = colon + port
    if rest and not (rest.startswith(b":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name or None


def _is_loopback_name(name: bytes) -> bool:
    if name == b"localhost":
        return True
    try:
        address = ipaddress.ip_address(name.decode().removeprefix("[").removesuffix("]"))
    except (ValueError, UnicodeDecodeError):
        return False
    return address.is_loopback and (address.version == 4) != name.startswith(b"[")


class HostGuard:
    """Which `Host` headers are answered: a guard against DNS rebinding.

    Bound to loopback: loopback names and addresses (any port) and `allowed_hosts`. Bound
    elsewhere: only `allowed_hosts`, or any Host when it is empty. An entry with a port
    allows that port only.
    """

    def __init__(self, config: ConsumerConfig) -> None:
        entries = (entry.strip().lower() for entry in config.allowed_hosts.split(","))
        self.allowed = frozenset(entry.encode() for entry in entries if entry)
        self.loopback = is_loopback(config.host)
        self.any = not self.loopback and not self.allowed
        # the Host values of nearly every request, answered by one set lookup
        common = {b"localhost", b"127.0.0.1", b"[::1]"} if self.loopback else set()
        port = b":%d" % config.port
        self.common = frozenset(common | {n + port for n in common} | self.allowed)

    def allows(self, host: bytes | None) -> bool:
        if self.any or host in self.common:
            return True
        name = _host_name(host) if host else None
        if host is None or name is None:
            return False
        if name in self.allowed or host.lower() in self.allowed:
            return True
        return self.loopback and _is_loopback_name(name)


def _headers(scope: Scope) -> tuple[bytes, bytes | None, bytes | None, bytes | None]:
    """(content-type, content-length, idempotency-key, host) from the raw ASGI headers; the
    host is b"" when there are two Host headers."""
    content_type = b""
    length = key = host = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = value
        elif name == b"idempotency-key":
            key = value
        elif name == b"host":
            host = value if host is None else b""
    return content_type, length, key, host


def _host(scope: Scope) -> bytes | None:
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value if host is None else b""
    return host


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _require_json(content_type: bytes) -> None:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        shown = media_type.decode("latin-1") or "none"
        raise problems.UNSUPPORTED_MEDIA_TYPE.error(
            f"Content-Type must be application/json, not {shown}"
        )


def _too_large(limit: int) -> ApiError:
    return problems.PAYLOAD_TOO_LARGE.error(f"request body is larger than {limit} bytes")


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise problems.MALFORMED_JSON.error("the client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            raise problems.MALFORMED_JSON.error("request body is not valid UTF-8") from None
        if "depth limit" in str(exc):
            raise problems.MALFORMED_JSON.error("request body is nested too deeply") from None
        raise problems.MALFORMED_JSON.error(f"request body is not valid JSON: {exc}") from None


def _idempotency_key(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    key = raw.decode("latin-1")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise problems.INVALID_HEADER.error(
            f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
    return key


def _invalid(exc: InvalidEvent, index: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"field": exc.field, "message": str(exc)}
    if index is not None:
        error["index"] = index
    return error


def _validate_all(data: list[Any]) -> tuple[list[Event], list[dict[str, Any]]]:
    """The events of a batch, and an error (with its index) for each bad one."""
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(data):
        try:
            events.append(validate_event(item))
        except InvalidEvent as exc:
            errors.append(_invalid(exc, index))
    return events, errors


def _keys_once(body: bytes, events: int) -> bool:
    """True when a body whose `events` events passed validate_event surely repeats no key.

    Each event has the keys event_type and event_payload, and a key equal to one of them is
    written either as that name in quotes or with a \\u escape (no other escape makes a
    letter or an underscore). So in a body without \\u, every key written in an event is a
    distinct occurrence of a quoted name: if each quoted name occurs only `events` times, no
    event repeats it. (A string value equal to a name also counts: then the answer is a
    cautious False, and the caller parses again.)"""
    return (
        b"\\u" not in body
        and body.count(b'"event_type"') == events
        and body.count(b'"event_payload"') == events
    )


def _parse_unique(body: bytes) -> Any:
    """`body` parsed again, objects with a repeated key as DuplicateKeys (which validate_event
    refuses). Only for bodies orjson parsed and validate_event accepted: flat, and UTF-8."""
    return json.loads(body.decode(), object_pairs_hook=unique_keys)


INTERNAL_ERROR_BODY = json.dumps(
    problems.INTERNAL_ERROR.error("internal server error").body()
).encode()


async def _write(writer: Writer, records: list[Incoming], *, batch: bool) -> set[str]:
    """Commit through the writer; map its refusals to ApiError (a batch's conflict names the
    event's index)."""
    try:
        return await writer.write(records)
    except Overloaded as exc:
        raise problems.OVERLOADED.error(f"try again later: {exc}") from None
    except IdempotencyConflict as exc:
        reuse = f"reuse an {IDEMPOTENCY_HEADER} only to retry the same event"
        error: dict[str, Any] = {"field": IDEMPOTENCY_HEADER}
        if batch:
            message = f"[{exc.index}] {exc}; nothing was stored ({reuse}s)"
            error["index"] = exc.index
        else:
            message = f"{exc}; nothing was stored ({reuse})"
        error["message"] = message
        raise problems.IDEMPOTENCY_KEY_REUSED.error(message, errors=[error]) from None
    except DatabaseError as exc:
        raise problems.DATABASE_UNAVAILABLE.error(f"events not stored: {exc}") from None


class Ingest:
    """A plain-ASGI ingest handler: the checks every ingest request passes (Host, drill,
    token, media type, size, Idempotency-Key, signature, JSON), then `_store`, which the
    endpoint's subclass defines: the event rules, the response rules (responses.py; None
    without any) and the commit."""

    path: str

    def __init__(
        self,
        config: ConsumerConfig,
        writer: Writer,
        metrics: Metrics | None,
        credentials: Credentials,
        hosts: HostGuard,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.hosts = hosts
        self.writer = writer
        self.metrics = metrics
        self.timer = metrics.request_seconds.labels(self.path) if metrics else None
        self.drills = config.fail_rate > 0 or config.latency_seconds > 0
        self.responses = Responses(config.responses) if config.responses else None
        self.random = random.Random()

    async def _drill(self) -> None:
        """Fault drills (off by default): a delay, then a refusal for a share of requests."""
        if self.config.latency_seconds:
            await asyncio.sleep(self.config.latency_seconds)
        if self.random.random() < self.config.fail_rate:
            fault = problems.INJECTED_FAULT.at(self.config.fail_status)
            raise fault.error("refused by --fail-rate")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            status, body, headers = await self._handle(scope, receive)
        except ApiError as exc:
            status = exc.status
            body = json.dumps(exc.body()).encode()
            headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            if self.metrics:
                self.metrics.rejected.labels(str(status), exc.code).inc()
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            status, body, headers = problems.INTERNAL_ERROR.status, INTERNAL_ERROR_BODY, []
            if self.metrics:
                self.metrics.rejected.labels(str(status), problems.INTERNAL_ERROR.code).inc()
        headers.append(JSON_HEADER)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self.timer:
            self.timer.observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[Any]]:
        content_type, length, raw_key, host = _headers(scope)
        if not self.hosts.allows(host):
            raise misdirected()
        if self.drills:
            await self._drill()
        credentials = self.credentials
        if credentials.token and not token_matches(
            credentials.token, _header(scope, b"authorization")
        ):
            raise problems.UNAUTHORIZED.error("a valid Authorization: Bearer token is required")
        _require_json(content_type)
        body = await _read_body(receive, length, self.config.max_body_bytes)
        key = _idempotency_key(raw_key)
        if credentials.keys:
            message_id = _header(scope, b"webhook-id")
            webhook = WebhookHeaders(
                message_id,
                _header(scope, b"webhook-timestamp"),
                _header(scope, b"webhook-signature"),
            )
            try:
                check_signature(
                    credentials.keys,
                    webhook,
                    body,
                    now=time.time(),
                    tolerance=self.config.webhook_tolerance_seconds,
                )
            except SignatureError as exc:
                raise problems.INVALID_SIGNATURE.error(str(exc)) from None
            key = key or _idempotency_key(message_id.encode() if message_id else None)
        return await self._store(_parse_json(body), key, body)

    async def _store(self, data: Any, key: str | None, body: bytes) -> tuple[int, bytes, list[Any]]:
        """Validate the parsed body `data` and store it under `key` (or a new id): the
        answer's status, body and headers."""
        raise NotImplementedError


class IngestEvent(Ingest):
    """`POST /event`: one event."""

    path = "/event"

    async def _store(self, data: Any, key: str | None, body: bytes) -> tuple[int, bytes, list[Any]]:
        if not isinstance(data, dict):
            raise problems.MALFORMED_JSON.error("request body must be a JSON object")
        try:
            event = validate_event(data)
            if not _keys_once(body, 1):
                event = validate_event(_parse_unique(body))
        except InvalidEvent as exc:
            raise problems.INVALID_EVENT.error(str(exc), errors=[_invalid(exc)]) from None
        if self.responses is not None:
            await self.responses.answer((event.event_type,), self.random, batch=False)
        event_id = key or new_event_id()
        if self.metrics:
            self.metrics.received.inc()
        stored = await _write(
            self.writer, [Incoming(event_id, event, datetime.now(UTC))], batch=False
        )
        headers = [(b"event-id", event_id.encode())]
        if not stored:
            headers.append((b"idempotent-replayed", b"true"))
        return 200, SUCCESS_BODY, headers


class IngestBatch(Ingest):
    """`POST /events`: a JSON array of events, stored all or nothing."""

    path = "/events"

    async def _store(self, data: Any, key: str | None, body: bytes) -> tuple[int, bytes, list[Any]]:
        if not isinstance(data, list):
            raise problems.MALFORMED_JSON.error("request body must be a JSON array of events")
        limit = self.config.max_batch
        if not 1 <= len(data) <= limit:
            raise problems.INVALID_BATCH.error(
                f"a batch holds 1 to {limit} events, not {len(data)}"
            )
        events, errors = _validate_all(data)
        if not errors and not _keys_once(body, len(data)):
            events, errors = _validate_all(_parse_unique(body))
        if errors:
            first = errors[0]
            raise problems.INVALID_EVENT.error(
                f"{len(errors)} of {len(data)} events are invalid; nothing was stored "
                f"(first: [{first['index']}] {first['message']})",
                errors=errors,
            )
        if self.responses is not None:
            await self.responses.answer((e.event_type for e in events), self.random, batch=True)
        now = datetime.now(UTC)
        batch_id = key or new_event_id()
        records = [Incoming(f"{batch_id}/{i}", event, now) for i, event in enumerate(events)]
        if self.metrics:
            self.metrics.received.inc(len(records))
        stored = await _write(self.writer, records, batch=True)
        headers = [(b"events-stored", str(len(stored)).encode())]
        if not stored:
            headers.append((b"idempotent-replayed", b"true"))
        return 200, b'{"status":"success","count":%d}' % len(records), headers


def _inline_hashes(page: bytes, tag: bytes) -> str:
    """CSP sources for the page's inline <script> or <style> elements: their sha256."""
    found = re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), page, re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(text).digest()).decode() for text in found)
    return " ".join(f"'sha256-{digest}'" for digest in digests) or "'none'"


def page_security_headers(page: bytes) -> dict[str, str]:
    """The web page may run its own inline script and style, show this origin's images (its
    favicon), and talk to this origin only."""
    policy = (
        "default-src 'none'",
        f"script-src {_inline_hashes(page, b'script')}",
        f"style-src {_inline_hashes(page, b'style')}",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
    return {
        "Content-Security-Policy": "; ".join(policy),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def raise_bad_parameter(name: str, problem: str) -> NoReturn:
    raise problems.INVALID_PARAMETER.error(f"{name} {problem}", field=name)


def _only_declared(params: Mapping[str, str], declared: Sequence[Mapping[str, Any]]) -> None:
    """400 for the first query parameter that the endpoint's OpenAPI parameters lack."""
    allowed = {parameter["name"] for parameter in declared}
    if unknown := sorted(set(params) - allowed):
        raise_bad_parameter(unknown[0], f"is not a parameter (use {', '.join(sorted(allowed))})")


def _text_parameter(text: str, name: str) -> str:
    if "\x00" in text:
        raise_bad_parameter(name, "must not contain NUL characters")
    return text


def _int_parameter(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise_bad_parameter(name, f"must be an integer from {low} to {high}, not {text!r}")
    return int(text)


def _time_parameter(text: str | None, name: str, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise_bad_parameter(name, str(exc).replace("not a time: ", "must be a time: "))


def encode_cursor(last_id: int) -> str:
    """A cursor: the page continues below this row id. Versioned, so that paging can change
    without breaking a client that only passes cursors back."""
    return f"{CURSOR_PREFIX}{last_id}"


def decode_cursor(cursor: str) -> int:
    if CURSOR.fullmatch(cursor):
        return int(cursor.removeprefix(CURSOR_PREFIX))
    raise_bad_parameter("cursor", "is not a cursor from a previous page")


def _read_routes(store: Store) -> list[Route]:
    """GET /events (filtered, paged newest first) and GET /events/{event_id}."""

    async def list_events(request: Request) -> Response:
        params = request.query_params
        _only_declared(params, LIST_PARAMETERS)
        for name in ("type", "q"):
            for value in params.getlist(name):
                _text_parameter(value, name)
        now = datetime.now(UTC)
        since = _time_parameter(params.get("since"), "since", now)
        until = _time_parameter(params.get("until"), "until", now)
        limit = _int_parameter(params.get("limit", str(DEFAULT_PAGE)), "limit", 1, MAX_PAGE)
        before = decode_cursor(params["cursor"]) if "cursor" in params else None
        events = await anyio.to_thread.run_sync(
            lambda: store.events(
                limit=limit + 1,
                types=params.getlist("type"),
                since=since,
                until=until,
                q=params.get("q") or None,
                before_id=before,
            )
        )
        page = events[:limit]
        cursor = encode_cursor(page[-1].id) if len(events) > limit else None
        return JSONResponse({"events": [e.to_json() for e in page], "next_cursor": cursor})

    async def stream(request: Request) -> Response:
        header = request.headers.get("last-event-id")
        after = request.query_params.get("after")
        for value in request.query_params.getlist("type"):
            _text_parameter(value, "type")
        resume = None if header is None else _int_parameter(header, "Last-Event-ID", 0, MAX_ROW_ID)
        start = None if after is None else _int_parameter(after, "after", 0, MAX_ROW_ID)
        start_after = resume if resume is not None else start
        if start_after is None:
            start_after = await anyio.to_thread.run_sync(store.last_id)
        return await event_stream(request, store, start_after)

    async def summary(request: Request) -> Response:
        params = request.query_params
        _only_declared(params, SUMMARY_PARAMETERS)
        limits = SummaryLimits
        window = params.get("window", str(limits.window))
        window_seconds = _int_parameter(window, "window", 1, limits.max_window)
        bucket = _int_parameter(
            params.get("bucket", str(limits.bucket)), "bucket", 1, limits.max_bucket
        )
        top = _int_parameter(params.get("top", str(limits.top)), "top", 1, limits.max_top)
        buckets = -(-window_seconds // bucket)
        now = time.time()
        last_start = int(now) // bucket * bucket
        start = datetime.fromtimestamp(last_start - (buckets - 1) * bucket, UTC)
        found = await anyio.to_thread.run_sync(
            lambda: store.summary(start=start, bucket_seconds=bucket, buckets=buckets)
        )
        return JSONResponse(
            {
                "total": sum(n for _, n in found.types),
                "last_id": found.last_id,
                "type_count": len(found.types),
                "types": [{"event_type": kind, "count": n} for kind, n in found.types[:top]],
                "now": iso(datetime.fromtimestamp(now, UTC)),
                "series": {
                    "start": iso(start),
                    "bucket_seconds": bucket,
                    "counts": found.buckets,
                },
            }
        )

    async def get_event(request: Request) -> Response:
        event_id = _text_parameter(request.path_params["event_id"], "event_id")
        event = await anyio.to_thread.run_sync(store.event, event_id)
        if event is None:
            raise problems.NOT_FOUND.error(f"no event with event_id {event_id}")
        return JSONResponse(event.to_json())

    page = (resources.files("eventctl.consumer") / "web" / "index.html").read_bytes()
    page_headers = page_security_headers(page)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    icon = (resources.files("eventctl.consumer") / "web" / "favicon.svg").read_bytes()
    icon_headers = {
        "Cache-Control": "public, max-age=86400",
        "Content-Security-Policy": "default-src 'none'",
        "X-Content-Type-Options": "nosniff",
    }

    async def favicon(request: Request) -> Response:
        return Response(icon, media_type="image/svg+xml", headers=icon_headers)

    return [
        Route("/", index, methods=["GET"]),
        Route("/favicon.svg", favicon, methods=["GET"]),
        Route("/events", list_events, methods=["GET"]),
        Route("/events/stream", stream, methods=["GET"]),
        Route("/events/summary", summary, methods=["GET"]),
        Route("/events/{event_id:path}", get_event, methods=["GET"]),
    ]


def _forwarding_routes(store: Store) -> list[Route]:
    """GET /routes: every forwarding route the database knows, as `eventctl routes --json`
    shows them."""
    outbox = Outbox(store)

    async def forward_routes(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(outbox.status)
        now = datetime.now(UTC)
        return JSONResponse({"routes": [route.to_json(now) for route in found]})

    return [Route("/routes", forward_routes, methods=["GET"])]


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers on this path (Starlette's 405 names only the first
    route's, and `/events` has two: GET and POST)."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


def _http_message(routes: Sequence[BaseRoute], request: Request, exc: HTTPException) -> str:
    """The message of Starlette's 404 or 405; a 404 with a trailing slash suggests the path
    without it when that is an endpoint (slashes are not redirected)."""
    path = request.url.path
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {path}"
    if exc.status_code != 404:
        return exc.detail
    message = f"no such endpoint: {path}"
    scope = {**request.scope, "path": path[:-1]}
    if path.endswith("/") and any(route.matches(scope)[0] != Match.NONE for route in routes):
        message += f" (did you mean {path[:-1]}?)"
    return message


class ConsumerApp(Starlette):
    """Starlette, with the ingest endpoints answered before the router and middleware (they
    check the Host themselves), and the Host of every other request checked first."""

    def __init__(
        self, fast: dict[str, Ingest], hosts: HostGuard, metrics: Metrics | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.router.redirect_slashes = False  # its 307 would echo the client's Host
        self.fast = fast
        self.hosts = hosts
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST":
                handler = self.fast.get(scope["path"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
            if not self.hosts.allows(_host(scope)):
                refusal = misdirected()
                if self.metrics:
                    self.metrics.rejected.labels(str(refusal.status), refusal.code).inc()
                await error_response(refusal)(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def serving(
    writer: Writer, forwarder: Forwarder | None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the writer (and the forwarder, which starts first: the writer
    needs its route ids) runs while the app serves."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if forwarder is not None:
            await forwarder.start()
        writer.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(writer.stop)
            if forwarder is not None:
                await forwarder.stop()

    return lifespan


def _health_routes(store: Store, writer: Writer, metrics: Metrics | None) -> list[Route]:
    """GET /healthz (the process answers), /readyz (it can store events), /metrics."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # Ready means the last commit worked and the database answers a read. While the
        # last commit failed (or the SQLite file changed), a write probe is the check, so
        # readiness comes back by itself once writes work, with or without traffic.
        try:
            with anyio.fail_after(READY_TIMEOUT_SECONDS):
                if writer.last_error is not None or await anyio.to_thread.run_sync(
                    store.file_changed, abandon_on_cancel=True
                ):
                    await writer.probe()
                await anyio.to_thread.run_sync(store.ping, abandon_on_cancel=True)
        # no Retry-After: readiness is a state to watch, not a request to retry
        except (DatabaseError, Overloaded) as exc:
            return error_response(problems.DATABASE_UNAVAILABLE.error(str(exc), retry=False))
        except TimeoutError:
            message = "the database did not answer"
            return error_response(problems.DATABASE_UNAVAILABLE.error(message, retry=False))
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if metrics:
        exposition = metrics.exposition

        async def metrics_page(request: Request) -> Response:
            # in a thread: the forwarding gauges read the database
            return Response(await anyio.to_thread.run_sync(exposition), media_type=CONTENT_TYPE)

        routes.append(Route("/metrics", metrics_page, methods=["GET"]))
    return routes


def _with_openapi(
    routes: list[Route], config: ConsumerConfig, credentials: Credentials, *, checks_host: bool
) -> list[Route]:
    """`routes` and GET /openapi.json, whose document (built now, so that a route without a
    description fails at start-up) covers them all, itself included."""
    schema: dict[str, Any] = {}

    async def openapi_page(request: Request) -> Response:
        return JSONResponse(schema)

    routes = [*routes, Route("/openapi.json", openapi_page, methods=["GET"])]
    schema.update(document(routes, config, credentials, checks_host=checks_host))
    return routes


def _error_handlers(
    routes: Sequence[BaseRoute], metrics: Metrics | None
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Every error as the one JSON shape, counted by status and code."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if metrics:
            metrics.rejected.labels(str(exc.status), exc.code).inc()
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(routes, request.scope))
        problem = problems.http_problem(exc.status_code)
        error = problem.error(_http_message(routes, request, exc), headers=headers)
        return await api_error(request, error)

    async def database_error(request: Request, exc: Exception) -> Response:
        return await api_error(request, problems.DATABASE_UNAVAILABLE.error(str(exc)))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(problems.INTERNAL_ERROR.error("internal server error"))

    return {
        ApiError: api_error,
        DatabaseError: database_error,
        HTTPException: http_error,
        Exception: server_error,
    }


def create_app(
    config: ConsumerConfig,
    store: Store,
    *,
    credentials: Credentials | None = None,
    multiprocess_metrics: bool = False,
) -> ConsumerApp:
    """The consumer app. It starts and stops its own writer in the lifespan.

    `credentials` (a bearer token, Standard Webhooks keys) are required of every ingest
    request when given.
    """
    credentials = credentials or Credentials()
    forwarder = None
    if config.forward:
        forwarder = Forwarder(
            store.url,
            config.forward,
            credentials=[
                Credentials.from_files(
                    token_file=route.auth_token_file, secrets_file=route.signing_secret_file
                )
                for route in config.forward
            ],
        )
    metrics = None
    if metrics_enabled(config):
        metrics = Metrics(multiprocess=multiprocess_metrics, store=store, forwarder=forwarder)
    writer = Writer(
        store,
        max_batch=config.commit_max_events,
        max_wait=config.commit_max_wait_ms / 1000,
        max_queued=config.max_queued_events,
        on_commit=metrics.on_commit if metrics else None,
        fanout=None if forwarder is None else forwarder.fanout,
        on_stored=None if forwarder is None else forwarder.wake,
    )
    hosts = HostGuard(config)
    one = IngestEvent(config, writer, metrics, credentials, hosts)
    many = IngestBatch(config, writer, metrics, credentials, hosts)
    routes = [
        Route(one.path, one, methods=["POST"]),
        Route(many.path, many, methods=["POST"]),
        *_read_routes(store),
        *_forwarding_routes(store),
        *_health_routes(store, writer, metrics),
    ]
    routes = _with_openapi(routes, config, credentials, checks_host=not hosts.any)
    return ConsumerApp(
        {one.path: one, many.path: many},
        hosts,
        metrics,
        routes=routes,
        exception_handlers=_error_handlers(routes, metrics),
        lifespan=serving(writer, forwarder),
    )
