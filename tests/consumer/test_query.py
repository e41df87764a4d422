"""GET /events, GET /events/{event_id} and GET /events/summary: filters, paging, counts,
errors; both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import in_process

pytestmark = pytest.mark.anyio


@pytest.fixture
def t0() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
async def client(store: Store, t0: datetime) -> AsyncIterator[httpx.AsyncClient]:
    records = [
        Incoming(
            f"e{i:02}",
            Event(f"type.{i % 3}", f"payload {i} {'needle' * (i % 5 == 0)}"),
            t0 + timedelta(minutes=i),
        )
        for i in range(30)
    ]
    store.insert(records)
    async with in_process(create_app(ConsumerConfig(), store)) as c:
        yield c


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["event_id"] for e in response.json()["events"]]


async def test_newest_first_with_a_default_limit_of_50(client: httpx.AsyncClient) -> None:
    response = await client.get("/events")
    assert ids(response) == [f"e{i:02}" for i in range(29, -1, -1)]
    assert response.json()["next_cursor"] is None
    event = response.json()["events"][0]
    assert set(event) == {"id", "event_id", "event_type", "event_payload", "received_at"}


async def test_filters(client: httpx.AsyncClient, t0: datetime) -> None:
    assert ids(await client.get("/events", params={"type": "type.0", "limit": 3})) == [
        "e27",
        "e24",
        "e21",
    ]
    both = ids(await client.get("/events", params=[("type", "type.0"), ("type", "type.1")]))
    assert len(both) == 20
    since = (t0 + timedelta(minutes=27)).isoformat()
    until = (t0 + timedelta(minutes=29)).isoformat()
    assert ids(await client.get("/events", params={"since": since})) == ["e29", "e28", "e27"]
    assert ids(await client.get("/events", params={"since": since, "until": until})) == [
        "e28",
        "e27",
    ]
    assert ids(await client.get("/events", params={"q": "needle"})) == [
        "e25",
        "e20",
        "e15",
        "e10",
        "e05",
        "e00",
    ]
    recent = ids(await client.get("/events", params={"since": "34m30s"}))
    assert recent == [f"e{i:02}" for i in range(29, 25, -1)]


async def test_pages_skip_and_repeat_nothing_while_events_arrive(
    client: httpx.AsyncClient, store: Store
) -> None:
    first = await client.get("/events", params={"limit": 10})
    seen = ids(first)
    store.insert([Incoming(f"new{i}", Event("late", "x"), datetime.now(UTC)) for i in range(5)])
    cursor = first.json()["next_cursor"]
    while cursor:
        page = await client.get("/events", params={"limit": 10, "cursor": cursor})
        seen += ids(page)
        cursor = page.json()["next_cursor"]
    assert seen == [f"e{i:02}" for i in range(29, -1, -1)]


async def test_one_event_by_id(client: httpx.AsyncClient) -> None:
    found = await client.get("/events/e07")
    assert found.json()["event_payload"] == "payload 7 "
    missing = await client.get("/events/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "soon"}, "until"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "c1.99999999999999999999"}, "cursor"),
        ({"colour": "red"}, "colour"),
        ({"limit": "\u00b2"}, "limit"),
        ({"q": "a\x00b"}, "q"),
        ({"type": "a\x00"}, "type"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    response = await client.get("/events", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_parameter"
    assert body["errors"][0]["field"] == name
    assert body["message"].startswith(name)


async def test_ages_beyond_the_calendar_mean_from_the_beginning(client: httpx.AsyncClient) -> None:
    assert len(ids(await client.get("/events", params={"since": "99999999999d"}))) == 30
    assert ids(await client.get("/events", params={"until": "9" * 400})) == []


async def test_an_event_id_with_nul_is_400_not_a_database_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/events/a%00b")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "event_id"


@pytest.mark.parametrize(
    ("headers", "params", "name"),
    [
        ({"Last-Event-ID": "99999999999999999999"}, {}, "Last-Event-ID"),
        ({"Last-Event-ID": b"\xb2"}, {}, "Last-Event-ID"),
        ({}, {"after": "-1"}, "after"),
        ({"Last-Event-ID": "3"}, {"after": "x"}, "after"),
        ({}, {"type": "\x00"}, "type"),
    ],
)
async def test_bad_stream_positions_are_400(
    client: httpx.AsyncClient, headers: dict[str, str | bytes], params: dict[str, str], name: str
) -> None:
    response = await client.get("/events/stream", headers=headers, params=params)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == name


async def test_a_read_the_database_cannot_answer_is_503(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        store.database.drop_tables([store.model])
        response = await client.get("/events")
        single = await client.get("/events/e01")
    for answer in (response, single):
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "database_unavailable"
        assert answer.headers["Retry-After"] == "1"


def slot(summary: dict[str, Any], moment: datetime) -> int:
    """The index of the series bucket that holds `moment`."""
    series = summary["series"]
    start = datetime.fromisoformat(series["start"])
    return int((int(moment.timestamp()) - int(start.timestamp())) // series["bucket_seconds"])


async def test_the_summary_counts_the_whole_table_and_a_recent_window(store: Store) -> None:
    now = datetime.now(UTC)
    recent = [now - timedelta(seconds=s) for s in (5, 5, 5, 100, 250)]
    records = [
        Incoming(f"old{i}", Event(f"t{i % 3}", "x"), now - timedelta(hours=2, seconds=i))
        for i in range(1200)
    ] + [Incoming(f"new{i}", Event("t9", "x"), at) for i, at in enumerate(recent)]
    store.insert(records)
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        response = await client.get("/events/summary")
        minutes = await client.get("/events/summary", params={"window": 600, "bucket": 60})
        top = await client.get("/events/summary", params={"top": 2})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["total"] == 1205 == store.count()
    assert summary["last_id"] == store.last_id()
    assert summary["type_count"] == 4
    assert summary["types"] == [
        {"event_type": "t0", "count": 400},
        {"event_type": "t1", "count": 400},
        {"event_type": "t2", "count": 400},
        {"event_type": "t9", "count": 5},
    ]
    series = summary["series"]
    assert series["bucket_seconds"] == 1
    assert len(series["counts"]) == 300
    assert sum(series["counts"]) == 5  # the two-hour-old events are outside the window
    expected = [0] * 300
    for at in recent:
        expected[slot(summary, at)] += 1
    assert series["counts"] == expected
    start = datetime.fromisoformat(series["start"])
    assert start.timestamp() % 1 == 0
    assert timedelta(seconds=298) < now - start < timedelta(seconds=301)
    answered = datetime.fromisoformat(summary["now"])
    assert now <= answered <= datetime.now(UTC)
    assert slot(summary, answered) == 299  # the last bucket holds the server's present

    by_minute = minutes.json()["series"]
    assert (by_minute["bucket_seconds"], len(by_minute["counts"])) == (60, 10)
    assert datetime.fromisoformat(by_minute["start"]).timestamp() % 60 == 0
    assert sum(by_minute["counts"]) == 5
    assert by_minute["counts"][slot(minutes.json(), recent[0])] >= 3

    assert [t["event_type"] for t in top.json()["types"]] == ["t0", "t1"]
    assert (top.json()["total"], top.json()["type_count"]) == (1205, 4)


async def test_the_summary_of_an_empty_table(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        response = await client.get("/events/summary", params={"window": "7", "bucket": "3"})
    body = response.json()
    assert (body["total"], body["last_id"], body["type_count"], body["types"]) == (0, 0, 0, [])
    assert body["series"]["counts"] == [0, 0, 0]  # 7 s rounded up to whole 3 s buckets


async def test_the_summary_is_not_an_event_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/events/summary")
    assert response.status_code == 200
    assert response.json()["total"] == 30


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"window": "0"}, "window"),
        ({"window": "86401"}, "window"),
        ({"window": "1.5"}, "window"),
        ({"bucket": "0"}, "bucket"),
        ({"bucket": "3601"}, "bucket"),
        ({"top": "1001"}, "top"),
        ({"top": "\u00b2"}, "top"),
        ({"since": "5m"}, "since"),
    ],
)
async def test_bad_summary_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    response = await client.get("/events/summary", params=params)
    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["errors"][0]["field"]) == ("invalid_parameter", name)
    assert body["message"].startswith(name)


async def test_a_summary_the_database_cannot_answer_is_503(store: Store) -> None:
    async with in_process(create_app(ConsumerConfig(), store)) as client:
        store.database.drop_tables([store.model])
        response = await client.get("/events/summary")
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
