from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.store import Store
from tests.helpers import in_process

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
    again = await client.post("/event", json=GOOD, headers=headers)
    other = await client.post("/event", json={**GOOD, "event_payload": "other"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == {"status": "success"}
    assert first.headers["Event-Id"] == again.headers["Event-Id"] == "evt-42"
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    error = assert_error(other, 422, "idempotency_key_reused")
    assert error["errors"][0]["field"] == "Idempotency-Key"
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


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"event_type":"a","event_type":"b","event_payload":"x"}', "event_type"),
        (b'{"event_type":"a","event_payload":"x","event_payload":"y"}', "event_payload"),
        (b'{"event_type":"a","\\u0065vent_type":"b","event_payload":"x"}', "event_type"),
        (b'{"event_type":"a","event_payload":"x","event_p\\u0061yload":"y"}', "event_payload"),
    ],
)
async def test_duplicate_keys_are_422_naming_the_field(
    client: httpx.AsyncClient, store: Store, body: bytes, field: str
) -> None:
    response = await client.post(
        "/event", content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "invalid_event")
    assert error["errors"] == [{"field": field, "message": f"{field} is given more than once"}]
    assert store.count() == 0


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b'{"event_type":"caf\\u00e9","event_payload":"x"}', ("café", "x")),
        (b'{"event_type":"a","event_payload":"\\"event_type\\""}', ("a", '"event_type"')),
        (
            b'{"event_payload":"event_type","event_type":"event_payload"}',
            ("event_payload", "event_type"),
        ),
        (b'{"event_type":"a","event_payload":"C:\\\\users"}', ("a", "C:\\users")),
    ],
)
async def test_keys_written_once_are_fine_however_the_body_looks(
    client: httpx.AsyncClient, store: Store, body: bytes, stored: tuple[str, str]
) -> None:
    response = await client.post(
        "/event", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    [row] = store.events(limit=5)
    assert (row.event_type, row.event_payload) == stored


@pytest.mark.parametrize("event_type", ["a\u0085b", "\u200b", "a\u2028b"])
async def test_invisible_or_control_event_types_are_422(
    client: httpx.AsyncClient, store: Store, event_type: str
) -> None:
    response = await client.post("/event", json={"event_type": event_type, "event_payload": "p"})
    assert assert_error(response, 422, "invalid_event")["errors"][0]["field"] == "event_type"
    assert store.count() == 0


async def test_the_page_has_a_strict_content_security_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    html = response.text
    policy = dict(
        part.strip().split(" ", 1)
        for part in response.headers["Content-Security-Policy"].split(";")
    )
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["img-src"] == "'self'"  # the favicon, nothing else
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_the_page_names_a_favicon_that_is_served(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    [href] = re.findall(r'<link rel="icon" href="([^"]+)"', html)
    assert href == "/favicon.svg"
    icon = await client.get(href)
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg ")
    assert icon.headers["Content-Security-Policy"] == "default-src 'none'"
    assert icon.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_trailing_slash_is_404_in_the_error_shape_not_a_redirect(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(host="0.0.0.0"), store)) as client:
        for method, path in (("POST", "/event/"), ("GET", "/healthz/"), ("GET", "/openapi.json/")):
            response = await client.request(
                method, path, json=GOOD, headers={"Host": "evil.example"}
            )
            body = assert_error(response, 404, "not_found")
            assert f"did you mean {path.rstrip('/')}?" in body["message"]
            assert "location" not in response.headers
            assert "evil.example" not in response.text + str(response.headers)
        other = await client.get("/nope/")
        assert "did you mean" not in assert_error(other, 404, "not_found")["message"]
    assert store.count() == 0


LOOPBACK_HOSTS = [
    "localhost",
    "localhost:8000",
    "LocalHost:1",
    "127.0.0.1",
    "127.0.0.1:8000",
    "127.1.2.3:80",
    "[::1]",
    "[::1]:8000",
]
FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8000",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "128.0.0.1",
    "127.0.0.256",
    "[::2]:8000",
    "localhost:80:80",
    "localhost:http",
    "",
]


async def _every_kind_of_request(client: httpx.AsyncClient, host: str) -> list[httpx.Response]:
    headers = {"Host": host}
    return [
        await client.get("/events", headers=headers),
        await client.get("/healthz", headers=headers),
        await client.get("/nope", headers=headers),
        await client.delete("/event", headers=headers),
        await client.post("/event", json=GOOD, headers=headers),
        await client.post("/events", json=[GOOD], headers=headers),
    ]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_on_loopback_loopback_hosts_are_answered(
    client: httpx.AsyncClient, store: Store, host: str
) -> None:
    statuses = [r.status_code for r in await _every_kind_of_request(client, host)]
    assert statuses == [200, 200, 404, 405, 200, 200]
    assert store.count() == 2


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_on_loopback_other_hosts_are_421_everywhere(
    client: httpx.AsyncClient, store: Store, host: str
) -> None:
    for response in await _every_kind_of_request(client, host):
        body = assert_error(response, 421, "misdirected_request")
        assert "evil" not in body["message"]
    assert store.count() == 0


async def test_two_host_headers_are_421(client: httpx.AsyncClient, store: Store) -> None:
    headers = [(b"host", b"localhost"), (b"host", b"evil.example")]
    for response in (
        await client.get("/events", headers=headers),
        await client.post("/event", json=GOOD, headers=headers),
    ):
        assert_error(response, 421, "misdirected_request")
    assert store.count() == 0


@pytest.mark.parametrize(
    ("config", "answered", "refused"),
    [
        (
            ConsumerConfig(allowed_hosts=" events.example.com, Other.Example:8443 ,"),
            ["events.example.com", "EVENTS.example.com:9", "other.example:8443", "localhost"],
            ["other.example", "other.example:8444", "example.com"],
        ),
        (ConsumerConfig(host="0.0.0.0"), ["evil.example", "localhost", "x:1"], []),
        (ConsumerConfig(host="::"), ["evil.example"], []),
        (
            ConsumerConfig(host="0.0.0.0", allowed_hosts="events.example.com"),
            ["events.example.com", "events.example.com:8000"],
            ["localhost", "127.0.0.1", "evil.example"],
        ),
        (ConsumerConfig(host="127.0.0.2"), ["127.0.0.1", "localhost:1"], ["evil.example"]),
        (ConsumerConfig(host="::1"), ["[::1]:8000", "localhost"], ["evil.example"]),
        (ConsumerConfig(host="localhost"), ["localhost"], ["evil.example"]),
    ],
)
async def test_allowed_hosts_follow_the_bound_address(
    store: Store, config: ConsumerConfig, answered: list[str], refused: list[str]
) -> None:
    async with in_process(create_app(config, store)) as client:
        for host in answered:
            for response in await _every_kind_of_request(client, host):
                assert response.status_code != 421, host
        for host in refused:
            for response in await _every_kind_of_request(client, host):
                assert_error(response, 421, "misdirected_request")
