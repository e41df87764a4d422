"""Delivering one event: the POST both sides send, and what its answer means.

Both sides deliver events: the propagator POSTs what it generates, the consumer forwards what
it stored. Each builds the same request (the event's JSON, its id as `Idempotency-Key`, a
bearer token and a Standard Webhooks signature when configured), makes one attempt with
`post_once`, and goes by `classify` to deliver, retry or give up; how often and when to retry
is the caller's (`eventctl.retry`). Library code: the clocks and the transport are arguments,
and nothing is printed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import httpx
import orjson

from eventctl.auth import Credentials, signature_headers
from eventctl.events import Event
from eventctl.retry import transport_error_text
from eventctl.transport import LeanTransport

RETRYABLE_4XX = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_SECONDS = 3600.0


class Answer(enum.Enum):
    """What an HTTP answer to a POST of events means to a sender (`propagate`, `send-once`
    and the consumer's forwarding all go by this)."""

    DELIVERED = "delivered"  # 2xx
    TRY_AGAIN = "try again"  # no answer, 5xx, 408 Request Timeout, 429 Too Many Requests
    REFUSED = "refused"  # any other status: this request will not be taken as it is


def classify(status: int | None) -> Answer:
    if status is not None and 200 <= status < 300:
        return Answer.DELIVERED
    if status is None or status >= 500 or status in RETRYABLE_4XX:
        return Answer.TRY_AGAIN
    return Answer.REFUSED


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """The delay a Retry-After header asks for (seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def event_body(event: Event) -> bytes:
    return orjson.dumps(event.to_json())


def request_headers(
    credentials: Credentials, event_id: str, body: bytes, now: Callable[[], datetime]
) -> list[tuple[bytes, bytes]]:
    """Headers of one attempt: the id as Idempotency-Key; when configured, a bearer token
    and a fresh Standard Webhooks signature (same webhook-id on every attempt)."""
    headers = [(b"Content-Type", b"application/json"), (b"Idempotency-Key", event_id.encode())]
    if credentials.token:
        headers.append((b"Authorization", f"Bearer {credentials.token}".encode()))
    if credentials.keys:
        timestamp = int(now().timestamp())
        signed = signature_headers(credentials.keys[0], event_id, timestamp, body)
        headers.extend((name.encode(), value.encode()) for name, value in signed.items())
    return headers


def timeout_extensions(seconds: float) -> dict[str, Any]:
    """The request extensions that give an attempt `seconds` to connect, write and read
    (each); made once per destination and passed to every `post_once`."""
    return {"timeout": httpx.Timeout(seconds).as_dict()}


class Attempt(NamedTuple):
    """What one `post_once` got: the status (None: no answer, then `error` says why), how
    long it took, the Retry-After delay asked for (429 and 503 only) and whether the
    receiver answered from its idempotency record (`Idempotent-Replayed: true`)."""

    status: int | None
    error: str | None
    latency: float
    retry_after: float | None
    replayed: bool

    @property
    def answer(self) -> Answer:
        return classify(self.status)


async def post_once(  # noqa: PLR0913 - the request's parts, its transport and the two clocks
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    credentials: Credentials,
    event_id: str,
    event: Event,
    *,
    extensions: dict[str, Any],
    clock: Callable[[], float],
    wall_clock: Callable[[], datetime],
    total_timeout: float | None = None,
) -> Attempt:
    """POST `event` to `url` once, through `transport`; never raises for a transport error
    (that is an Attempt without a status). `url` is parsed once by the caller, and
    `extensions` (see `timeout_extensions`) made once: this runs for every attempt.
    `total_timeout` cuts off the whole attempt (httpx's timeouts are per phase)."""
    sent_at = clock()
    body = event_body(event)
    headers = request_headers(credentials, event_id, body, wall_clock)
    try:
        status, raw = await _exchange(
            transport, url, headers, body, extensions=extensions, total_timeout=total_timeout
        )
    except httpx.TransportError as exc:
        return Attempt(None, transport_error_text(exc), clock() - sent_at, None, False)
    latency = clock() - sent_at
    retry_after = None
    replayed = False
    for name, value in raw:
        if len(name) == len(b"retry-after") and status in RETRY_AFTER_STATUSES:
            if name.lower() == b"retry-after":
                retry_after = retry_after_seconds(value.decode("latin-1"), wall_clock())
        elif len(name) == len(b"idempotent-replayed") and name.lower() == b"idempotent-replayed":
            replayed = value == b"true"
    return Attempt(status, None, latency, retry_after, replayed)


def _exchange(  # noqa: PLR0913 - post_once's request, passed on
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    extensions: dict[str, Any],
    total_timeout: float | None,
) -> Awaitable[tuple[int, list[tuple[bytes, bytes]]]]:
    """The status and raw headers of one POST, to await; raises httpx's transport errors.
    A plain function: LeanTransport's own coroutine is awaited without one more around it."""
    if isinstance(transport, LeanTransport):  # without httpx's Request and Response
        deadline = None
        if total_timeout is not None:
            deadline = asyncio.get_running_loop().time() + total_timeout
        return transport.post(
            url, headers, body, timeouts=extensions.get("timeout", {}), deadline=deadline
        )
    return _through_httpx(
        transport, url, headers, body, extensions=extensions, timeout=total_timeout
    )


async def _through_httpx(  # noqa: PLR0913 - the same
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    extensions: dict[str, Any],
    timeout: float | None,
) -> tuple[int, list[tuple[bytes, bytes]]]:
    # straight to the transport: the client's cookie, auth and redirect layers would cost
    # more CPU than the request itself, and none of them applies to these POSTs
    request = httpx.Request(
        "POST", url, headers=headers, stream=httpx.ByteStream(body), extensions=extensions
    )
    try:
        async with asyncio.timeout(timeout):
            response = await transport.handle_async_request(request)
            await response.aclose()
    except TimeoutError:
        raise httpx.TimeoutException("no answer in time", request=request) from None
    return response.status_code, response.headers.raw
