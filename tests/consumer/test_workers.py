"""`serve --workers N`: several processes on one port, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from eventctl.store import Store
from tests.helpers import Server, free_port, run_cli, spawn

EVENT = {"event_type": "order.created", "event_payload": '{"order_id": 1}'}


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(database_url, tmp_path, "--workers", "4")
    yield running
    code, stderr = running.stop()
    assert code == 0, stderr
    assert "database is locked" not in stderr
    assert "Traceback" not in stderr


def send_ten(url: str, client_number: int) -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for n in range(10):
            key = f"c{client_number}-{n}"
            response = client.post("/event", json=EVENT, headers={"Idempotency-Key": key})
            statuses.append(response.status_code)
    return statuses


def test_four_workers_take_200_concurrent_clients(workers: Server) -> None:
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(lambda n: send_ten(workers.url, n), range(200)))
    statuses = [s for r in results for s in r]
    assert len(statuses) == 2000
    assert set(statuses) == {200}
    store = Store.open(workers.database_url)
    try:
        assert store.count() == 2000
    finally:
        store.close()
    listed = run_cli(
        "list-events", "--json", "--limit", "5", "--database-url", workers.database_url
    )
    assert len(json.loads(listed.stdout)) == 5


def test_one_key_from_50_clients_across_workers_is_stored_once(workers: Server) -> None:
    def post(_: int) -> httpx.Response:
        return httpx.post(
            workers.url + "/event",
            json=EVENT,
            headers={"Idempotency-Key": "same-everywhere"},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))
    assert {r.status_code for r in responses} == {200}
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    store = Store.open(workers.database_url)
    try:
        assert store.count() == 1
    finally:
        store.close()


def test_metrics_add_up_across_workers(workers: Server) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda n: send_ten(workers.url, n), range(20)))
    text = httpx.get(workers.url + "/metrics").text
    stored = next(
        line for line in text.splitlines() if line.startswith("eventctl_events_stored_total")
    )
    assert float(stored.split()[-1]) == 200


def test_workers_end_when_serve_is_killed(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    process = spawn(
        "serve", "--port", str(port), "--database-url", sqlite_url, "--workers", "2", cwd=tmp_path
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "serve --workers 2 did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        workers = _children(process.pid)
        assert len(workers) >= 2
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while alive := [pid for pid in workers if _running(pid)]:
            assert time.monotonic() < deadline, f"workers {alive} outlived their serve"
            time.sleep(0.1)
    finally:
        for pid in [process.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
