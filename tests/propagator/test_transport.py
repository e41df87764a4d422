"""LeanTransport against a scripted loopback peer and against the real consumer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import httpx
import pytest

from eventctl.auth import Credentials
from eventctl.delivery import post_once, timeout_extensions
from eventctl.events import Event
from eventctl.retry import transport_error_text
from eventctl.store import Store
from eventctl.transport import LeanTransport
from tests.helpers import Server, free_port

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
OK_BODY = b'{"status":"success"}'

Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A loopback HTTP/1.1 peer: reads each request whole, then runs `script` on it."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/event"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(found.group(1)) if found else 0)
                self.requests.append(head + body)
                await self.script(head + body, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


PeerFactory = Callable[[Script], Awaitable[Peer]]


@pytest.fixture
async def peer_factory() -> AsyncIterator[PeerFactory]:
    peers: list[Peer] = []

    async def start(script: Script) -> Peer:
        peer = Peer(script)
        peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        assert peer.server is not None
        peer.server.close()


async def ok(request: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(OK + OK_BODY)


def post(url: str, body: bytes = b"{}", timeout: float = 5.0, key: str = "k-1") -> httpx.Request:
    return httpx.Request(
        "POST",
        url,
        headers=[(b"Content-Type", b"application/json"), (b"Idempotency-Key", key.encode())],
        stream=httpx.ByteStream(body),
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )


async def test_requests_share_one_keep_alive_connection(peer_factory: PeerFactory) -> None:
    peer = await peer_factory(ok)
    async with LeanTransport() as transport:
        for _ in range(20):
            response = await transport.handle_async_request(post(peer.url, b'{"a":1}'))
            assert response.status_code == 200
            assert await response.aread() == OK_BODY
            assert response.headers["content-type"] == "application/json"
    assert peer.connections == 1
    first = peer.requests[0]
    assert first.startswith(b"POST /event HTTP/1.1\r\n")
    assert re.search(rb"\r\nHost: 127\.0\.0\.1:\d+\r\n", first)
    assert b"\r\nIdempotency-Key: k-1\r\n" in first
    assert b"\r\nContent-Length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_concurrent_requests_open_at_most_max_connections(peer_factory: PeerFactory) -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(OK + OK_BODY)

    peer = await peer_factory(slow)
    async with LeanTransport(max_connections=3) as transport:
        answers = await asyncio.gather(
            *(transport.handle_async_request(post(peer.url)) for _ in range(12))
        )
    assert [a.status_code for a in answers] == [200] * 12
    assert peer.connections == 3


async def test_a_connection_the_server_closes_is_not_reused(peer_factory: PeerFactory) -> None:
    async def close_after(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + OK_BODY)
        await writer.drain()
        writer.close()

    peer = await peer_factory(close_after)
    async with LeanTransport() as transport:
        for _ in range(3):
            assert (await transport.handle_async_request(post(peer.url))).status_code == 200
    assert peer.connections == 3


async def test_an_idle_connection_is_not_reused_after_keepalive_expiry(
    peer_factory: PeerFactory,
) -> None:
    peer = await peer_factory(ok)
    async with LeanTransport(keepalive_expiry=0.05) as transport:
        await transport.handle_async_request(post(peer.url))
        await transport.handle_async_request(post(peer.url))
        await asyncio.sleep(0.1)
        await transport.handle_async_request(post(peer.url))
    assert peer.connections == 2


async def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one(
    peer_factory: PeerFactory,
) -> None:
    answered: set[asyncio.StreamWriter] = set()

    async def close_the_second(request: bytes, writer: asyncio.StreamWriter) -> None:
        if writer in answered:  # the server's keep-alive timer fired as this request came in
            writer.close()
            return
        writer.write(OK + OK_BODY)
        answered.add(writer)

    peer = await peer_factory(close_the_second)
    async with LeanTransport() as transport:
        for _ in range(3):
            assert (await transport.handle_async_request(post(peer.url))).status_code == 200
    assert peer.connections == 3
    assert len(peer.requests) == 5  # 1 + (1 lost + 1 retried) + (1 lost + 1 retried)


async def test_a_new_connection_closed_before_answering_is_not_retried(
    peer_factory: PeerFactory,
) -> None:
    async def close(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    peer = await peer_factory(close)
    async with LeanTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.handle_async_request(post(peer.url))
    assert len(peer.requests) == 1


async def test_a_chunked_answer_is_read_whole(peer_factory: PeerFactory) -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
            b"Retry-After: 2\r\n\r\n4\r\nbusy\r\n6\r\n, wait\r\n0\r\n\r\n"
        )

    peer = await peer_factory(chunked)
    async with LeanTransport() as transport:
        response = await transport.handle_async_request(post(peer.url))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert await response.aread() == b"busy, wait"
        assert (await transport.handle_async_request(post(peer.url))).status_code == 503
    assert peer.connections == 1


async def test_a_peer_that_drops_the_connection_is_a_protocol_error(
    peer_factory: PeerFactory,
) -> None:
    async def drop(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"sta')
        await writer.drain()
        writer.close()

    peer = await peer_factory(drop)
    async with LeanTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(post(peer.url))
    assert transport_error_text(caught.value) == "connection dropped"


async def test_a_malformed_answer_is_a_protocol_error(peer_factory: PeerFactory) -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")

    peer = await peer_factory(garbage)
    async with LeanTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed response"):
            await transport.handle_async_request(post(peer.url))


async def test_no_answer_in_time_is_a_read_timeout(peer_factory: PeerFactory) -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    peer = await peer_factory(silent)
    async with LeanTransport() as transport:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await transport.handle_async_request(post(peer.url, timeout=0.2))
    assert transport_error_text(caught.value) == "timeout"


async def test_one_timer_times_out_each_exchange_near_its_own_deadline(
    peer_factory: PeerFactory,
) -> None:
    async def answer_some(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"slow" in request:
            await asyncio.sleep(10)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    peer = await peer_factory(answer_some)
    loop = asyncio.get_running_loop()

    async def timed(transport: LeanTransport, body: bytes, timeout: float) -> float | None:
        started = loop.time()
        try:
            await transport.handle_async_request(post(peer.url, body, timeout=timeout))
        except httpx.ReadTimeout:
            return loop.time() - started
        return None

    async with LeanTransport() as transport:
        waits = await asyncio.gather(
            timed(transport, b"slow", 0.4),
            timed(transport, b"slow", 0.8),
            *(timed(transport, b"fast", 0.4) for _ in range(20)),
        )
        assert waits[2:] == [None] * 20  # answered in time: never timed out after
        late = [wait - timeout for wait, timeout in zip(waits[:2], (0.4, 0.8), strict=True)]
        assert all(0 <= x < 0.05 for x in late if x is not None), waits
        assert None not in waits[:2]
        await asyncio.sleep(0.3)
        assert not transport._deadlines.due  # nothing left to watch, no timer left running
        assert transport._deadlines.timer is None


async def test_a_short_timeout_once_does_not_leave_the_timer_firing_often(
    peer_factory: PeerFactory,
) -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    peer = await peer_factory(silent)
    async with LeanTransport() as transport:
        deadlines = transport._deadlines
        sweeps = 0
        sweep = deadlines.sweep

        def counted() -> None:
            nonlocal sweeps
            sweeps += 1
            sweep()

        deadlines.sweep = counted  # type: ignore[method-assign]
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(post(peer.url, timeout=0.005))
        waiting = asyncio.ensure_future(transport.handle_async_request(post(peer.url)))
        await asyncio.sleep(0.5)
        assert sweeps <= 2  # the short timeout's, and none while the 5 s one waits
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


async def test_nobody_listening_is_a_connect_error() -> None:
    async with LeanTransport() as transport:
        with pytest.raises(httpx.ConnectError) as caught:
            await transport.handle_async_request(post(f"http://127.0.0.1:{free_port()}/event"))
    assert transport_error_text(caught.value) == "connection refused"


async def test_https_is_refused_not_sent_in_the_clear() -> None:
    async with LeanTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(post("https://127.0.0.1:1/event"))


async def test_against_the_real_consumer(server: Server, sqlite_url: str) -> None:
    url = f"{server.url}/event"
    async with LeanTransport() as transport:
        for n in [*range(10), 9]:
            body = b'{"event_type":"t","event_payload":"%d"}' % n
            response = await transport.handle_async_request(post(url, body, key=f"k-{n}"))
            assert response.status_code == 200, await response.aread()
            assert await response.aread() == b'{"status":"success"}'
        assert response.headers["Idempotent-Replayed"] == "true"
    store = Store.open(sqlite_url)
    try:
        assert sorted(e.event_payload for e in store.events(limit=20)) == [
            str(n) for n in range(10)
        ]
    finally:
        store.close()


class ThroughHttpx(httpx.AsyncBaseTransport):
    """A LeanTransport seen only through httpx's interface (post_once's other path)."""

    def __init__(self, lean: LeanTransport) -> None:
        self.lean = lean

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.lean.handle_async_request(request)


async def test_post_once_sends_the_same_bytes_by_both_paths(peer_factory: PeerFactory) -> None:
    async def replayed_503(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 503 Busy\r\nRETRY-AFTER: 7\r\nidempotent-replayed: true\r\n"
            b"Content-Length: 0\r\n\r\n"
        )

    peer = await peer_factory(replayed_503)
    url = httpx.URL(peer.url)
    credentials = Credentials(token="t0ken")
    attempts = []
    async with LeanTransport() as lean:
        for transport in (lean, ThroughHttpx(lean), lean):
            attempts.append(
                await post_once(
                    transport,
                    url,
                    credentials,
                    "evt_1",
                    Event("order.created", "x"),
                    extensions=timeout_extensions(2.0),
                    clock=time.monotonic,
                    wall_clock=lambda: datetime.now(UTC),
                )
            )
    assert [(a.status, a.retry_after, a.replayed, a.error) for a in attempts] == [
        (503, 7.0, True, None)
    ] * 3
    assert peer.requests[0] == peer.requests[1] == peer.requests[2]
    assert peer.requests[0].startswith(b"POST /event HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer t0ken\r\n" in peer.requests[0]
    assert peer.connections == 1


async def test_post_is_cut_off_at_its_deadline_however_the_peer_trickles(
    peer_factory: PeerFactory,
) -> None:
    async def trickle(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):  # a byte every 50 ms: no per-read timeout ever fires
            await writer.drain()
            writer.write(b"x")
            await asyncio.sleep(0.05)

    peer = await peer_factory(trickle)
    loop = asyncio.get_running_loop()
    async with LeanTransport() as transport:
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout) as caught:
            await transport.post(
                httpx.URL(peer.url),
                [],
                b"{}",
                timeouts=httpx.Timeout(2.0).as_dict(),
                deadline=started + 0.3,
            )
        assert loop.time() - started < 1.0
    assert transport_error_text(caught.value) == "timeout"


async def test_post_waiting_for_a_free_connection_is_cut_off_at_its_deadline(
    peer_factory: PeerFactory,
) -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)
        writer.write(OK + OK_BODY)

    peer = await peer_factory(slow)
    url = httpx.URL(peer.url)
    loop = asyncio.get_running_loop()
    timeouts = httpx.Timeout(5.0).as_dict()
    async with LeanTransport(max_connections=1) as transport:
        first = asyncio.create_task(transport.post(url, [], b"{}", timeouts=timeouts))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(httpx.PoolTimeout):
            await transport.post(url, [], b"{}", timeouts=timeouts, deadline=started + 0.2)
        assert loop.time() - started < 0.6
        status, headers = await first
    assert status == 200
    assert (b"Content-Type", b"application/json") in headers
    assert peer.connections == 1


async def test_post_over_https_is_refused() -> None:
    async with LeanTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.post(httpx.URL("https://127.0.0.1:1/event"), [], b"{}", timeouts={})
