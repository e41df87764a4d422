"""propagate_events in this process: what it reads (environ), where it writes (the streams it
is given), and what it changes in the process (signals, the collector), put back after."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from types import FrameType

import pytest

from eventctl.auth import AUTH_TOKEN_ENV
from eventctl.config import PropagatorConfig
from eventctl.events import Event
from eventctl.propagator.propagator import Stats
from eventctl.propagator.run import DisplayMode, propagate_events, propagator_credentials
from eventctl.propagator.templates import EventPool
from eventctl.store import Store
from tests.helpers import Server

EVENTS = EventPool.plain([Event("order.created", "1"), Event("order.paid", "2")])


def config(tmp_path: Path, endpoint: str = "http://127.0.0.1:9/event") -> PropagatorConfig:
    return PropagatorConfig(
        api_endpoint=(endpoint,),
        interval_seconds=0.01,
        spool_path=str(tmp_path / "run-spool.db"),
        events_file=str(tmp_path / "events.json"),
        retry_max_elapsed_seconds=2.0,
    )


class Streams:
    def __init__(self) -> None:
        self.stdout, self.stderr = StringIO(), StringIO()


def propagate(
    cfg: PropagatorConfig,
    streams: Streams,
    *,
    count: int | None,
    duration: float | None = None,
    mode: DisplayMode = DisplayMode.LOG,
) -> Stats:
    return propagate_events(
        cfg,
        EVENTS,
        count=count,
        duration=duration,
        seed=1,
        mode=mode,
        environ={},
        stdout=streams.stdout,
        stderr=streams.stderr,
    )


def mine(signum: int, frame: FrameType | None) -> None:
    del signum, frame


@pytest.fixture
def own_handlers() -> Iterator[None]:
    """SIGINT and SIGTERM set to `mine` for the test, the originals put back after."""
    found = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in found.items():
        signal.signal(sig, handler)


def test_credentials_come_from_the_environ_given_never_the_processs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_TOKEN_ENV, "the-process-token")
    cfg = config(tmp_path)
    assert propagator_credentials(cfg, {}).token is None
    assert propagator_credentials(cfg, {AUTH_TOKEN_ENV: "given"}).token == "given"


def test_a_run_authenticates_with_the_environ_it_is_given(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = Server(sqlite_url, tmp_path, "--auth-token-file", str(token))
    monkeypatch.setenv(AUTH_TOKEN_ENV, "wrong")  # the process's own would be refused
    try:
        stats = propagate_events(
            config(tmp_path, server.url + "/event"),
            EVENTS,
            count=3,
            duration=None,
            seed=1,
            mode=DisplayMode.QUIET,
            environ={AUTH_TOKEN_ENV: "s3cret"},
            stdout=StringIO(),
            stderr=StringIO(),
        )
    finally:
        server.stop()
    assert (stats.delivered, stats.failed) == (3, 0)
    store = Store.open(sqlite_url)
    assert store.count() == 3
    store.close()


def test_a_run_writes_only_to_the_streams_it_is_given(
    server: Server, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    streams = Streams()
    stats = propagate(
        config(tmp_path, server.url + "/event"), streams, count=4, mode=DisplayMode.JSON
    )
    assert stats.delivered == 4
    assert capfd.readouterr() == ("", "")
    lines = [json.loads(line) for line in streams.stdout.getvalue().splitlines()]
    assert [line["kind"] for line in lines] == ["delivered"] * 4 + ["summary"]
    assert streams.stderr.getvalue().startswith("eventctl propagate: 4 sent")

    streams = Streams()
    propagate(config(tmp_path, "http://127.0.0.1:9/event"), streams, count=1)
    assert capfd.readouterr() == ("", "")
    log = streams.stderr.getvalue()
    assert "failed" in log
    assert "eventctl spool list" in log  # the hints go to the same stream
    assert streams.stdout.getvalue() == ""


@pytest.mark.usefixtures("own_handlers")
def test_signals_stop_the_run_and_the_handlers_found_are_put_back(
    server: Server, tmp_path: Path
) -> None:
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        stats = propagate(
            config(tmp_path, server.url + "/event"), Streams(), count=None, duration=30
        )
    finally:
        timer.cancel()
    assert stats.finished_at is not None
    assert stats.finished_at - stats.started_at < 10  # stopped by SIGTERM, not by --duration
    assert stats.generated > 0
    assert stats.all_delivered
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is mine


class FreezeProbe(StringIO):
    """A stdout that notes how much of the heap is frozen whenever something is written."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: list[int] = []

    def write(self, text: str) -> int:
        self.frozen.append(gc.get_freeze_count())
        return super().write(text)


def test_the_heap_is_frozen_for_the_run_only(server: Server, tmp_path: Path) -> None:
    cfg = config(tmp_path, server.url + "/event")
    streams = Streams()
    probe = streams.stdout = FreezeProbe()
    assert gc.get_freeze_count() == 0
    propagate(cfg, streams, count=2, mode=DisplayMode.JSON)
    assert probe.frozen[0] > 0  # the first record, written during the run
    assert gc.get_freeze_count() == 0

    gc.freeze()  # someone else's frozen heap: a run must leave it frozen
    try:
        before = gc.get_freeze_count()
        propagate(cfg, Streams(), count=1)
        after = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert after == before
