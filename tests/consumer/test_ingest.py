"""POST /events, overload, database failures and recovery, metrics: the real app in-process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import httpx
import peewee
import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.store import Store
from tests.helpers import in_process, postgres_url

pytestmark = pytest.mark.anyio

EVENT = {"event_type": "order.created", "event_payload": '{"order_id": 1}'}


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(ConsumerConfig(max_batch=50), store)) as c:
        yield c


async def test_a_batch_is_stored_in_one_go(client: httpx.AsyncClient, store: Store) -> None:
    events = [{"event_type": f"t{i % 3}", "event_payload": str(i)} for i in range(50)]
    response = await client.post("/events", json=events)
    assert response.status_code == 200
    assert response.json() == {"status": "success", "count": 50}
    assert response.headers["Events-Stored"] == "50"
    stored = store.events(limit=100)
    assert sorted(int(e.event_payload) for e in stored) == list(range(50))


async def test_a_batch_with_bad_events_stores_none_and_lists_each(
    client: httpx.AsyncClient, store: Store
) -> None:
    events: list[Any] = [EVENT] * 10
    events[3] = {"event_type": 3, "event_payload": "x"}
    events[7] = {"event_type": "t"}
    events[8] = "not an object"
    response = await client.post("/events", json=events)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_event"
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (3, "event_type"),
        (7, "event_payload"),
        (8, None),
    ]
    assert "3 of 10 events are invalid" in body["message"]
    assert store.count() == 0


@pytest.mark.parametrize("size", [0, 51])
async def test_a_batch_must_hold_1_to_max_batch_events(
    client: httpx.AsyncClient, store: Store, size: int
) -> None:
    response = await client.post("/events", json=[EVENT] * size)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_batch"
    assert store.count() == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"event_type": "a", "event_payload": "b"}', 400, "malformed_json"),
        (b"[{", 400, "malformed_json"),
    ],
)
async def test_a_batch_that_is_not_a_json_array_is_400(
    client: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await client.post(
        "/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["code"]) == (status, code)


async def test_batches_have_the_same_limits(store: Store) -> None:
    config = ConsumerConfig(max_body_bytes=200)
    async with in_process(create_app(config, store)) as client:
        too_big = await client.post("/events", json=[EVENT] * 10)
        not_json = await client.post("/events", content=json.dumps([EVENT]))
        put = await client.put("/events", json=[EVENT])
    assert too_big.status_code == 413
    assert not_json.status_code == 415
    assert put.status_code == 405
    assert store.count() == 0


async def test_a_retried_batch_is_stored_once(client: httpx.AsyncClient, store: Store) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    first = await client.post("/events", json=[EVENT] * 5, headers=headers)
    again = await client.post("/events", json=[EVENT] * 5, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Events-Stored"] == "0"
    assert sorted(e.event_id for e in store.events(limit=10)) == [f"batch-1/{i}" for i in range(5)]


def _lock_sqlite(database_url: str) -> sqlite3.Connection:
    """Another connection that holds SQLite's write lock until it rolls back."""
    lock = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    return lock


async def test_overload_answers_503_with_retry_after_and_never_a_false_200(
    sqlite_url: str,
) -> None:
    store = Store.open(sqlite_url, create=True)
    app = create_app(ConsumerConfig(max_queued_events=10), store)
    async with in_process(app) as client:
        lock = _lock_sqlite(sqlite_url)  # the writer's first commit now waits for the lock
        posts = [
            asyncio.ensure_future(
                client.post("/event", json=EVENT, headers={"Idempotency-Key": f"k{i}"})
            )
            for i in range(40)
        ]
        await asyncio.sleep(0.3)
        lock.rollback()
        lock.close()
        responses = await asyncio.gather(*posts)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["code"] == "overloaded" for r in refused)
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    accepted = {r.headers["Event-Id"] for r in responses if r.status_code == 200}
    assert len(accepted) <= 11
    assert {e.event_id for e in store.events(limit=100)} == accepted
    store.close()


async def test_a_locked_database_is_503_and_the_service_recovers(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True, busy_timeout_ms=100)
    app = create_app(ConsumerConfig(), store)
    async with in_process(app) as client:
        await client.post("/event", json=EVENT)
        lock = _lock_sqlite(sqlite_url)
        refused = await client.post("/event", json=EVENT, headers={"Idempotency-Key": "x"})
        lock.rollback()
        lock.close()
        recovered = await client.post("/event", json=EVENT, headers={"Idempotency-Key": "x"})
    assert refused.status_code == 503
    assert refused.json()["code"] == "database_unavailable"
    assert "locked" in refused.json()["message"]
    assert recovered.status_code == 200
    assert "Idempotent-Replayed" not in recovered.headers
    assert store.count() == 2
    store.close()


@pytest.mark.postgres
async def test_a_lost_postgres_connection_is_503_then_recovers_by_itself() -> None:
    url = postgres_url()
    store = Store.open(url, create=True)
    store.database.drop_tables([store.model])
    store.database.create_tables([store.model])
    admin = peewee.PostgresqlDatabase(None)
    admin.init(**_pg_params(url))
    app = create_app(ConsumerConfig(), store)
    async with in_process(app) as client:
        assert (await client.post("/event", json=EVENT)).status_code == 200
        admin.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        lost = await client.post("/event", json=EVENT, headers={"Idempotency-Key": "after"})
        again = await client.post("/event", json=EVENT, headers={"Idempotency-Key": "after"})
    admin.close()
    assert lost.status_code == 503
    assert lost.json()["code"] == "database_unavailable"
    assert lost.headers["Retry-After"] == "1"
    assert again.status_code == 200
    store = Store.open(url)
    assert store.count() == 2
    store.database.drop_tables([store.model])
    store.close()


def _pg_params(url: str) -> dict[str, Any]:
    from playhouse.db_url import parse

    params: dict[str, Any] = parse(url)
    return params


async def test_metrics_count_what_happened(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        await client.post("/event", json=EVENT, headers={"Idempotency-Key": "m"})
        await client.post("/event", json=EVENT, headers={"Idempotency-Key": "m"})
        await client.post("/events", json=[EVENT] * 3)
        await client.post("/event", content=b"x")
        await client.get("/nope")
        text = (await client.get("/metrics")).text
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(lines["eventctl_events_received_total"]) == 5
    assert float(lines["eventctl_events_stored_total"]) == 4
    assert float(lines["eventctl_events_duplicate_total"]) == 1
    assert (
        float(
            lines['eventctl_requests_rejected_total{reason="unsupported_media_type",status="415"}']
        )
        == 1
    )
    assert float(lines['eventctl_requests_rejected_total{reason="not_found",status="404"}']) == 1
    assert float(lines["eventctl_commit_batch_events_count"]) >= 2
    assert float(lines['eventctl_request_duration_seconds_count{path="/event"}']) == 3
    assert "eventctl_queue_depth_events" in lines


@pytest.mark.parametrize(
    ("config", "served"),
    [
        (ConsumerConfig(), True),
        (ConsumerConfig(host="0.0.0.0"), False),
        (ConsumerConfig(host="0.0.0.0", metrics=True), True),
        (ConsumerConfig(metrics=False), False),
    ],
)
async def test_metrics_are_on_by_default_only_on_loopback(
    store: Store, config: ConsumerConfig, served: bool
) -> None:
    async with in_process(create_app(config, store)) as client:
        response = await client.get("/metrics")
    assert response.status_code == (200 if served else 404)


async def test_group_commit_batches_concurrent_requests(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True)
    sizes: list[int] = []
    app = create_app(ConsumerConfig(commit_max_wait_ms=50), store)
    async with in_process(app) as client:
        responses = await asyncio.gather(*(client.post("/event", json=EVENT) for _ in range(30)))
        metrics = (await client.get("/metrics")).text
    assert {r.status_code for r in responses} == {200}
    for line in metrics.splitlines():
        if line.startswith("eventctl_commit_batch_events_count"):
            sizes.append(int(float(line.split()[-1])))
    assert store.count() == 30
    assert sizes[0] < 30  # fewer commits than events: they were grouped
    store.close()


async def test_a_batch_with_a_duplicate_key_names_the_event_and_field(
    client: httpx.AsyncClient, store: Store
) -> None:
    good = b'{"event_type":"a","event_payload":"x"}'
    body = (
        b"["
        + b",".join(
            [
                good,
                b'{"event_type":"a","event_type":"b","event_payload":"x"}',
                good,
                b'{"event_payload":"x","event_type":"a","\\u0065vent_payload":"y"}',
            ]
        )
        + b"]"
    )
    response = await client.post(
        "/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "invalid_event"
    assert [(e["index"], e["field"]) for e in error["errors"]] == [
        (1, "event_type"),
        (3, "event_payload"),
    ]
    assert store.count() == 0


async def test_a_batch_whose_payloads_name_the_keys_is_fine(
    client: httpx.AsyncClient, store: Store
) -> None:
    events = [
        {"event_type": "event_type", "event_payload": '"event_payload"'},
        {"event_type": "caf\u00e9", "event_payload": "\u2603"},
    ]
    response = await client.post("/events", json=events)
    assert response.status_code == 200, response.text
    assert sorted((e.event_type, e.event_payload) for e in store.events(limit=5)) == sorted(
        (e["event_type"], e["event_payload"]) for e in events
    )
