"""The database file under a hostile operator: deleted, replaced, on a full disk, locked.

The end-to-end tests run a real `eventctl serve`, break its SQLite file from outside, keep
posting, restart it, and require every event that was answered 200 to be in the database.
A full disk is a real one: a small tmpfs mounted for the test (root only; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.errors import DatabaseError
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import Server, in_process

EVENT = {"event_type": "order.created", "event_payload": "x" * 2000}
DISK_BYTES = 1024 * 1024


def post(server: Server, key: str) -> httpx.Response:
    return httpx.post(
        server.url + "/event", json=EVENT, headers={"Idempotency-Key": key}, timeout=10
    )


def stored(url: str, ids: set[str]) -> set[str]:
    store = Store.open(url)
    try:
        return {event_id for event_id in ids if store.event(event_id) is not None}
    finally:
        store.close()


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        result: str = connection.execute("PRAGMA integrity_check").fetchone()[0]
    return result


def warnings(stderr: str) -> list[str]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if line["level"] == "warning"]


def test_deleting_the_database_while_serving_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    server = Server(url, tmp_path)
    try:
        assert post(server, "before").status_code == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        answers = {f"after-{i}": post(server, f"after-{i}") for i in range(10)}
        ready = httpx.get(server.url + "/readyz", timeout=10)
    finally:
        _, stderr = server.stop()
    assert {r.status_code for r in answers.values()} <= {200, 503}
    acknowledged = {key for key, r in answers.items() if r.status_code == 200}
    assert len(acknowledged) >= 9  # at most the commit under way at the rm is refused
    assert ready.status_code == 200, ready.text
    assert any("events.db was deleted" in line for line in warnings(stderr)), stderr
    restarted = Server(url, tmp_path)
    restarted.stop()
    assert stored(url, set(answers)) == acknowledged
    assert integrity(path) == "ok"


def test_moving_another_database_over_it_while_serving_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}", create=True)
    other.insert([Incoming("other-1", Event("t", "kept"), datetime.now(UTC))])
    other.close()
    server = Server(url, tmp_path)
    try:
        assert post(server, "before").status_code == 200
        os.replace(tmp_path / "other.db", path)
        answers = {f"after-{i}": post(server, f"after-{i}") for i in range(5)}
        ready = httpx.get(server.url + "/readyz", timeout=10)
    finally:
        _, stderr = server.stop()
    acknowledged = {key for key, r in answers.items() if r.status_code == 200}
    assert len(acknowledged) >= 4
    assert ready.status_code == 200, ready.text
    assert any("events.db was replaced" in line for line in warnings(stderr)), stderr
    Server(url, tmp_path).stop()
    assert stored(url, {*answers, "other-1", "before"}) == acknowledged | {"other-1"}
    assert integrity(path) == "ok"


def test_deleting_only_the_wal_file_then_kill_9_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    url = f"sqlite:///{path}"
    server = Server(url, tmp_path)
    try:
        # acknowledged, and (below the autocheckpoint) only in the -wal file
        before = {f"before-{i}": post(server, f"before-{i}") for i in range(5)}
        Path(f"{path}-wal").unlink()
        after = {f"after-{i}": post(server, f"after-{i}") for i in range(3)}
    finally:
        server.process.kill()
        _, stderr = server.process.communicate(timeout=10)
    answers = before | after
    acknowledged = {key for key, r in answers.items() if r.status_code == 200}
    assert len(acknowledged) >= 7
    assert any("events.db-wal was deleted" in line for line in warnings(stderr)), stderr
    Server(url, tmp_path).stop()
    assert stored(url, set(answers)) == acknowledged
    assert integrity(path) == "ok"


def test_a_replacement_that_is_not_an_eventctl_database_stays_503(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(tmp_path / "notes.db") as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    server = Server(f"sqlite:///{path}", tmp_path)
    try:
        assert post(server, "before").status_code == 200
        os.replace(tmp_path / "notes.db", path)
        went_to_the_old_file = post(server, "after-0")
        refused = post(server, "after-1")
        ready = httpx.get(server.url + "/readyz", timeout=10)
    finally:
        server.stop()
    assert went_to_the_old_file.status_code == 503
    assert refused.status_code == ready.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    for answer in (refused, ready):
        assert answer.json()["code"] == "database_unavailable"
        assert "no events table" in answer.json()["message"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own, so that the disk can really fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system to fill up")
    command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _write_blocks(fd: int, count: int) -> None:
    for _ in range(count):
        os.write(fd, b"\0" * 4096)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (unlink it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left on device"):
            _write_blocks(fd, 2 * DISK_BYTES // 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_says_so_not_what_the_rollback_said(small_disk: Path) -> None:
    store = Store.open(f"sqlite:///{small_disk / 'events.db'}", create=True)
    big = [Incoming(f"e{i}", Event("t", "x" * 20_000), datetime.now(UTC)) for i in range(20)]
    try:
        fill(small_disk)
        with pytest.raises(DatabaseError) as caught:
            store.insert(big)
    finally:
        store.close()
    message = str(caught.value)
    assert "the disk is full" in message
    assert "rollback" not in message


def test_on_a_full_disk_posts_and_readyz_are_503_and_readiness_recovers_by_itself(
    small_disk: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{small_disk / 'events.db'}"
    server = Server(url, tmp_path)
    try:
        assert post(server, "before").status_code == 200
        filler = fill(small_disk)
        answers = {f"full-{i}": post(server, f"full-{i}") for i in range(20)}
        refused = [r for r in answers.values() if r.status_code == 503]
        not_ready = httpx.get(server.url + "/readyz", timeout=10)
        filler.unlink()
        ready = httpx.get(server.url + "/readyz", timeout=10)  # no POST in between
        after = post(server, "after")
    finally:
        server.stop()
    assert refused, "the disk never filled up"
    assert refused[-1].json()["code"] == "database_unavailable"
    assert "the disk is full" in refused[-1].json()["message"]
    assert "rollback" not in refused[-1].json()["message"]
    assert not_ready.status_code == 503
    assert not_ready.json()["code"] == "database_unavailable"
    assert "the disk is full" in not_ready.json()["message"]
    assert ready.status_code == 200, ready.text
    assert after.status_code == 200
    acknowledged = {key for key, r in answers.items() if r.status_code == 200}
    assert stored(url, {*answers, "before", "after"}) == acknowledged | {"before", "after"}


@pytest.mark.anyio
async def test_readiness_follows_the_writer_and_recovers_without_traffic(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True, busy_timeout_ms=50)
    try:
        async with in_process(create_app(ConsumerConfig(), store)) as client:
            assert (await client.get("/readyz")).status_code == 200
            lock = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # reads still work, writes do not
            failed = await client.post("/event", json=EVENT)
            not_ready = await client.get("/readyz")
            lock.rollback()
            lock.close()
            ready = await client.get("/readyz")
    finally:
        store.close()
    assert failed.status_code == not_ready.status_code == 503
    assert not_ready.json()["code"] == "database_unavailable"
    assert "locked" in not_ready.json()["message"]
    assert ready.status_code == 200
