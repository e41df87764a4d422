from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eventctl.app import create_app
from eventctl.config import ConsumerConfig
from eventctl.store import Store
from tests.conftest import in_process

pytestmark = pytest.mark.anyio

GOOD = {"event_type": "order.created", "event_payload": '{"order_id": 1}'}
LIMIT = 1000


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(ConsumerConfig(max_body_bytes=LIMIT), store)) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "code", "message", "errors"}
    assert (body["status"], body["code"]) == ("error", code)
    assert body["message"]
    return body


async def test_post_event_stores_it_and_answers_success(
    client: httpx.AsyncClient, store: Store
) -> None:
    response = await client.post("/event", json=GOOD)
    assert response.status_code == 200
    assert response.json() == {"status": "success"}
    event_id = response.headers["Event-Id"]
    assert uuid.UUID(event_id).version == 7
    assert "Idempotent-Replayed" not in response.headers
    [row] = store.events(limit=5)
    assert (row.event_id, row.event_type, row.event_payload) == (
        event_id,
        GOOD["event_type"],
        GOOD["event_payload"],
    )


async def test_generated_ids_sort_by_time(client: httpx.AsyncClient) -> None:
    ids = []
    for _ in range(3):
        ids.append((await client.post("/event", json=GOOD)).headers["Event-Id"])
        await asyncio.sleep(0.002)
    assert ids == sorted(ids)


async def test_a_repeated_idempotency_key_stores_once(
    client: httpx.AsyncClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "evt-42"}
    first = await client.post("/event", json=GOOD, headers=headers)
    again = await client.post("/event", json={**GOOD, "event_payload": "other"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == {"status": "success"}
    assert first.headers["Event-Id"] == again.headers["Event-Id"] == "evt-42"
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    [row] = store.events(limit=5)
    assert row.event_payload == GOOD["event_payload"]


async def test_concurrent_posts_are_all_stored(client: httpx.AsyncClient, store: Store) -> None:
    responses = await asyncio.gather(
        *(client.post("/event", json={**GOOD, "event_payload": str(i)}) for i in range(200))
    )
    assert {r.status_code for r in responses} == {200}
    assert store.count() == 200
    assert {e.event_payload for e in store.events(limit=500)} == {str(i) for i in range(200)}


async def test_concurrent_posts_with_one_key_store_one_row(
    client: httpx.AsyncClient, store: Store
) -> None:
    responses = await asyncio.gather(
        *(client.post("/event", json=GOOD, headers={"Idempotency-Key": "same"}) for _ in range(50))
    )
    assert {r.status_code for r in responses} == {200}
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert store.count() == 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b'{"event_type": "a", "event_payload": "b"',
        b"[1, 2]",
        b'"just a string"',
        b"null",
        b"\xff\xfe{}",
    ],
)
async def test_malformed_or_non_object_json_is_400(
    client: httpx.AsyncClient, store: Store, body: bytes
) -> None:
    response = await client.post(
        "/event", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")
    assert store.count() == 0


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 900 + b"]" * 900])
async def test_deeply_nested_json_is_400_not_500(store: Store, body: bytes) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        response = await client.post(
            "/event", content=body, headers={"Content-Type": "application/json"}
        )
    assert_error(response, 400, "malformed_json")
    assert store.count() == 0


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, store: Store, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/event", content=json.dumps(GOOD), headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert store.count() == 0


async def test_content_type_parameters_are_fine(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/event",
        content=json.dumps(GOOD),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_payload": "p"}, "event_type"),
        ({"event_type": "t"}, "event_payload"),
        ({**GOOD, "extra": "x"}, "extra"),
        ({"event_type": 1, "event_payload": "p"}, "event_type"),
        ({"event_type": "t", "event_payload": {"nested": True}}, "event_payload"),
        ({"event_type": "", "event_payload": "p"}, "event_type"),
        ({"event_type": "x" * 256, "event_payload": "p"}, "event_type"),
        ({"event_type": "t", "event_payload": "nul \u0000 here"}, "event_payload"),
    ],
)
async def test_wrong_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, store: Store, body: dict[str, Any], field: str
) -> None:
    body_out = assert_error(await client.post("/event", json=body), 422, "invalid_event")
    assert body_out["errors"][0]["field"] == field
    assert field in body_out["message"]
    assert store.count() == 0


async def test_a_lone_surrogate_is_refused_not_500(client: httpx.AsyncClient, store: Store) -> None:
    raw = b'{"event_type": "t", "event_payload": "\\ud800"}'
    response = await client.post(
        "/event", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")
    assert store.count() == 0


def _padded(size: int) -> bytes:
    """A valid event body of exactly `size` bytes."""
    empty = json.dumps({"event_type": "t", "event_payload": ""}).encode()
    return empty[:-2] + b"x" * (size - len(empty)) + b'"}'


async def test_a_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = _padded(LIMIT)
    assert len(body) == LIMIT
    response = await client.post(
        "/event", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.post(
        "/event", content=_padded(LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert store.count() == 0


async def test_a_chunked_body_over_the_limit_is_413(
    client: httpx.AsyncClient, store: Store
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        body = _padded(LIMIT * 3)
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = await client.post(
        "/event", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert store.count() == 0


@pytest.mark.parametrize("key", [b"", b" padded", b"x" * 256, b"tab\there", "ünï".encode()])
async def test_a_bad_idempotency_key_is_400(
    client: httpx.AsyncClient, store: Store, key: bytes
) -> None:
    response = await client.post("/event", json=GOOD, headers={b"Idempotency-Key": key})
    assert assert_error(response, 400, "invalid_header")["errors"][0]["field"] == (
        "Idempotency-Key"
    )
    assert store.count() == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/event")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


async def test_unknown_paths_are_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ok"}


async def test_not_ready_when_the_database_does_not_answer(
    client: httpx.AsyncClient, store: Store
) -> None:
    store.database.drop_tables([store.model])
    assert_error(await client.get("/readyz"), 503, "database_unavailable")
    assert (await client.get("/healthz")).status_code == 200


async def test_a_failed_commit_is_503_with_retry_after_and_not_acknowledged(
    client: httpx.AsyncClient, store: Store
) -> None:
    store.database.drop_tables([store.model])
    response = await client.post("/event", json=GOOD)
    assert_error(response, 503, "database_unavailable")
    assert response.headers["Retry-After"] == "1"
    store.database.create_tables([store.model])
    assert (await client.post("/event", json=GOOD)).status_code == 200
    assert store.count() == 1
