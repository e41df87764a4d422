"""Sending HTTP: a lean HTTP/1.1 transport for httpx, and the transport for a URL.

Both sides deliver events: the propagator POSTs what it generates, the consumer forwards what
it stored. Many small POSTs a second to one plain-http endpoint: httpx's own pool and even
aiohttp's spend most of their CPU on generality this path never uses (HTTP/2, proxies,
cookies, streaming bodies); bench/propagate.py measures the difference. `LeanTransport` keeps
httpx's Request and Response types and its exceptions, so retries, tests with
`httpx.MockTransport` and every other caller see httpx. It serves `http://` only;
`http_transport` gives `https://` httpx-aiohttp's transport.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import httptools
import httpx

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.closed = False
        self.keep_alive = False
        self.answered = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(
                httpx.RemoteProtocolError("server disconnected without sending a response")
            )

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def time_out(self) -> None:
        if self.waiter is None or self.waiter.done():
            return  # answered in the same turn of the loop: the connection stays good
        self._fail(httpx.ReadTimeout("no answer in time"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self, data: bytes, timeout: float | None, watch: _Deadlines
    ) -> tuple[int, list[Any], bytes]:
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.headers, self.body, self.answered = [], [], False
        assert self.transport is not None
        self.transport.write(data)
        if timeout is not None:
            watch.add(self, timeout)
        try:
            await waiter
        except BaseException:
            self.close()  # a connection left mid-exchange is of no further use
            raise
        finally:
            self.waiter = None
            if timeout is not None:
                watch.discard(self)
        status = self.parser.get_status_code()
        if not self.keep_alive:
            self.close()
        return status, self.headers, b"".join(self.body)


class _Deadlines:
    """The deadlines of the exchanges under way, watched by one timer for all, set for the
    earliest: a timer per exchange (call_later, then cancel) cost 1.8 µs, a tenth of a
    POST. Exchanges of one timeout end in the order they began, so the timer is set again
    only when it fires (every `timeout`, for the oldest exchange then under way), or when a
    shorter timeout comes due before it."""

    def __init__(self) -> None:
        self.due: dict[_Connection, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.at = math.inf  # when the timer fires

    def add(self, connection: _Connection, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + timeout
        self.due[connection] = at
        if at < self.at:
            self._arm(loop, at)

    def discard(self, connection: _Connection) -> None:
        self.due.pop(connection, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.at = at
        self.timer = loop.call_at(at, self.sweep)

    def sweep(self) -> None:
        self.timer, self.at = None, math.inf
        if not self.due:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c, at in self.due.items() if at <= now]:
            del self.due[connection]
            connection.time_out()
        if self.due:
            self._arm(loop, min(self.due.values()))

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.at = None, math.inf


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 for `http://` URLs: at most `max_connections` requests (so
    connections) at once. An idle connection is reused for up to `keepalive_expiry` seconds,
    below the 5 s after which uvicorn and Node close theirs. A reused connection that the
    server closed before answering (the request crossed its close) is retried once on a new
    connection, as browsers do; nothing of the request can have been processed, and every
    event sent carries an Idempotency-Key besides."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 4.0) -> None:
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._prefixes: dict[int, tuple[httpx.URL, bytes, tuple[str, int]]] = {}
        self._deadlines = _Deadlines()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}:// is not served by LeanTransport")
        if isinstance(request.stream, httpx.SyncByteStream):
            content = request.read()  # no async iteration for a body already in memory
        else:
            content = await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        has_host = False
        for name, value in request.headers.raw:
            lowered = name.lower()
            if lowered not in _FRAMING:
                has_host = has_host or lowered == b"host"
                head.append(b"%s: %s\r\n" % (name, value))
        if not has_host:
            head.insert(1, b"Host: %s\r\n" % url.netloc)
        head.append(b"Content-Length: %d\r\n\r\n" % len(content))
        head.append(content)
        status, headers, body = await self._exchange(
            (url.host, url.port or 80), b"".join(head), request.extensions.get("timeout", {}), None
        )
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), request=request
        )

    async def post(
        self,
        url: httpx.URL,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        timeouts: Mapping[str, float | None],
        deadline: float | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """POST `body` to an http:// `url` without httpx's Request and Response, which cost
        more CPU than the exchange itself: the status and the raw response headers. The
        headers must not hold Host or the body's framing. `timeouts` as a request's
        "timeout" extension; `deadline` (the loop's clock) cuts off the whole send, waiting
        for a connection slot included. Raises httpx's transport errors."""
        known = self._prefixes.get(id(url))  # by identity: hashing a URL costs a microsecond
        if known is not None and known[0] is url:
            _, prefix, key = known
        else:
            if url.scheme != "http":
                raise httpx.UnsupportedProtocol(f"{url.scheme}:// is not served by LeanTransport")
            prefix = b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (url.raw_path, url.netloc)
            key = (url.host, url.port or 80)
            if len(self._prefixes) < 1_000:
                self._prefixes[id(url)] = (url, prefix, key)
        data = b"".join(
            (
                prefix,
                *[b"%s: %s\r\n" % header for header in headers],
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        status, raw, _ = await self._exchange(key, data, timeouts, deadline)
        return status, raw

    async def _exchange(
        self,
        key: tuple[str, int],
        data: bytes,
        timeouts: Mapping[str, float | None],
        deadline: float | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        connect, read = timeouts.get("connect"), timeouts.get("read")
        loop = asyncio.get_running_loop()
        if deadline is not None and self._slots.locked():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
        else:
            await self._slots.acquire()
        try:
            if deadline is not None:
                left = max(deadline - loop.time(), 0.0)
                connect = left if connect is None else min(connect, left)
            connection = self._reuse(key)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(key, connect)
            if deadline is not None:
                left = max(deadline - loop.time(), 0.0)
                read = left if read is None else min(read, left)
            try:
                answer = await connection.exchange(data, read, self._deadlines)
            except httpx.RemoteProtocolError:
                if not reused or connection.answered:
                    raise
                connection = await self._connect(key, connect)
                answer = await connection.exchange(data, read, self._deadlines)
            if not connection.closed:
                connection.idle_since = loop.time()
                self._idle.setdefault(key, deque()).append(connection)
        finally:
            self._slots.release()
        return answer

    def _reuse(self, key: tuple[str, int]) -> _Connection | None:
        """The most recently used idle connection to `key` still fit for a request."""
        idle = self._idle.get(key)
        oldest = asyncio.get_running_loop().time() - self.keepalive_expiry
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since >= oldest:
                return connection
            connection.close()
        return None

    async def _connect(self, key: tuple[str, int], timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(_Connection, *key)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {key[0]}:{key[1]} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    async def aclose(self) -> None:
        self._deadlines.close()
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def http_transport(*urls: str | httpx.URL, max_connections: int) -> httpx.AsyncBaseTransport:
    """The transport for sending to `urls`, at most `max_connections` requests at once:
    LeanTransport when all are http://, else httpx-aiohttp's pool (which serves both).
    Measured by bench/propagate.py: httpx's own pool costs several times the CPU per
    request."""
    if all(httpx.URL(url).scheme == "http" for url in urls):
        return LeanTransport(max_connections=max_connections)
    # only here: importing aiohttp costs about 150 ms, and plain-http senders never need it
    from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
    return AiohttpTransport(limits=limits)
