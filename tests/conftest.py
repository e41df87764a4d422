"""Fixtures: a clean environment, databases on each backend, a running consumer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventctl.store import Store
from tests.helpers import (
    SPOOL_ENV,
    Server,
    drop_events_table,
    postgres_url,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("EVENTCTL_") and not name.startswith("EVENTCTL_TEST_"):
            monkeypatch.delenv(name)
    # every test's subprocesses get a spool of their own, never the checkout's .eventctl/
    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "spool.db"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    url = postgres_url()
    drop_events_table(url)
    yield url
    drop_events_table(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url, create=True)
    yield opened
    opened.close()


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(sqlite_url, tmp_path)
    yield running
    running.stop()
