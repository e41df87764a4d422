"""The propagator's logic with a virtual clock and an injected peer: no real waiting."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from io import StringIO

import httpx
import pytest
from rich.console import Console

from eventctl.auth import Credentials, WebhookHeaders, check_signature, signing_key
from eventctl.delivery import (
    Answer,
    Attempt,
    classify,
    event_body,
    post_once,
    retry_after_seconds,
    timeout_extensions,
)
from eventctl.events import Event
from eventctl.propagator.display import render
from eventctl.propagator.propagator import (
    Delivery,
    Observers,
    Outcome,
    Plan,
    Propagator,
    Record,
    Runtime,
    Stats,
)
from eventctl.retry import RetryPolicy
from tests.vclock import VirtualClock

pytestmark = pytest.mark.anyio

EVENTS = [Event(f"type.{i}", f"payload {i}") for i in range(5)]
ENDPOINT = "http://consumer.test/event"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Peer:
    """An injected consumer: records what arrived and when (on the virtual clock)."""

    def __init__(self, clock: VirtualClock, answer: Handler | None = None) -> None:
        self.clock = clock
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.answer = answer

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(
            (self.clock.now, request.headers["Idempotency-Key"], json.loads(request.content))
        )
        if self.answer is not None:
            return await self.answer(request)
        return httpx.Response(200, json={"status": "success"})

    def times(self) -> list[float]:
        return [t for t, _, _ in self.requests]


WALL = datetime(2026, 11, 27, tzinfo=UTC)


def virtual(clock: VirtualClock, rng: random.Random | None = None) -> Runtime:
    """The runtime of these tests: the virtual clock, seeded randomness, a fixed wall clock."""
    return Runtime(
        clock=clock,
        sleep=clock.sleep,
        wall_clock=lambda: WALL,
        rng=rng or random.Random(1),
        jitter_rng=random.Random(2),
    )


def make(
    peer: Peer,
    plan: Plan,
    *,
    records: list[Record] | None = None,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
) -> Propagator:
    """A propagator of `plan` that sends to `peer`, on the peer's virtual clock."""
    return Propagator(
        plan,
        Delivery(ENDPOINT, httpx.MockTransport(peer), policy=policy or RetryPolicy()),
        runtime=virtual(peer.clock, rng),
        observers=Observers(on_record=None if records is None else records.append),
    )


async def test_ticks_are_drift_free_even_when_responses_are_slow() -> None:
    clock = VirtualClock()

    async def slow(request: httpx.Request) -> httpx.Response:
        await clock.sleep(2.5)
        return httpx.Response(200, json={"status": "success"})

    peer = Peer(clock, slow)
    stats = await clock.run(make(peer, Plan(EVENTS, 0.7, count=10)).run())
    assert peer.times() == pytest.approx([k * 0.7 for k in range(10)])
    assert stats.delivered == 10
    assert stats.service.quantile(0.5) == pytest.approx(2.5)


async def test_a_seed_makes_the_choice_reproducible_and_uniform() -> None:
    sequences = []
    for seed in (7, 7, 8):
        clock = VirtualClock()
        peer = Peer(clock)
        await clock.run(make(peer, Plan(EVENTS, 1.0, count=30), rng=random.Random(seed)).run())
        sequences.append([body["event_type"] for _, _, body in peer.requests])
    assert sequences[0] == sequences[1]
    assert sequences[0] != sequences[2]

    clock = VirtualClock()
    peer = Peer(clock)
    await clock.run(make(peer, Plan(EVENTS, 0.001, count=2000)).run())
    counts = Counter(body["event_type"] for _, _, body in peer.requests)
    assert set(counts) == {e.event_type for e in EVENTS}
    assert all(320 < n < 480 for n in counts.values()), counts


async def test_every_generated_event_has_its_own_id_kept_across_retries() -> None:
    clock = VirtualClock()
    attempts: Counter[str] = Counter()

    async def flaky(request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        attempts[key] += 1
        if attempts[key] < 3:
            return httpx.Response(503, json={"status": "error"})
        return httpx.Response(200, json={"status": "success"})

    peer = Peer(clock, flaky)
    stats = await clock.run(make(peer, Plan(EVENTS, 1.0, count=4)).run())
    assert len(attempts) == 4
    assert set(attempts.values()) == {3}
    assert (stats.generated, stats.delivered, stats.failed, stats.attempts) == (4, 4, 0, 12)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(attempts=10, base_seconds=0.5, max_seconds=4.0)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4


async def test_the_retry_schedule_follows_the_policy() -> None:
    clock = VirtualClock()

    async def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    peer = Peer(clock, down)
    records: list[Record] = []
    policy = RetryPolicy(attempts=4, base_seconds=1.0, max_seconds=3.0)
    stats = await clock.run(
        make(peer, Plan(EVENTS, 1.0, count=1), records=records, policy=policy).run()
    )
    times = peer.times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    for gap, ceiling in zip(gaps, [1.0, 2.0, 3.0], strict=True):
        assert ceiling / 2 <= gap <= ceiling
    assert [r.outcome for r in records] == ["retrying"] * 3 + ["failed"]
    assert stats.failed == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status: int) -> None:
    clock = VirtualClock()
    answers = [httpx.Response(status, headers={"Retry-After": "7"}), httpx.Response(200)]

    async def busy(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    peer = Peer(clock, busy)
    stats = await clock.run(make(peer, Plan(EVENTS, 1.0, count=1)).run())
    assert peer.times() == [0.0, 7.0]
    assert stats.delivered == 1


def test_retry_after_parsing() -> None:
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("Fri, 27 Nov 2026 09:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Fri, 27 Nov 2026 08:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415, 422])
async def test_other_4xx_are_permanent_and_not_retried(status: int) -> None:
    clock = VirtualClock()

    async def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status)

    peer = Peer(clock, refuse)
    stats = await clock.run(make(peer, Plan(EVENTS, 1.0, count=3)).run())
    assert len(peer.requests) == 3
    assert (stats.failed, stats.delivered, stats.attempts) == (3, 0, 3)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_408_429_and_5xx_are_retried(status: int) -> None:
    clock = VirtualClock()
    answers = [httpx.Response(status), httpx.Response(200)]

    async def once(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    stats = await clock.run(make(Peer(clock, once), Plan(EVENTS, 1.0, count=1)).run())
    assert (stats.delivered, stats.attempts) == (1, 2)


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (httpx.ConnectError("x", request=None), "x"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("gone"), "connection dropped"),
    ],
)
async def test_connection_errors_and_timeouts_are_retried(error: Exception, text: str) -> None:
    clock = VirtualClock()
    failures = [error]

    async def broken(request: httpx.Request) -> httpx.Response:
        if failures:
            raise failures.pop()
        return httpx.Response(200)

    records: list[Record] = []
    stats = await clock.run(
        make(Peer(clock, broken), Plan(EVENTS, 1.0, count=1), records=records).run()
    )
    assert (stats.delivered, stats.attempts) == (1, 2)
    assert records[0].outcome == "retrying"
    assert records[0].result == text


async def test_retries_end_in_failure_after_the_last_attempt() -> None:
    clock = VirtualClock()

    async def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    policy = RetryPolicy(attempts=3, base_seconds=0.1, max_seconds=1)
    stats = await clock.run(
        make(Peer(clock, refused), Plan(EVENTS, 1.0, count=2), policy=policy).run()
    )
    assert (stats.generated, stats.failed, stats.delivered, stats.attempts) == (2, 2, 0, 6)
    assert not stats.all_delivered


async def test_duration_stops_generation() -> None:
    clock = VirtualClock()
    peer = Peer(clock)
    stats = await clock.run(make(peer, Plan(EVENTS, 0.5, duration=3.0)).run())
    assert peer.times() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert stats.all_delivered


async def test_stop_gives_in_flight_events_a_grace_period_then_counts_them_pending() -> None:
    clock = VirtualClock()

    async def hang(request: httpx.Request) -> httpx.Response:
        await clock.sleep(1000)
        return httpx.Response(200)

    propagator = make(Peer(clock, hang), Plan(EVENTS, 1.0))

    async def stop_later() -> None:
        await clock.sleep(4.5)
        propagator.stop()

    stopper = asyncio.ensure_future(stop_later())
    stats = await clock.run(propagator.run(grace=2.0))
    await stopper
    assert stats.generated == 5
    assert stats.pending_at_exit == 5
    assert stats.finished_at == pytest.approx(6.5)
    assert not stats.all_delivered


async def test_the_in_flight_cap_skips_ticks_and_says_so() -> None:
    clock = VirtualClock()

    async def hang(request: httpx.Request) -> httpx.Response:
        await clock.sleep(10.5)
        return httpx.Response(200)

    propagator = Propagator(
        Plan(EVENTS, 1.0, count=6),
        Delivery(ENDPOINT, httpx.MockTransport(Peer(clock, hang)), max_in_flight=3),
        runtime=virtual(clock),
    )
    snapshots: list[tuple[int, bool]] = []

    async def watch() -> None:
        for _ in range(9):
            await clock.sleep(1.0)
            snapshots.append((propagator.stats.in_flight, propagator.stats.capped))

    watcher = asyncio.ensure_future(watch())
    stats = await clock.run(propagator.run())
    await watcher
    assert stats.generated == 6
    assert stats.delivered == 6
    assert stats.skipped_ticks > 0
    assert stats.summary(clock.now)["dropped"] == stats.skipped_ticks  # the cap, not the spool
    assert max(n for n, _ in snapshots) == 3
    assert any(capped for _, capped in snapshots)


def render_text(stats: Stats, now: float) -> str:
    console = Console(file=StringIO(), width=80, color_system=None)
    console.print(render(stats, now))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_the_display_renders_the_state_to_text() -> None:
    stats = Stats(ENDPOINT, 2.0, 100, started_at=10.0)
    assert "endpoint" in render_text(stats, 10.0)
    stats.generated, stats.delivered, stats.failed, stats.retrying, stats.in_flight = 7, 5, 1, 1, 1
    outcomes: list[Outcome] = ["delivered", "retrying", "failed"]
    for i, outcome in enumerate(outcomes):
        latency = 0.004 if outcome == "delivered" else None
        status = 200 + i * 150
        record = Record(
            outcome, f"id{i}", f"order.created.{i}", 1, 10.0 + i, status, latency=latency
        )
        stats.recent.append(record)
        stats.last = record
    for seconds in (0.002, 0.004, 0.010):
        stats.service.record(seconds)
    text = render_text(stats, 75.0)
    assert ENDPOINT in text
    assert "0:01:05" in text
    assert "2 s" in text
    assert "order.created.2  500" in text
    assert "p50 4.0 ms" in text
    assert "retrying" in text
    assert "failed" in text
    assert "cap hit" not in text
    stats.capped = True
    assert "cap hit" in render_text(stats, 75.0)


def down_until(clock: VirtualClock, back_at: float) -> Handler:
    """A consumer that refuses connections until `back_at` on the virtual clock."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if clock.now < back_at:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200)

    return answer


async def test_the_default_policy_rides_out_a_consumer_down_for_a_minute() -> None:
    clock = VirtualClock()
    peer = Peer(clock, down_until(clock, 60.0))
    stats = await clock.run(make(peer, Plan(EVENTS, 0.1, count=20)).run())
    assert (stats.delivered, stats.failed) == (20, 0)
    # the capped backoff (10 s) brings every event back within 10 s of the consumer
    assert max(peer.times()) <= 70.0
    assert max(Counter(i for _, i, _ in peer.requests).values()) < 30


async def test_retries_stop_when_the_time_budget_is_spent_not_the_attempts() -> None:
    clock = VirtualClock()
    peer = Peer(clock, down_until(clock, 1e9))
    records: list[Record] = []
    policy = RetryPolicy(attempts=1000, base_seconds=1.0, max_seconds=8.0, max_elapsed_seconds=30)
    stats = await clock.run(
        make(peer, Plan(EVENTS, 1.0, count=1), records=records, policy=policy).run()
    )
    times = peer.times()
    assert stats.failed == 1
    # the last attempt is made when the budget ends, not later and not much earlier
    assert times[-1] == pytest.approx(30.0)
    assert 5 < len(times) < 20
    assert records[-1].outcome == "failed"


async def test_attempts_still_bound_the_retries_when_set_lower() -> None:
    clock = VirtualClock()
    peer = Peer(clock, down_until(clock, 1e9))
    policy = RetryPolicy(attempts=3, base_seconds=1.0, max_seconds=8.0, max_elapsed_seconds=600)
    stats = await clock.run(make(peer, Plan(EVENTS, 1.0, count=1), policy=policy).run())
    assert (stats.failed, len(peer.times())) == (1, 3)
    assert peer.times()[-1] < 7


async def test_abort_cuts_the_grace_period_short() -> None:
    clock = VirtualClock()
    peer = Peer(clock, down_until(clock, 1e9))
    run = make(peer, Plan(EVENTS, 0.1, count=3))

    async def interrupt_twice() -> None:
        await clock.sleep(1.0)
        run.stop()
        await clock.sleep(0.5)
        run.abort()

    interrupter = asyncio.ensure_future(interrupt_twice())
    stats = await clock.run(run.run(grace=30.0))
    await interrupter
    assert stats.pending_at_exit == 3
    assert stats.finished_at == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, Answer.DELIVERED),
        (204, Answer.DELIVERED),
        (None, Answer.TRY_AGAIN),
        (500, Answer.TRY_AGAIN),
        (503, Answer.TRY_AGAIN),
        (408, Answer.TRY_AGAIN),
        (429, Answer.TRY_AGAIN),
        (400, Answer.REFUSED),
        (401, Answer.REFUSED),
        (413, Answer.REFUSED),
        (422, Answer.REFUSED),
        (307, Answer.REFUSED),
    ],
)
def test_one_classification_of_answers_for_both_senders(status: int | None, answer: Answer) -> None:
    assert classify(status) is answer


async def test_post_once_is_one_attempt_and_what_it_got() -> None:
    clock = VirtualClock()
    key = signing_key("whsec_" + base64.b64encode(b"key").decode(), "t")
    seen: list[httpx.Request] = []

    async def replay(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await clock.sleep(0.25)
        return httpx.Response(201, headers={"Idempotent-Replayed": "true"})

    tried = await clock.run(
        post_once(
            httpx.MockTransport(replay),
            httpx.URL(ENDPOINT),
            Credentials("t0ken", [key]),
            "evt_1",
            EVENTS[0],
            extensions=timeout_extensions(2.5),
            clock=clock,
            wall_clock=lambda: WALL,
        )
    )
    assert tried == Attempt(201, None, 0.25, None, True)
    assert tried.answer is Answer.DELIVERED
    (request,) = seen
    assert request.method == "POST"
    assert request.url == ENDPOINT
    assert request.content == event_body(EVENTS[0])
    assert request.extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 2.5)
    assert request.headers["Idempotency-Key"] == "evt_1"
    assert request.headers["Authorization"] == "Bearer t0ken"
    signed = (request.headers[f"webhook-{n}"] for n in ("id", "timestamp", "signature"))
    check_signature(
        [key],
        WebhookHeaders(*signed),
        request.content,
        now=WALL.timestamp(),
        tolerance=1,
    )


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, 7.0), (429, 7.0), (500, None), (408, None), (400, None)]
)
async def test_post_once_reads_retry_after_of_429_and_503_only(
    status: int, retry_after: float | None
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "7"})

    tried = await post_once(
        httpx.MockTransport(answer),
        httpx.URL(ENDPOINT),
        Credentials(),
        "evt_1",
        EVENTS[0],
        extensions=timeout_extensions(1.0),
        clock=VirtualClock(),
        wall_clock=lambda: WALL,
    )
    assert (tried.status, tried.error, tried.retry_after, tried.replayed) == (
        status,
        None,
        retry_after,
        False,
    )
    assert tried.answer is classify(status)


async def test_post_once_turns_a_transport_error_into_an_attempt_without_status() -> None:
    clock = VirtualClock()

    async def refuse(request: httpx.Request) -> httpx.Response:
        await clock.sleep(0.5)
        raise httpx.ConnectError("refused") from ConnectionRefusedError()

    tried = await clock.run(
        post_once(
            httpx.MockTransport(refuse),
            httpx.URL(ENDPOINT),
            Credentials(),
            "evt_1",
            EVENTS[0],
            extensions=timeout_extensions(1.0),
            clock=clock,
            wall_clock=lambda: WALL,
        )
    )
    assert tried == Attempt(None, "connection refused", 0.5, None, False)
    assert tried.answer is Answer.TRY_AGAIN
