"""The forwarder against a real downstream consumer, and against failing peers
(httpx.MockTransport), on a real database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from eventctl.auth import Credentials
from eventctl.config import ForwardRoute
from eventctl.consumer.forwarder import Forwarder, entry_after, lease_ms
from eventctl.delivery import Attempt
from eventctl.errors import DatabaseError
from eventctl.events import Event
from eventctl.outbox import ACTIVE, DISABLED, PAUSED, Entry, Outbox, RouteStatus
from eventctl.store import Incoming, Store
from tests.helpers import Server, free_port

pytestmark = pytest.mark.anyio

FAST = {
    "retry_base_seconds": 0.01,
    "retry_max_seconds": 0.05,
    "breaker_cooldown_seconds": 0.2,
    "breaker_max_cooldown_seconds": 0.4,
    "timeout_seconds": 2.0,
}
Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def route(url: str = "http://127.0.0.1:9/event", **fields: object) -> ForwardRoute:
    return ForwardRoute(url, **{**FAST, **fields})  # type: ignore[arg-type]


def mock(handler: Handler) -> Callable[[ForwardRoute], httpx.AsyncBaseTransport]:
    return lambda _route: httpx.MockTransport(handler)


def store_events(store: Store, forwarder: Forwarder, n: int, kind: str = "t") -> list[str]:
    ids = [f"{kind}-{i:04d}" for i in range(n)]
    now = datetime.now(UTC)
    records = [[Incoming(i, Event(kind, f"payload {i}"), now)] for i in ids]
    store.insert_requests(records, forwarder.fanout)
    forwarder.wake()
    return ids


async def until(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


def shown(store: Store) -> dict[str, RouteStatus]:
    return {s.name: s for s in Outbox(store).status()}


async def test_every_stored_event_reaches_a_real_consumer_once_with_its_id_and_signature(
    store: Store, tmp_path: Path
) -> None:
    secrets = tmp_path / "b.whsec"
    secrets.write_text("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "\n")
    downstream = f"sqlite:///{tmp_path / 'b.db'}"
    b = Server(downstream, tmp_path, "--webhook-secrets-file", str(secrets))
    try:
        forwarder = Forwarder(
            store.url,
            [route(f"{b.url}/event", signing_secret_file=str(secrets))],
            credentials=[Credentials.from_files(token_file="", secrets_file=str(secrets))],
        )
        await forwarder.start()
        try:
            ids = store_events(store, forwarder, 300)
            await until(lambda: shown(store)[f"{b.url}/event"].delivered == 300)
        finally:
            await forwarder.stop()
        b_store = Store.open(downstream)
        try:
            held = [e.event_id for e in b_store.events(limit=1000, oldest_first=True)]
        finally:
            b_store.close()
        assert sorted(held) == ids
        status = shown(store)[f"{b.url}/event"]
        assert (status.state, status.queued, status.failed) == (ACTIVE, 0, 0)
        assert forwarder.routes[0].counters.delivered == 300
    finally:
        b.stop()


async def test_only_matching_types_are_forwarded(store: Store) -> None:
    seen: list[str] = []

    async def ok(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        return httpx.Response(200, json={"status": "success"})

    forwarder = Forwarder(store.url, [route(match=("pay.*",))], transport=mock(ok))
    await forwarder.start()
    try:
        store_events(store, forwarder, 3, "order.created")
        paid = store_events(store, forwarder, 2, "pay.done")
        await until(lambda: len(seen) == 2)
        await asyncio.sleep(0.3)
    finally:
        await forwarder.stop()
    assert sorted(seen) == paid


async def test_503_with_retry_after_is_retried_after_that_long(store: Store) -> None:
    times: list[float] = []

    async def busy_then_ok(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            return httpx.Response(503, headers={"Retry-After": "1"})
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route()], transport=mock(busy_then_ok))
    await forwarder.start()
    try:
        store_events(store, forwarder, 1)
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].delivered == 1)
    finally:
        await forwarder.stop()
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95


async def test_a_410_disables_the_route_and_keeps_its_events_until_enabled(store: Store) -> None:
    gone = True
    delivered: list[str] = []

    async def peer(request: httpx.Request) -> httpx.Response:
        if gone:
            return httpx.Response(410)
        delivered.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route(max_in_flight=1)], transport=mock(peer))
    await forwarder.start()
    try:
        ids = store_events(store, forwarder, 5)
        name = "http://127.0.0.1:9/event"
        await until(lambda: shown(store)[name].state == DISABLED)
        await asyncio.sleep(0.3)
        status = shown(store)[name]
        assert (status.queued, status.failed, status.delivered) == (5, 0, 0)
        assert "410" in status.reason
        gone = False
        Outbox(store).enable(name)
        await until(lambda: len(delivered) == 5)
    finally:
        await forwarder.stop()
    assert sorted(delivered) == ids


async def test_a_refusal_fails_the_entry_and_routes_retry_queues_it_again(store: Store) -> None:
    answers = iter([422, 200])

    async def peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    forwarder = Forwarder(store.url, [route()], transport=mock(peer))
    await forwarder.start()
    name = "http://127.0.0.1:9/event"
    try:
        store_events(store, forwarder, 1)
        await until(lambda: shown(store)[name].failed == 1)
        assert shown(store)[name].queued == 0
        assert Outbox(store).retry(name) == 1
        forwarder.wake()
        await until(lambda: shown(store)[name].delivered == 1)
    finally:
        await forwarder.stop()


async def test_the_breaker_pauses_a_failing_route_and_a_probe_closes_it(store: Store) -> None:
    calls: list[float] = []
    healthy = False

    async def peer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(200 if healthy else 500)

    forwarder = Forwarder(
        store.url, [route(breaker_failures=3, max_in_flight=1)], transport=mock(peer)
    )
    await forwarder.start()
    name = "http://127.0.0.1:9/event"
    try:
        store_events(store, forwarder, 20)
        await until(lambda: shown(store)[name].state == PAUSED)
        assert "failures in a row (last: 500)" in shown(store)[name].reason
        before = len(calls)
        await asyncio.sleep(0.15)
        assert len(calls) - before <= 1  # paused: at most a probe
        healthy = True
        await until(lambda: shown(store)[name].delivered == 20)
        assert shown(store)[name].state == ACTIVE
    finally:
        await forwarder.stop()


async def test_an_ordered_route_sends_one_at_a_time_in_stored_order(store: Store) -> None:
    seen: list[str] = []
    in_flight = 0
    most = 0

    async def peer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        key = request.headers["Idempotency-Key"]
        if key.endswith("3") and key not in seen:  # one retry in the middle
            seen.append(key)
            return httpx.Response(503)
        seen.append(key)
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route(ordered=True)], transport=mock(peer))
    await forwarder.start()
    try:
        ids = store_events(store, forwarder, 30)
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].delivered == 30)
    finally:
        await forwarder.stop()
    assert most == 1
    first_sends = list(dict.fromkeys(seen))
    assert first_sends == ids


async def test_stop_gives_back_the_leases_of_sends_cut_short(store: Store) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route()], transport=mock(slow))
    await forwarder.start()
    store_events(store, forwarder, 10)
    await until(lambda: forwarder.routes[0].counters.attempts == 10)
    started = time.monotonic()
    await forwarder.stop(grace=0.2)
    assert time.monotonic() - started < 3
    claim = Outbox(store, owner="next").claim(
        forwarder.routes[0].id, limit=100, now_ms=time.time_ns() // 1_000_000, ordered=False
    )
    assert len(claim.entries) == 10  # no lease left to wait for


async def test_an_unstarted_forwarder_refuses_to_store_events_without_their_entries(
    store: Store,
) -> None:
    forwarder = Forwarder(store.url, [route()])
    with pytest.raises(DatabaseError, match="the forwarder has not started"):
        store_events(store, forwarder, 1)
    assert store.count() == 0


ENTRY = Entry(1, "id", "t", "p", datetime.now(UTC), 0, None)


def test_an_entry_is_failed_once_retried_for_retry_max_elapsed() -> None:
    import random

    r = route(retry_max_elapsed_seconds=10)
    busy = Attempt(503, None, 0.01, None, False)
    first = entry_after(busy, ENTRY, r, 1_000, random.Random(1))
    assert (first.kind, first.attempts, first.first_attempt_ms) == ("retry", 1, 1_000)
    later = ENTRY._replace(attempts=1, first_attempt_ms=1_000)
    assert entry_after(busy, later, r, 10_999, random.Random(1)).kind == "retry"
    assert entry_after(busy, later, r, 11_000, random.Random(1)).kind == "failed"
    asked = Attempt(429, None, 0.01, 7.0, False)
    assert entry_after(asked, ENTRY, r, 1_000, random.Random(1)).due_ms == 8_000
    assert (
        entry_after(Attempt(None, "timeout", 2.0, None, False), ENTRY, r, 0, random.Random()).kind
        == "retry"
    )
    assert (
        entry_after(Attempt(400, None, 0.0, None, False), ENTRY, r, 0, random.Random()).kind
        == "failed"
    )
    assert (
        entry_after(Attempt(410, None, 0.0, None, False), ENTRY, r, 0, random.Random()).kind
        == "kept"
    )
    assert lease_ms(r) == 5_000


async def test_a_send_that_raises_is_retried_and_forwarding_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def broken_once(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a peer httpx could not make sense of")
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route(max_in_flight=1)], transport=mock(broken_once))
    await forwarder.start()
    try:
        store_events(store, forwarder, 3)
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].delivered == 3)
    finally:
        await forwarder.stop()
    assert calls == 4
    assert "sending event t-0000 failed" in caplog.text


async def test_a_route_keeps_max_in_flight_sends_and_twice_that_unanswered(store: Store) -> None:
    in_flight = most = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route(max_in_flight=4)], transport=mock(slow))
    await forwarder.start()
    unanswered: list[int] = []
    try:
        store_events(store, forwarder, 60)
        name = "http://127.0.0.1:9/event"
        while shown(store)[name].delivered < 60:
            unanswered.append(forwarder.routes[0].sending)
            await asyncio.sleep(0.01)
    finally:
        await forwarder.stop()
    assert most == 4
    assert 4 < max(unanswered) <= 8


def test_a_consumer_forwarding_to_itself_stores_each_event_once_and_stops(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    a = Server(sqlite_url, tmp_path, "--forward-to", f"http://127.0.0.1:{port}/event", port=port)
    try:
        for i in range(20):
            answer = httpx.post(f"{a.url}/event", json={"event_type": "t", "event_payload": str(i)})
            assert answer.status_code == 200
        deadline = time.monotonic() + 20
        while (status := shown(Store.open(sqlite_url))[f"{a.url}/event"]).delivered < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        store = Store.open(sqlite_url)
        assert store.count() == 20  # each came back as a replay of itself: no new entry
        assert (shown(store)[f"{a.url}/event"].delivered, status.queued) == (20, 0)
        store.close()
    finally:
        a.stop()


async def test_a_paused_route_sends_one_probe_at_a_time(store: Store) -> None:
    calls = 0

    async def down(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return httpx.Response(503)

    forwarder = Forwarder(
        store.url, [route(breaker_failures=3, max_in_flight=8)], transport=mock(down)
    )
    await forwarder.start()
    try:
        store_events(store, forwarder, 50)
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].state == PAUSED)
        await asyncio.sleep(0.1)  # the sends in flight when it opened come back
        before = calls
        await asyncio.sleep(1.0)  # pauses of 0.2 s, then 0.4 s: a few probes
    finally:
        await forwarder.stop()
    assert 1 <= calls - before <= 4


def attempts(store: Store) -> int:
    cursor = store.database.execute_sql("SELECT attempts FROM outbox")  # type: ignore[no-untyped-call]
    row = cursor.fetchone()
    return int(row[0]) if row else -1


async def test_an_entry_tried_a_thousand_times_is_still_retried(store: Store) -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "1"}),
            httpx.Response(503),
            httpx.Response(200),
        ]
    )

    async def peer(request: httpx.Request) -> httpx.Response:
        return next(answers)

    forwarder = Forwarder(store.url, [route()], transport=mock(peer))
    await forwarder.start()
    try:
        store_events(store, forwarder, 1)
        await until(lambda: attempts(store) == 1)
        # as after a day of probes: 2.0 ** 1500 would overflow the backoff
        store.database.execute_sql("UPDATE outbox SET attempts = 1500")  # type: ignore[no-untyped-call]
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].delivered == 1, seconds=10)
    finally:
        await forwarder.stop()


async def test_a_send_is_cut_off_after_the_route_timeout_in_all(store: Store) -> None:
    calls: list[float] = []

    async def stalls_once(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(3)  # trickling: no single httpx phase would time out
        return httpx.Response(200)

    forwarder = Forwarder(store.url, [route(timeout_seconds=0.3)], transport=mock(stalls_once))
    await forwarder.start()
    try:
        store_events(store, forwarder, 1)
        await until(lambda: shown(store)["http://127.0.0.1:9/event"].delivered == 1, seconds=10)
    finally:
        await forwarder.stop()
    assert len(calls) == 2
    assert calls[1] - calls[0] < 1  # cut off at 0.3 s, not resent when its lease (1.6 s) ran out


def test_a_410_does_not_start_the_retry_clock() -> None:
    import random

    gone = entry_after(Attempt(410, None, 0.0, None, False), ENTRY, route(), 5_000, random.Random())
    assert (gone.kind, gone.first_attempt_ms) == ("kept", None)


async def test_a_route_of_several_urls_fails_over_at_once_and_sends_each_event_once(
    store: Store,
) -> None:
    arrived: dict[str, list[str]] = {"a.test": [], "b.test": []}

    async def a_down(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        arrived[host].append(request.headers["Idempotency-Key"])
        if host == "a.test":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"status": "success"})

    urls = "http://a.test/event http://b.test/event"
    forwarder = Forwarder(store.url, [route(urls, name="both")], transport=mock(a_down))
    await forwarder.start()
    try:
        ids = store_events(store, forwarder, 100)
        await until(lambda: shown(store)["both"].delivered == 100)
    finally:
        await forwarder.stop()
    assert sorted(arrived["b.test"]) == ids  # each once: none waited for a retry
    assert 1 <= len(arrived["a.test"]) <= 3  # the first failure, then probes
    status = shown(store)["both"]
    assert (status.state, status.queued, status.failed, status.url) == (ACTIVE, 0, 0, urls)
    assert forwarder.routes[0].counters.retried == 0


async def test_a_route_of_several_urls_waits_on_a_429_instead_of_bouncing(store: Store) -> None:
    requests: list[str] = []

    async def busy(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.host)
        return httpx.Response(429, headers={"Retry-After": "5"})

    urls = "http://a.test/event http://b.test/event"
    forwarder = Forwarder(store.url, [route(urls, name="both")], transport=mock(busy))
    await forwarder.start()
    try:
        store_events(store, forwarder, 3)
        await until(lambda: len(requests) >= 3)
        await asyncio.sleep(0.5)
    finally:
        await forwarder.stop()
    assert len(requests) == 3  # one send each, then the route waits its Retry-After
    assert forwarder.routes[0].endpoints.failovers == 0
