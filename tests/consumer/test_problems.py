"""The catalog of problems (consumer/problems.py) is the one place statuses and codes live:
docs/http-api.md's table, the OpenAPI document and the app's real answers all agree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventctl.auth import Credentials
from eventctl.config import ConsumerConfig
from eventctl.consumer import problems
from eventctl.consumer.app import create_app
from eventctl.consumer.problems import CATALOG, Problem
from eventctl.store import Store
from tests.helpers import in_process

DOCS = Path(__file__).resolve().parents[2] / "docs"
BY_CODE = {problem.code: problem for problem in CATALOG}


def test_the_catalog_holds_every_problem_once() -> None:
    defined = [value for value in vars(problems).values() if isinstance(value, Problem)]
    assert set(defined) == set(CATALOG)
    assert len(BY_CODE) == len(CATALOG)
    for problem in CATALOG:
        assert problem.retry_after == (problem.status in problems.RETRY_STATUSES)
        assert problem.description
        assert "\n" not in problem.description


def documented_rows() -> dict[str, str]:
    """code -> status of each row of docs/http-api.md's error table."""
    text = (DOCS / "http-api.md").read_text()
    rows = re.findall(r"^\| (\d{3}|4xx/5xx) \| `([a-z_]+)` \|", text, re.MULTILINE)
    codes = [code for _, code in rows]
    assert len(codes) == len(set(codes)), "a code has two rows"
    return {code: status for status, code in rows}


def test_the_error_table_of_http_api_md_is_the_catalog() -> None:
    rows = documented_rows()
    catalog = {p.code: "4xx/5xx" if p.any_status else str(p.status) for p in CATALOG}
    assert rows == catalog


def test_an_answer_has_the_one_shape_and_the_problems_headers() -> None:
    error = problems.INVALID_PARAMETER.error("limit must be 1", field="limit")
    assert error.status == 400
    assert error.body() == {
        "status": "error",
        "code": "invalid_parameter",
        "message": "limit must be 1",
        "errors": [{"field": "limit", "message": "limit must be 1"}],
    }
    assert error.headers == {}
    assert problems.OVERLOADED.error("full").headers == {"Retry-After": "1"}
    assert problems.DATABASE_UNAVAILABLE.error("down", retry=False).headers == {}
    assert problems.UNAUTHORIZED.error("who").headers == {
        "WWW-Authenticate": 'Bearer realm="eventctl"'
    }
    allowed = problems.METHOD_NOT_ALLOWED.error("no", headers={"Allow": "GET"})
    assert allowed.headers == {"Allow": "GET"}
    assert problems.INJECTED_FAULT.at(502).error("drill").headers == {}
    assert problems.INJECTED_FAULT.at(429).error("drill").headers == {"Retry-After": "1"}


def test_the_http_layers_answer_is_complete_http_in_the_same_shape() -> None:
    raw = problems.TOO_MANY_CONNECTIONS.answer("too many")
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "retry-after: 1" in lines
    assert "connection: close" in lines
    assert f"content-length: {len(body)}" in lines
    assert json.loads(body) == {
        "status": "error",
        "code": "too_many_connections",
        "message": "too many",
        "errors": [],
    }


JSON = {"content-type": "application/json"}
EVENT = b'{"event_type": "t", "event_payload": "p"}'
REQUESTS: list[tuple[Problem, str, str, dict[str, Any]]] = [
    (problems.UNSUPPORTED_MEDIA_TYPE, "POST", "/event", {"content": EVENT}),
    (problems.MALFORMED_JSON, "POST", "/event", {"content": b"{", "headers": JSON}),
    (problems.INVALID_EVENT, "POST", "/event", {"content": b'{"event_type": 1}', "headers": JSON}),
    (
        problems.INVALID_HEADER,
        "POST",
        "/event",
        {"content": EVENT, "headers": {**JSON, "idempotency-key": " "}},
    ),
    (problems.PAYLOAD_TOO_LARGE, "POST", "/event", {"content": b" " * 2000, "headers": JSON}),
    (problems.INVALID_BATCH, "POST", "/events", {"content": b"[]", "headers": JSON}),
    (
        problems.MISDIRECTED_REQUEST,
        "POST",
        "/event",
        {"content": EVENT, "headers": {**JSON, "host": "elsewhere.example"}},
    ),
    (problems.MISDIRECTED_REQUEST, "GET", "/events", {"headers": {"host": "elsewhere.example"}}),
    (problems.INVALID_PARAMETER, "GET", "/events", {"params": {"limit": "0"}}),
    (problems.INVALID_PARAMETER, "GET", "/events/stream", {"headers": {"last-event-id": "x"}}),
    (problems.INVALID_PARAMETER, "GET", "/events/summary", {"params": {"window": "x"}}),
    (problems.NOT_FOUND, "GET", "/events/missing", {}),
    (problems.NOT_FOUND, "GET", "/nowhere", {}),
    (problems.METHOD_NOT_ALLOWED, "DELETE", "/events", {}),
]


@pytest.mark.anyio
async def test_every_error_the_app_answers_is_in_the_catalog(store: Store) -> None:
    app = create_app(ConsumerConfig(max_body_bytes=1000), store)
    async with in_process(app) as client:
        for problem, method, path, options in REQUESTS:
            response: httpx.Response = await client.request(method, path, **options)
            assert response.json()["code"] == problem.code, (method, path)
            assert BY_CODE[problem.code] is problem
            assert response.status_code == problem.status, (method, path)
            assert ("retry-after" in response.headers) == problem.retry_after


@pytest.mark.anyio
async def test_the_retry_and_auth_headers_come_from_the_catalog(store: Store) -> None:
    token = create_app(ConsumerConfig(), store, credentials=Credentials(token="s3cret"))
    drill = create_app(ConsumerConfig(fail_rate=1.0, fail_status=429), store)
    async with in_process(token) as client:
        refused = await client.post("/event", content=EVENT, headers=JSON)
    async with in_process(drill) as client:
        faulted = await client.post("/event", content=EVENT, headers=JSON)
    assert refused.status_code == 401
    assert (
        refused.headers["www-authenticate"]
        == dict(problems.UNAUTHORIZED.headers)["WWW-Authenticate"]
    )
    assert (faulted.status_code, faulted.json()["code"]) == (429, "injected_fault")
    assert faulted.headers["retry-after"] == str(problems.RETRY_AFTER_SECONDS)


@pytest.mark.anyio
async def test_the_documents_errors_are_the_catalogs(store: Store) -> None:
    config = ConsumerConfig(metrics=True, fail_rate=0.1, fail_status=502)
    credentials = Credentials(token="t", keys=[b"k" * 24])
    async with in_process(create_app(config, store, credentials=credentials)) as client:
        document = (await client.get("/openapi.json")).json()
    listed: set[str] = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                if status == "200":
                    continue
                codes = answer["content"]["application/json"]["schema"]["properties"]["code"]
                for code in codes["enum"]:
                    problem = BY_CODE[code]
                    expected = 502 if problem.any_status else problem.status
                    assert int(status) == expected, code
                    assert problem.description in answer["description"]
                    if problem.status in problems.RETRY_STATUSES and not problem.any_status:
                        assert "Retry-After" in answer["headers"]
                listed.update(codes["enum"])
    generic = {problems.METHOD_NOT_ALLOWED.code, problems.INTERNAL_ERROR.code}
    assert listed == set(BY_CODE) - generic
