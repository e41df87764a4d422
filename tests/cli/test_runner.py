from __future__ import annotations

import asyncio
import socket

import pytest

from eventctl.config import PropagatorConfig
from eventctl.consumer.server import listen, local_url
from eventctl.errors import Unavailable
from eventctl.propagator.run import propagator_transport

pytestmark = pytest.mark.anyio


async def test_accepted_connections_have_nagle_off() -> None:
    """Regression: a listening socket made without proto=TCP gave every keep-alive
    response a 40 ms delayed-ACK stall, because asyncio then skips TCP_NODELAY."""
    sock = listen("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = writer.get_extra_info("socket")
        accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(connected, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await accepted != 0
        writer.close()


def test_a_port_in_use_is_unavailable() -> None:
    first = listen("127.0.0.1", 0)
    try:
        with pytest.raises(Unavailable, match="address already in use"):
            listen("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_local_url_replaces_wildcards_with_loopback() -> None:
    sock = listen("0.0.0.0", 0)
    try:
        assert local_url(sock, "/event") == f"http://127.0.0.1:{sock.getsockname()[1]}/event"
    finally:
        sock.close()


def test_the_propagator_sends_http_through_lean_transport_and_https_through_aiohttp() -> None:
    def transport_for(endpoint: str) -> str:
        cfg = PropagatorConfig(api_endpoint=endpoint)
        return type(propagator_transport(cfg)).__name__

    assert transport_for("http://127.0.0.1:8000/event") == "LeanTransport"
    assert transport_for("https://events.example/event") == "AiohttpTransport"
