"""The group-commit writer with a real database: file replacement, readiness, idempotency."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.consumer.writer import Writer
from eventctl.errors import DatabaseError, IdempotencyConflict
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import in_process

pytestmark = pytest.mark.anyio

GOOD = {"event_type": "order.created", "event_payload": "1"}


def rec(event_id: str, payload: str = "p", event_type: str = "t") -> Incoming:
    return Incoming(event_id, Event(event_type, payload), datetime.now(UTC))


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def stored_ids(url: str) -> set[str]:
    store = Store.open(url)
    try:
        return {e.event_id for e in store.events(limit=1000)}
    finally:
        store.close()


@pytest.fixture
async def writer(store: Store) -> AsyncIterator[Writer]:
    running = Writer(store, max_wait=0.3)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


async def test_a_file_deleted_during_a_commit_is_not_acknowledged_and_the_writer_reopens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    store = Store.open(url, create=True)
    writer = Writer(store)
    writer.start()
    try:
        assert await writer.write([rec("first")]) == {"first"}
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        during = asyncio.ensure_future(writer.write([rec("during")]))
        await asyncio.sleep(0.5)  # the writer checked the file and now waits for the lock
        remove_database(path)
        lock.rollback()
        lock.close()
        with pytest.raises(DatabaseError, match="deleted or replaced"):
            await during
        assert await writer.write([rec("after")]) == {"after"}
    finally:
        await asyncio.to_thread(writer.stop)
        store.close()
    assert stored_ids(url) == {"after"}


async def test_readers_never_read_the_deleted_file_and_follow_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    store = Store.open(url, create=True)
    writer = Writer(store)
    writer.start()
    try:
        await writer.write([rec("old")])
        assert [e.event_id for e in store.events(limit=5)] == ["old"]
        remove_database(path)
        with pytest.raises(DatabaseError, match="deleted or replaced"):
            store.events(limit=5)
        with pytest.raises(DatabaseError):
            store.ping()
        with pytest.raises(DatabaseError, match="went to the old file"):
            await writer.write([rec("lost")])
        assert await writer.write([rec("new")]) == {"new"}
        assert [e.event_id for e in store.events(limit=5)] == ["new"]
        store.ping()
    finally:
        await asyncio.to_thread(writer.stop)
        store.close()


async def test_a_replacement_that_is_not_an_eventctl_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    store = Store.open(url, create=True)
    writer = Writer(store)
    writer.start()
    try:
        await writer.write([rec("first")])
        os.replace(other, path)
        with pytest.raises(DatabaseError, match="went to the old file"):
            await writer.write([rec("lost")])
        for _ in range(2):
            with pytest.raises(DatabaseError, match="no events table"):
                await writer.write([rec("lost")])
    finally:
        await asyncio.to_thread(writer.stop)
        store.close()
    with sqlite3.connect(path) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}


async def test_last_error_follows_the_commits_and_a_probe_checks_the_write_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    store = Store.open(f"sqlite:///{path}", create=True, busy_timeout_ms=50)
    writer = Writer(store)
    writer.start()
    try:
        await writer.probe()
        assert writer.last_error is None
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseError, match="locked"):
            await writer.write([rec("a")])
        assert writer.last_error is not None
        with pytest.raises(DatabaseError, match="locked"):
            await writer.probe()
        lock.rollback()
        lock.close()
        await writer.probe()
        assert writer.last_error is None
        assert store.count() == 0  # the probe leaves nothing behind
    finally:
        await asyncio.to_thread(writer.stop)
        store.close()


async def test_in_one_group_only_the_conflicting_request_is_refused(
    store: Store, writer: Writer
) -> None:
    await writer.write([rec("k", "A")])
    results = await asyncio.gather(
        writer.write([rec("x1")]),
        writer.write([rec("k", "B")]),
        writer.write([rec("b/0"), rec("n", "first"), rec("b/2")]),
        writer.write([rec("k", "A")]),
        writer.write([rec("n", "second")]),
        writer.write([rec("c/0"), rec("k", "A", "other type")]),
        return_exceptions=True,
    )
    assert results[0] == {"x1"}
    assert isinstance(results[1], IdempotencyConflict)
    assert (results[1].event_id, results[1].index) == ("k", 0)
    assert results[2] == {"b/0", "n", "b/2"}
    assert results[3] == set()  # a true retry
    assert isinstance(results[4], IdempotencyConflict)
    assert results[4].event_id == "n"
    assert isinstance(results[5], IdempotencyConflict)
    assert (results[5].event_id, results[5].index) == ("k", 1)
    rows = {e.event_id: (e.event_type, e.event_payload) for e in store.events(limit=50)}
    assert rows == {
        "k": ("t", "A"),
        "x1": ("t", "p"),
        "b/0": ("t", "p"),
        "n": ("t", "first"),
        "b/2": ("t", "p"),
    }


async def test_a_group_of_single_events_settles_new_replayed_and_conflicting_ids(
    store: Store, writer: Writer
) -> None:
    """One-event requests take the single-INSERT path; ids that are not new are settled
    after it, exactly as in a transaction."""
    await writer.write([rec("old", "A")])
    results = await asyncio.gather(
        writer.write([rec("n1")]),
        writer.write([rec("old", "A")]),
        writer.write([rec("old", "B")]),
        writer.write([rec("n2", "first")]),
        writer.write([rec("n2", "first")]),
        writer.write([rec("n2", "second")]),
        return_exceptions=True,
    )
    assert results[0] == {"n1"}
    assert results[1] == set()
    assert isinstance(results[2], IdempotencyConflict)
    assert results[2].event_id == "old"
    assert results[3] == {"n2"}
    assert results[4] == set()
    assert isinstance(results[5], IdempotencyConflict)
    rows = {e.event_id: e.event_payload for e in store.events(limit=50)}
    assert rows == {"old": "A", "n1": "p", "n2": "first"}


async def test_an_unexpected_error_in_the_writer_refuses_the_batch_and_the_writer_goes_on(
    store: Store, writer: Writer
) -> None:
    broken = Incoming("broken", Event("t", "p"), None)  # type: ignore[arg-type]
    with pytest.raises(DatabaseError, match="internal error in the writer"):
        await asyncio.wait_for(writer.write([broken]), timeout=10)
    assert await writer.write([rec("after")]) == {"after"}
    assert {e.event_id for e in store.events(limit=10)} == {"after"}


async def test_two_writers_racing_on_each_key_never_both_succeed(
    database_url: str, store: Store
) -> None:
    second = Store.open(database_url)
    writers = [Writer(store, max_wait=0.01), Writer(second, max_wait=0.01)]
    for running in writers:
        running.start()
    try:
        results = await asyncio.gather(
            *(
                writers[side].write([rec(f"key-{i}", f"from {side}")])
                for i in range(30)
                for side in (0, 1)
            ),
            return_exceptions=True,
        )
    finally:
        for running in writers:
            await asyncio.to_thread(running.stop)
        second.close()
    rows = {e.event_id: e.event_payload for e in store.events(limit=100)}
    for i in range(30):
        first, other = results[2 * i], results[2 * i + 1]
        outcomes = sorted(type(r).__name__ for r in (first, other))
        assert outcomes == ["IdempotencyConflict", "set"], (first, other)
        winner = 0 if isinstance(first, set) else 1
        assert rows[f"key-{i}"] == f"from {winner}"


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(ConsumerConfig(), store)) as c:
        yield c


async def test_a_key_that_collides_with_a_batch_id_refuses_the_whole_batch(
    client: httpx.AsyncClient, store: Store
) -> None:
    assert (await client.post("/event", json=GOOD, headers={"Idempotency-Key": "kk/0"})).is_success
    events = [{"event_type": "batch", "event_payload": str(i)} for i in range(3)]
    response = await client.post("/events", json=events, headers={"Idempotency-Key": "kk"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "idempotency_key_reused"
    assert "kk/0" in body["message"]
    assert body["errors"] == [{"field": "Idempotency-Key", "index": 0, "message": body["message"]}]
    assert [e.event_id for e in store.events(limit=10)] == ["kk/0"]


async def test_a_reused_key_for_another_event_is_422_and_a_true_retry_is_replayed(
    client: httpx.AsyncClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "evt-42"}
    first = await client.post("/event", json=GOOD, headers=headers)
    retry = await client.post("/event", json=GOOD, headers=headers)
    other = await client.post("/event", json={**GOOD, "event_payload": "2"}, headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    body = other.json()
    assert body["code"] == "idempotency_key_reused"
    assert "evt-42" in body["message"]
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert "index" not in body["errors"][0]
    [row] = store.events(limit=5)
    assert row.event_payload == "1"
