"""GET /routes and the forwarding metrics: the real app in-process (and `serve --workers`),
over a database whose outbox is filled directly or by a real forwarder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from eventctl.config import ConsumerConfig, ForwardRoute
from eventctl.consumer.app import create_app
from eventctl.events import Event
from eventctl.outbox import Batch, Breaker, Outbox, Settled
from eventctl.store import Incoming, Store
from tests.helpers import Server, free_port, in_process

BILLING_URL = "https://billing.example.com/hooks"
PLAIN = "http://127.0.0.1:9/event"  # a route named by its URL
GONE_URL = "http://127.0.0.1:9/gone"
AGE = timedelta(hours=2)


def fill_routes(url: str) -> None:
    """Three routes, each given the same four events, received two hours ago:

    - billing: one delivered, one failed (422), two queued, and paused by its breaker;
    - PLAIN: active, all four queued;
    - gone: disabled by a 410, all four queued.
    """
    store = Store.open(url, create=True)
    try:
        outbox = Outbox(store, owner="test")
        ids = outbox.sync_routes([("billing", BILLING_URL), (PLAIN, PLAIN), ("gone", GONE_URL)])
        at = datetime.now(UTC) - AGE

        def fanout(event_type: str) -> Sequence[int]:
            return tuple(ids.values())

        store.insert_requests(
            [[Incoming(f"e{i}", Event("order.created", f"{i}"), at)] for i in range(4)], fanout
        )
        now_ms = time.time_ns() // 1_000_000
        billing = ids["billing"]
        first, second = outbox.claim(billing, limit=2, now_ms=now_ms, ordered=False).entries
        settled = [
            Settled(first.event_row, "delivered", 1, now_ms, now_ms, "200"),
            Settled(second.event_row, "failed", 1, now_ms, now_ms, "422"),
        ]
        outbox.settle(billing, settled=settled, breaker=Breaker(), batch=Batch(), now_ms=now_ms)
        paused = Batch(failures=5, last_result="503")
        outbox.settle(billing, settled=[], breaker=Breaker(), batch=paused, now_ms=now_ms)
        [head] = outbox.claim(ids["gone"], limit=1, now_ms=now_ms, ordered=False).entries
        kept = [Settled(head.event_row, "kept", 1, now_ms, now_ms, "410")]
        gone = Batch(gone="410")
        outbox.settle(ids["gone"], settled=kept, breaker=Breaker(), batch=gone, now_ms=now_ms)
    finally:
        store.close()


def check_filled(routes: list[dict[str, Any]]) -> None:
    """`routes` (GET /routes, `eventctl routes --json`) are what fill_routes wrote."""
    by_name = {r["name"]: r for r in routes}
    assert [r["name"] for r in routes] == sorted(by_name)
    counts = {
        name: (r["url"], r["state"], r["queued"], r["delivered"], r["failed"])
        for name, r in by_name.items()
    }
    assert counts == {
        "billing": (BILLING_URL, "paused", 2, 1, 1),
        PLAIN: (PLAIN, "active", 4, 0, 0),
        "gone": (GONE_URL, "disabled", 4, 0, 0),
    }
    for route in routes:
        assert abs(route["lag_seconds"] - AGE.total_seconds()) < 120
        assert route["oldest_queued_at"] is not None
    assert "5 failures in a row (last: 503)" in by_name["billing"]["reason"]
    assert by_name["billing"]["next_attempt_at"] is not None
    assert "routes enable gone" in by_name["gone"]["reason"]
    assert (by_name[PLAIN]["reason"], by_name[PLAIN]["next_attempt_at"]) == ("", None)


def metric_values(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    }


@pytest.mark.anyio
async def test_get_routes_answers_every_route_as_its_document_says(
    database_url: str,
) -> None:
    fill_routes(database_url)
    store = Store.open(database_url)
    try:
        async with in_process(create_app(ConsumerConfig(), store)) as client:
            response = await client.get("/routes")
            document = (await client.get("/openapi.json")).json()
    finally:
        store.close()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    check_filled(body["routes"])
    ok = document["paths"]["/routes"]["get"]["responses"]["200"]
    schema = ok["content"]["application/json"]["schema"]
    jsonschema_rs.validator_for(schema, validate_formats=True).validate(body)


@pytest.mark.anyio
async def test_get_routes_without_forwarding_is_an_empty_list(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        response = await client.get("/routes")
    assert (response.status_code, response.json()) == (200, {"routes": []})


@pytest.mark.anyio
async def test_a_database_that_cannot_answer_is_503_and_metrics_still_answer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    fill_routes(f"sqlite:///{path}")
    store = Store.open(f"sqlite:///{path}")
    try:
        async with in_process(create_app(ConsumerConfig(), store)) as client:
            assert len((await client.get("/routes")).json()["routes"]) == 3
            path.unlink()  # replaced under the server by a file that is no database
            path.write_bytes(b"not a database\n" * 512)
            response = await client.get("/routes")
            metrics = await client.get("/metrics")
    finally:
        store.close()
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert metrics.status_code == 200
    assert "eventctl_events_stored_total" in metrics.text
    assert "eventctl_forward_queued" not in metrics.text  # left out, not made up


@pytest.mark.anyio
async def test_metrics_show_each_routes_backlog_lag_and_state(database_url: str) -> None:
    fill_routes(database_url)
    store = Store.open(database_url)
    try:
        async with in_process(create_app(ConsumerConfig(), store)) as client:
            values = metric_values((await client.get("/metrics")).text)
    finally:
        store.close()
    assert values['eventctl_forward_queued{route="billing"}'] == 2
    assert values[f'eventctl_forward_queued{{route="{PLAIN}"}}'] == 4
    lag = values['eventctl_forward_lag_seconds{route="gone"}']
    assert abs(lag - AGE.total_seconds()) < 120
    states = {
        (route, state): values[f'eventctl_forward_route_state{{route="{route}",state="{state}"}}']
        for route in ("billing", "gone", PLAIN)
        for state in ("active", "paused", "disabled")
    }
    assert {key for key, value in states.items() if value == 1} == {
        ("billing", "paused"),
        ("gone", "disabled"),
        (PLAIN, "active"),
    }
    assert sum(states.values()) == 3
    # no forwarder in this process: nothing it did to count
    assert not any(name.startswith("eventctl_forward_delivered") for name in values)


async def until(check: Callable[[], Any], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


FAST = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05, "timeout_seconds": 2.0}


@pytest.mark.anyio
async def test_metrics_count_what_this_processs_forwarder_did(store: Store, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config_file = tmp_path / "downstream.yaml"
    config_file.write_text(f"auth_token_file: {token}\n")
    downstream = Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, "--config", str(config_file))
    routes = (
        ForwardRoute(f"{downstream.url}/event", name="ok", auth_token_file=str(token), **FAST),  # type: ignore[arg-type]
        ForwardRoute(f"{downstream.url}/event", name="refused", **FAST),  # type: ignore[arg-type]
        ForwardRoute(f"http://127.0.0.1:{free_port()}/event", name="down", **FAST),  # type: ignore[arg-type]
    )
    try:
        async with in_process(create_app(ConsumerConfig(forward=routes), store)) as client:
            for i in range(5):
                event = {"event_type": "t", "event_payload": str(i)}
                assert (await client.post("/event", json=event)).status_code == 200

            async def settled() -> bool:
                shown = {r["name"]: r for r in (await client.get("/routes")).json()["routes"]}
                return bool(shown["ok"]["delivered"] == 5 and shown["refused"]["failed"] == 5)

            await until(settled)
            values = metric_values((await client.get("/metrics")).text)
            again = metric_values((await client.get("/metrics")).text)
    finally:
        downstream.stop()
    for route in ("ok", "refused", "down"):
        assert values[f'eventctl_forward_enqueued_total{{route="{route}"}}'] == 5
    assert values['eventctl_forward_attempts_total{route="ok"}'] == 5
    assert values['eventctl_forward_delivered_total{route="ok"}'] == 5
    assert values['eventctl_forward_failed_total{route="ok"}'] == 0
    assert values['eventctl_forward_delivery_seconds_count{route="ok"}'] == 5
    assert values['eventctl_forward_delivery_seconds_sum{route="ok"}'] > 0
    assert values['eventctl_forward_failed_total{route="refused"}'] == 5
    assert values['eventctl_forward_delivered_total{route="refused"}'] == 0
    assert values['eventctl_forward_delivery_seconds_count{route="refused"}'] == 0
    assert values['eventctl_forward_retried_total{route="down"}'] >= 1
    assert values['eventctl_forward_queued{route="down"}'] == 5
    # a second scrape counts nothing twice
    for name in ("enqueued", "delivered", "failed"):
        key = f'eventctl_forward_{name}_total{{route="ok"}}'
        assert again[key] == values[key]
    assert again['eventctl_forward_delivery_seconds_count{route="ok"}'] == 5


def test_with_workers_each_ones_forwarding_counts_add_up(tmp_path: Path) -> None:
    downstream = Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path)
    upstream = None
    try:
        upstream = Server(
            f"sqlite:///{tmp_path / 'a.db'}",
            tmp_path,
            "--workers",
            "3",
            "--forward-to",
            f"{downstream.url}/event",
        )
        with httpx.Client(base_url=upstream.url, timeout=30) as client:
            for i in range(60):
                event = {"event_type": "t", "event_payload": str(i)}
                assert client.post("/event", json=event).status_code == 200
            route = f"{downstream.url}/event"
            counted = [
                f'eventctl_forward_{name}{{route="{route}"}}'
                for name in ("enqueued_total", "attempts_total", "delivered_total")
            ]
            counted.append(f'eventctl_forward_delivery_seconds_count{{route="{route}"}}')
            deadline = time.monotonic() + 30
            while True:
                # each worker copies its counts every second; any worker answers for all
                values = metric_values(client.get("/metrics").text)
                # an entry is counted delivered when answered, and leaves the queue when
                # its settle is committed, a moment after
                queued = values.get(f'eventctl_forward_queued{{route="{route}"}}')
                if all(values.get(key) == 60 for key in counted) and queued == 0:
                    break
                assert time.monotonic() < deadline, {key: values.get(key) for key in counted}
                time.sleep(0.2)
        # the gauges are the database's, read once, not summed over the workers
        assert values[f'eventctl_forward_queued{{route="{route}"}}'] == 0
        state = f'eventctl_forward_route_state{{route="{route}",state="active"}}'
        assert values[state] == 1
    finally:
        if upstream is not None:
            code, log = upstream.stop()
            assert code == 0, log
            assert "Traceback" not in log
        downstream.stop()
