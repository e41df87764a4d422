from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket

import pytest

from eventctl.config import PropagatorConfig
from eventctl.consumer.server import (
    PROMETHEUS_ENV,
    WORKER_CONFIG_ENV,
    _environment,
    _ignoring_signals,
    listen,
    local_url,
)
from eventctl.errors import Unavailable
from eventctl.propagator.run import _frozen_heap, propagator_transport

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
    def transport_for(*endpoints: str) -> str:
        cfg = PropagatorConfig(api_endpoint=endpoints)
        return type(propagator_transport(cfg)).__name__

    assert transport_for("http://127.0.0.1:8000/event") == "LeanTransport"
    assert transport_for("http://127.0.0.1:8000/event", "http://[::1]:8001/e") == "LeanTransport"
    assert transport_for("https://events.example/event") == "AiohttpTransport"
    assert transport_for("http://127.0.0.1:8000/event", "https://b.example/") == "AiohttpTransport"


def test_the_workers_environment_is_set_for_the_block_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROMETHEUS_ENV, "before")
    monkeypatch.delenv(WORKER_CONFIG_ENV, raising=False)
    with _environment({WORKER_CONFIG_ENV: "{}", PROMETHEUS_ENV: "/tmp/m"}):
        assert os.environ[WORKER_CONFIG_ENV] == "{}"
        assert os.environ[PROMETHEUS_ENV] == "/tmp/m"
    assert WORKER_CONFIG_ENV not in os.environ
    assert os.environ[PROMETHEUS_ENV] == "before"


def test_serve_puts_back_the_signal_handlers_it_found() -> None:
    def mine(signum: int, frame: object) -> None:
        del signum, frame

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with _ignoring_signals(signal.SIGINT, signal.SIGTERM):
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_propagators_frozen_heap_is_given_back_to_the_collector() -> None:
    before = gc.get_freeze_count()
    with _frozen_heap():
        assert gc.get_freeze_count() >= before
    assert gc.get_freeze_count() == 0
