"""Response rules (config `responses:`): the consumer as a test double. The real app
in-process on a real database, and a real `eventctl serve` with a config file of rules."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventctl.config import ConsumerConfig, ResponseRule
from eventctl.consumer.app import Ingest, create_app
from eventctl.consumer.responses import MAX_CACHED_TYPES, InjectedResponse, Responses
from eventctl.store import Store
from tests.helpers import Server, in_process

pytestmark = pytest.mark.anyio

PAYMENT = {"event_type": "payment.captured", "event_payload": '{"amount": 5}'}
ORDER = {"event_type": "order.created", "event_payload": '{"order_id": 1}'}


def rules(*items: ResponseRule, **extra: Any) -> ConsumerConfig:
    return ConsumerConfig(responses=items, metrics=True, **extra)


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """payment.* answers 503 with Retry-After: 2, always; everything else is stored."""
    config = rules(ResponseRule(match=("payment.*",), status=503, retry_after=2.0))
    async with in_process(create_app(config, store)) as c:
        yield c


def stored_types(store: Store) -> list[str]:
    return sorted(event.event_type for event in store.events(limit=1000))


async def test_a_failing_rule_answers_its_status_and_retry_after_and_stores_nothing(
    client: httpx.AsyncClient, store: Store
) -> None:
    refused = await client.post("/event", json=PAYMENT)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body["status"] == "error"
    assert body["code"] == "injected_response"
    assert body["errors"] == []
    assert "response rule 0 (payment.*) answered 503 for payment.captured" in body["message"]
    accepted = await client.post("/event", json=ORDER)
    assert accepted.status_code == 200
    assert stored_types(store) == ["order.created"]


async def test_injected_answers_are_counted_with_their_own_code(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        assert (await client.post("/event", json=PAYMENT)).status_code == 503
    page = (await client.get("/metrics")).text
    found = re.search(
        r'^eventctl_requests_rejected_total\{reason="injected_response",status="503"\} (\S+)$',
        page,
        re.MULTILINE,
    )
    assert found is not None, page
    assert float(found.group(1)) == 3
    assert 'reason="injected_fault"' not in page


async def test_a_refused_events_idempotency_key_is_not_used_up(
    client: httpx.AsyncClient, store: Store
) -> None:
    key = {"Idempotency-Key": "pay-1"}
    assert (await client.post("/event", json=PAYMENT, headers=key)).status_code == 503
    assert store.event("pay-1") is None
    # the same key, once no rule refuses it: stored as new, not a replay
    async with in_process(create_app(ConsumerConfig(), store)) as plain:
        accepted = await plain.post("/event", json=PAYMENT, headers=key)
    assert accepted.status_code == 200
    assert accepted.headers["event-id"] == "pay-1"
    assert "idempotent-replayed" not in accepted.headers
    assert stored_types(store) == ["payment.captured"]


async def test_a_bad_event_gets_its_own_answer_before_any_rule(
    client: httpx.AsyncClient, store: Store
) -> None:
    wrong = await client.post("/event", json={"event_type": "payment.x", "event_payload": 5})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "invalid_event")
    not_json = await client.post("/event", content=b"{", headers={"content-type": "text/plain"})
    assert (not_json.status_code, not_json.json()["code"]) == (415, "unsupported_media_type")
    bad_batch = await client.post("/events", json=[PAYMENT, {"event_type": "payment.y"}])
    assert (bad_batch.status_code, bad_batch.json()["code"]) == (422, "invalid_event")
    assert store.count() == 0


async def test_retry_after_is_whole_seconds_rounded_up_and_only_when_the_rule_says(
    store: Store,
) -> None:
    config = rules(
        ResponseRule(match=("a",), status=429, retry_after=0.5),
        ResponseRule(match=("b",), status=503),
        ResponseRule(match=("c",), status=503, retry_after=0.0),
    )
    async with in_process(create_app(config, store)) as client:
        a, b, c = [
            await client.post("/event", json={"event_type": t, "event_payload": ""}) for t in "abc"
        ]
    assert (a.status_code, a.headers["retry-after"]) == (429, "1")
    assert b.status_code == 503
    assert "retry-after" not in b.headers
    assert c.headers["retry-after"] == "0"


async def test_a_rules_own_body_is_answered_as_written(store: Store) -> None:
    body = '{"detail":"schema v1 is gone","fields":["a",1,null]}'
    config = rules(ResponseRule(match=("legacy.*",), status=422, body=body))
    async with in_process(create_app(config, store)) as client:
        answer = await client.post("/event", json={"event_type": "legacy.x", "event_payload": ""})
        batch = await client.post("/events", json=[{"event_type": "legacy.y", "event_payload": ""}])
    assert answer.status_code == 422
    assert answer.json() == {"detail": "schema v1 is gone", "fields": ["a", 1, None]}
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert (batch.status_code, batch.json()) == (422, answer.json())
    assert store.count() == 0


async def test_the_first_matching_rule_answers_and_an_empty_rule_exempts(store: Store) -> None:
    config = rules(
        ResponseRule(match=("payment.refunded",), status=409),
        ResponseRule(match=("health.*",)),  # neither status nor latency: as usual
        ResponseRule(match=("payment.*", "invoice.*"), status=502),
        ResponseRule(status=500),  # no match: every other type
    )
    answers = {}
    async with in_process(create_app(config, store)) as client:
        for event_type in ("payment.refunded", "payment.captured", "invoice.x", "health.ping", "z"):
            event = {"event_type": event_type, "event_payload": ""}
            answers[event_type] = (await client.post("/event", json=event)).status_code
    assert answers == {
        "payment.refunded": 409,
        "payment.captured": 502,
        "invoice.x": 502,
        "health.ping": 200,
        "z": 500,
    }
    assert stored_types(store) == ["health.ping"]


async def test_probability_zero_stores_every_event(store: Store) -> None:
    config = rules(ResponseRule(match=("payment.*",), status=503, probability=0.0))
    async with in_process(create_app(config, store)) as client:
        for _ in range(20):
            assert (await client.post("/event", json=PAYMENT)).status_code == 200
    assert store.count() == 20


async def test_a_probability_is_a_share_of_the_requests(store: Store) -> None:
    config = rules(ResponseRule(match=("payment.*",), status=503, probability=0.3))
    app = create_app(config, store)
    handler = app.fast["/event"]
    assert isinstance(handler, Ingest)
    handler.random.seed(15)
    async with in_process(app) as client:
        statuses: list[int] = []
        for _ in range(10):  # 2,000 requests, 200 at a time (so commits are grouped)
            answers = await asyncio.gather(
                *(client.post("/event", json=PAYMENT) for _ in range(200))
            )
            statuses.extend(answer.status_code for answer in answers)
    refused = statuses.count(503)
    assert statuses.count(200) + refused == 2000
    assert 500 <= refused <= 700  # 600 expected; 5 standard deviations either side
    assert store.count() == 2000 - refused


async def test_a_latency_rule_delays_the_answer_and_stores_the_event(store: Store) -> None:
    config = rules(
        ResponseRule(match=("order.*",), latency=(0.2, 0.2)),
        ResponseRule(match=("slow.*",), latency=(0.1, 0.3)),
    )
    async with in_process(create_app(config, store)) as client:
        started = time.perf_counter()
        fixed = await client.post("/event", json=ORDER)
        fixed_took = time.perf_counter() - started
        started = time.perf_counter()
        ranged = await client.post("/event", json={"event_type": "slow.x", "event_payload": ""})
        ranged_took = time.perf_counter() - started
        started = time.perf_counter()
        other = await client.post("/event", json=PAYMENT)
    assert (fixed.status_code, ranged.status_code, other.status_code) == (200, 200, 200)
    assert fixed_took >= 0.2
    assert ranged_took >= 0.1
    assert stored_types(store) == ["order.created", "payment.captured", "slow.x"]


async def test_a_latency_then_a_status(store: Store) -> None:
    config = rules(ResponseRule(match=("payment.*",), status=504, latency=(0.1, 0.1)))
    async with in_process(create_app(config, store)) as client:
        started = time.perf_counter()
        answer = await client.post("/event", json=PAYMENT)
        took = time.perf_counter() - started
    assert answer.status_code == 504
    assert took >= 0.1
    assert store.count() == 0


async def test_a_batch_is_answered_by_the_first_rule_any_of_its_events_matches(
    store: Store,
) -> None:
    config = rules(
        ResponseRule(match=("payment.*",), status=503, retry_after=2.0),
        ResponseRule(match=("order.*",), latency=(0.05, 0.05)),
    )
    async with in_process(create_app(config, store)) as client:
        # config order decides, not the order of the batch: payment's rule comes first
        refused = await client.post("/events", json=[ORDER, ORDER, PAYMENT])
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["code"] == "injected_response"
        assert "the batch's event type payment.captured" in refused.json()["message"]
        assert store.count() == 0  # all or nothing: the orders are not stored either
        started = time.perf_counter()
        delayed = await client.post("/events", json=[ORDER, {**ORDER, "event_payload": "2"}])
        assert time.perf_counter() - started >= 0.05
        assert delayed.status_code == 200
        assert delayed.json() == {"status": "success", "count": 2}
        untouched = await client.post("/events", json=[{"event_type": "z", "event_payload": ""}])
        assert untouched.status_code == 200
    assert stored_types(store) == ["order.created", "order.created", "z"]


async def test_a_refused_batchs_key_is_not_used_up(store: Store) -> None:
    config = rules(ResponseRule(match=("payment.*",), status=503))
    key = {"Idempotency-Key": "batch-1"}
    async with in_process(create_app(config, store)) as client:
        assert (await client.post("/events", json=[ORDER, PAYMENT], headers=key)).status_code == 503
    async with in_process(create_app(ConsumerConfig(), store)) as plain:
        accepted = await plain.post("/events", json=[ORDER, PAYMENT], headers=key)
    assert accepted.headers["events-stored"] == "2"
    assert "idempotent-replayed" not in accepted.headers


async def test_the_rules_and_the_fail_rate_drill_are_told_apart(store: Store) -> None:
    config = rules(ResponseRule(match=("payment.*",), status=503), fail_rate=1.0, fail_status=500)
    async with in_process(create_app(config, store)) as client:
        answer = await client.post("/event", json=PAYMENT)
    assert (answer.status_code, answer.json()["code"]) == (500, "injected_fault")


async def test_the_rule_of_an_event_type_is_remembered_within_a_bound() -> None:
    responses = Responses([ResponseRule(match=("a.*",), status=503), ResponseRule(status=400)])
    assert responses.index("a.1") == 0
    assert responses.index("b") == 1
    for i in range(MAX_CACHED_TYPES + 10):
        assert responses.index(f"a.{i}") == 0
        assert len(responses._index) <= MAX_CACHED_TYPES
    assert responses.index("b") == 1
    none = Responses([ResponseRule(match=("a.*",), status=503)])
    assert none.index("b") == none.none
    assert none.first(["b", "c"]) == (none.none, "")
    await none.answer(["b"], random.Random(1), batch=False)  # no rule: nothing happens
    with pytest.raises(InjectedResponse):
        await none.answer(["b", "a.x"], random.Random(1), batch=True)


def test_a_served_rule_answers_503_with_retry_after_and_latency(tmp_path: Path) -> None:
    config = tmp_path / "consumer.yaml"
    config.write_text(
        "responses:\n"
        '  - match: "payment.*"\n'
        "    status: 503\n"
        "    probability: 1\n"
        "    retry_after: 2\n"
        "  - match: order.*\n"
        "    latency: 200ms\n"
    )
    server = Server(f"sqlite:///{tmp_path / 'events.db'}", tmp_path, "--config", str(config))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            refused = [client.post("/event", json=PAYMENT) for _ in range(3)]
            batch = client.post("/events", json=[{"event_type": "a", "event_payload": ""}, PAYMENT])
            started = time.perf_counter()
            delayed = client.post("/event", json=ORDER)
            took = time.perf_counter() - started
            other = client.post(
                "/event", json={"event_type": "user.signed_up", "event_payload": ""}
            )
            events = client.get("/events").json()["events"]
    finally:
        code, log = server.stop()
    for answer in refused:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert answer.json()["code"] == "injected_response"
    assert (batch.status_code, batch.headers["retry-after"]) == (503, "2")
    assert delayed.status_code == 200
    assert took >= 0.2
    assert other.status_code == 200
    assert sorted(event["event_type"] for event in events) == ["order.created", "user.signed_up"]
    assert code == 0
    assert "Traceback" not in log
