"""The consumer's HTTP/1.1 connections: uvicorn's httptools protocol with the limits it lacks.

uvicorn's httptools protocol buffers a request head of any size, keeps a connection that
never sends a request (or sends it a byte at a time) open forever, accepts connections until
the process runs out of file descriptors, and answers unparseable requests in plain text.
`LimitedProtocol` bounds each of those (see docs/configuration.md, "Limits and timeouts"):

- a request line plus headers over `max_header_bytes`, or more than `max_headers` fields:
  431, having fed the parser at most `max_header_bytes` of that head;
- no complete request head within `header_timeout` of the connection opening or of the
  request's first byte: 408 (or a plain close if nothing was sent);
- no complete body within `body_timeout` of the head: 408;
- more than `max_connections` open: 503 with Retry-After, and the connection is closed;
- a request the parser refuses: 400 in the API's one JSON error shape.

Every refusal is followed by a lingering close: the answer is sent, the write side shut,
and what the client still sends is read and dropped for a moment, so that the client can
read the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from eventctl.consumer import problems
from eventctl.consumer.problems import Problem

log = logging.getLogger("eventctl.http")

REFUSALS = (
    problems.MALFORMED_REQUEST,
    problems.REQUEST_TIMEOUT,
    problems.HEADERS_TOO_LARGE,
    problems.TOO_MANY_CONNECTIONS,
)
"""What the HTTP layer may answer on any path, before the app sees the request."""

LINGER_SECONDS = 2.0
STREAM_GRACE_SECONDS = 0.5
FD_RESERVE = 256
"""File descriptors kept for everything but client connections: the listening socket,
database files of the writer and reader threads, logs."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may do; the defaults are ConsumerConfig's."""

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


def fit_connections(wanted: int, reserve: int = FD_RESERVE) -> int:
    """`wanted` connections, or fewer if the open-file limit cannot hold them.

    Raises the soft limit towards the hard one first, as far as `wanted` needs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(1, soft - reserve)
    log.warning(
        "max_connections lowered from %d to %d to fit the open-file limit (ulimit -n %d)",
        wanted,
        fitted,
        soft,
    )
    return fitted


class ServerConfig(uvicorn.Config):
    """uvicorn's Config with the connection limits; it travels to `--workers` processes."""

    def __init__(self, app: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, http=LimitedProtocol, **kwargs)
        self.limits = limits


class _TooManyHeaders(Exception):
    pass


class LimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounded heads, bodies, timeouts and connections."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = getattr(config, "limits", Limits())
        self._timer: TimerHandle | None = None
        self._head_open = True
        self._head_bytes = 0
        self._closing = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._closing = True
            transport.write(
                problems.TOO_MANY_CONNECTIONS.answer(
                    f"the server has {len(self.connections)} connections open; try again later"
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self.flow is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing or self.parser is None:
            return
        self._unset_keepalive_if_required()
        if self._head_open and self._head_bytes + len(data) > self.limits.max_header_bytes:
            if not self._feed_bounded(data):
                return
        else:
            if self._head_open:
                self._head_bytes += len(data)
            if not self._feed(data):
                return
        # Timers only for a request still incomplete after this read (most arrive whole):
        # part of a head, or a head without all of its body.
        if self._timer is None:
            if self._head_open:
                if self._head_bytes:
                    self._arm(self.limits.header_timeout, self._head_timed_out)
            elif not self.pipeline:
                self._arm(self.limits.body_timeout, self._body_timed_out)

    def _feed_bounded(self, data: bytes) -> bool:
        """Feed `data`, of which the open head may take only what is left of its bound."""
        while data:
            if self._head_open:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse_head("request line and headers")
                    return False
                if len(data) > room:
                    piece, data = data[:room], data[room:]
                else:
                    piece, data = data, b""
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            if not self._feed(piece):
                return False
        return True

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooManyHeaders):
                self._refuse_head("header fields")
            else:
                self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserError as exc:
            self.logger.warning("Invalid HTTP request received: %s", exc)
            self.send_400_response(f"invalid HTTP request: {exc}")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self._closing

    def _busy(self) -> bool:
        """A request is being answered (its time is the app's, not the client's)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse_head(self, what: str) -> None:
        if what == "header fields":
            message = f"a request may have at most {self.limits.max_headers} header fields"
        else:
            message = f"the {what} must be at most {self.limits.max_header_bytes} bytes"
        self._refuse(problems.HEADERS_TOO_LARGE, message)

    def send_400_response(self, msg: str) -> None:
        self._refuse(problems.MALFORMED_REQUEST, msg)

    def _refuse(self, problem: Problem, message: str) -> None:
        """Answer `problem` (unless an answer has begun), then close after a linger."""
        self._cancel()
        cycle = self.cycle
        answering = False
        if cycle is not None and not cycle.response_complete:
            answering = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        if not answering:
            self.transport.write(problem.answer(message))
        self._closing = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    # Parser callbacks. The base class's are called directly: super() costs time per request.

    def on_headers_complete(self) -> None:
        # max_header_bytes already bounds what the parser held; the count is checked here,
        # once, rather than on every header.
        if len(self.headers) > self.limits.max_headers:
            raise _TooManyHeaders
        self._head_open = False
        self._head_bytes = 0
        if self._timer is not None:
            self._cancel()
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        if self._timer is not None:
            self._cancel()
        self._head_open = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        cycle = self.cycle
        # a pipelined request that has just started may still be sending its body
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._arm(self.limits.body_timeout, self._body_timed_out)

    # Timers

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._busy():
            return
        if self._head_bytes:
            seconds = self.limits.header_timeout
            self._refuse(problems.REQUEST_TIMEOUT, f"the request head took over {seconds:g} s")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        seconds = self.limits.body_timeout
        self._refuse(problems.REQUEST_TIMEOUT, f"the request body took over {seconds:g} s")

    def shutdown(self) -> None:
        """Graceful shutdown: as uvicorn's, but a response still streaming (an SSE stream,
        which never ends by itself) is cut after a short grace instead of holding up the
        shutdown until its timeout."""
        super().shutdown()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.loop.call_later(STREAM_GRACE_SECONDS, self._end_stream)

    def _end_stream(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
