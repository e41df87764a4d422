"""Server-Sent Events of stored events: `GET /events/stream` and the client side of `tail`.

Each stream reads the table itself (rows with an id above the last one sent, oldest first),
so it sees events committed by any worker or host, resumes exactly from `Last-Event-ID`, and
holds at most one batch in memory: a slow client only falls behind in the table, and one
that takes longer than SEND_TIMEOUT_SECONDS to take a batch is dropped.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import StreamingResponse

from eventctl.errors import ConfigError, EventctlError
from eventctl.retry import RetryPolicy, transport_error_text
from eventctl.store import FOLLOW_POLL_SECONDS, Follower, Store, StoredEvent

HEARTBEAT_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 30.0


def sse_message(event: StoredEvent) -> str:
    """One SSE message: the row id as `id`, the event as JSON `data`."""
    data = json.dumps(event.to_json(), ensure_ascii=False)
    return f"id: {event.id}\nevent: event\ndata: {data}\n\n"


async def _messages(store: Store, last_id: int, types: Sequence[str]) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    idle = 0.0
    follower = Follower(store, last_id, types=types)
    while True:
        rows = await anyio.to_thread.run_sync(follower.next_batch)
        if rows:
            idle = 0.0
            handed_over = time.monotonic()
            yield "".join(sse_message(row) for row in rows)
            # the response resumes this generator only once the batch was sent
            if time.monotonic() - handed_over > SEND_TIMEOUT_SECONDS:
                return
            continue
        await anyio.sleep(FOLLOW_POLL_SECONDS)
        idle += FOLLOW_POLL_SECONDS
        if idle >= HEARTBEAT_SECONDS:
            idle = 0.0
            yield ": keep-alive\n\n"


async def event_stream(request: Request, store: Store, start_after: int) -> StreamingResponse:
    types = request.query_params.getlist("type")
    return StreamingResponse(
        _messages(store, start_after, types),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


_END_OF_LINE = re.compile(rb"\r\n|\r|\n")


def sse_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of an SSE stream from its bytes, however they are cut into chunks.

    SSE ends lines with CR, LF or CRLF only (not U+2028, U+2029 or U+0085, as
    `str.splitlines` and httpx's `iter_lines` do). A CR ending a chunk may be the first
    half of a CRLF, so an LF opening the next chunk is dropped. Lines are decoded as
    UTF-8 with replacement characters, a leading BOM is dropped, and an unfinished last
    line is not a line.
    """
    partial: list[bytes] = []
    after_cr = False
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        start = 1 if after_cr and chunk.startswith(b"\n") else 0
        after_cr = chunk.endswith(b"\r")
        for end in _END_OF_LINE.finditer(chunk, start):
            partial.append(chunk[start : end.start()])
            line = b"".join(partial).decode("utf-8", errors="replace")
            partial.clear()
            start = end.end()
            if first:
                line = line.removeprefix("\ufeff")
                first = False
            yield line
        if start < len(chunk):
            partial.append(chunk[start:])


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """(id, data) of each SSE message with data, from the stream's lines."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, "\n".join(data)
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


RECONNECT = RetryPolicy(base_seconds=1.0, max_seconds=5.0)
"""How `follow_stream` waits before reconnecting: 0.5-1 s, then doubling up to 2.5-5 s."""


@dataclass(frozen=True)
class Reconnect:
    """How `follow_stream` waits between connections: the delays of `policy`, drawn from
    `rng`, waited by `sleep` (tests pass their own to wait for nothing)."""

    policy: RetryPolicy = RECONNECT
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep


def stream_url(base: str) -> str:
    """The stream's URL from a consumer's base URL (or the stream's own); ConfigError if it
    is not an http:// or https:// URL."""
    url = base.rstrip("/").removesuffix("/events/stream") + "/events/stream"
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{url}: not a valid URL: {exc}") from None
    if scheme not in ("http", "https"):
        raise ConfigError(f"{url}: must be an http:// or https:// URL")
    return url


def follow_stream(
    url: str,
    types: Sequence[str],
    on_data: Callable[[str], None],
    on_notice: Callable[[str], None],
    *,
    reconnect: Reconnect | None = None,
) -> NoReturn:
    """Read the stream at `url` forever: `on_data` gets each message's data, `on_notice`
    a line about the connection. After a disconnect it reconnects with `Last-Event-ID`
    (waiting as `reconnect` says), so nothing is missed or repeated. A refusal (an answer
    other than 200) is an EventctlError.
    """
    reconnect = reconnect or Reconnect()
    timeout = httpx.Timeout(10, read=30)
    params = {"type": list(types)}
    last_id: str | None = None
    attempt = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with httpx.stream(
                "GET", url, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise EventctlError(f"{url}: {response.status_code} {response.text[:200]}")
                if last_id is None:
                    on_notice(f"following {url}; Ctrl-C stops")
                attempt = 0
                for event_id, data in parse_sse(sse_lines(response.iter_bytes())):
                    last_id = event_id or last_id
                    on_data(data)
            reason = "the stream ended"
        except httpx.TransportError as exc:
            reason = transport_error_text(exc)
        except httpx.DecodingError as exc:
            reason = str(exc)
        attempt += 1
        delay = reconnect.policy.delay(attempt, reconnect.rng)
        on_notice(f"{reason}; reconnecting in {delay:.1f}s")
        reconnect.sleep(delay)
