"""Several endpoints: the choice among them, back-off and probes, failover with the same id."""

from __future__ import annotations

import asyncio
from collections import Counter
from io import StringIO

import httpx
import pytest
from rich.console import Console

from eventctl.endpoints import BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, Endpoint, Endpoints, Ticket
from eventctl.propagator.display import render, summary_lines
from eventctl.propagator.propagator import (
    Delivery,
    Observers,
    Plan,
    Propagator,
    Record,
    Stats,
)
from eventctl.retry import RetryPolicy
from tests.propagator.test_propagator import EVENTS, virtual
from tests.vclock import VirtualClock

pytestmark = pytest.mark.anyio

A, B, C = "http://a.test/event", "http://b.test/event", "http://c.test/event"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(endpoints: Endpoints, endpoint: Endpoint, status: int | None = None) -> None:
    """An attempt on `endpoint`, picked now, that got `status` (None: no answer)."""
    ticket = Ticket(endpoint, endpoints._serial + 1)
    endpoints._serial += 1
    endpoint.outstanding += 1
    endpoints.answered(ticket, status, "connection refused" if status is None else None)


def pick_answered(endpoints: Endpoints, status: int = 200) -> Endpoint:
    ticket = endpoints.pick()
    endpoints.answered(ticket, status, None)
    return ticket.endpoint


def test_attempts_go_in_turn_over_equally_busy_healthy_endpoints() -> None:
    endpoints = Endpoints([A, B, C], Clock())
    assert [pick_answered(endpoints).text for _ in range(6)] == [A, B, C, A, B, C]


def test_a_failure_takes_an_endpoint_out_for_a_backoff_doubled_per_failure_up_to_a_cap() -> None:
    clock = Clock()
    endpoints = Endpoints([A, B], clock)
    a, b = endpoints.all
    fail(endpoints, a)
    assert (a.state, a.down_until, a.last_error) == ("down", BACKOFF_SECONDS, "connection refused")
    assert {pick_answered(endpoints).text for _ in range(4)} == {B}
    for failures in range(2, 10):
        clock.now = a.down_until
        probe = endpoints.pick()  # the probe, once the back-off is over
        assert probe.endpoint is a
        assert a.state == "probing"
        assert pick_answered(endpoints) is b  # one probe at a time
        endpoints.answered(probe, 503, None)
        expected = min(BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
        assert a.down_until - clock.now == expected
    assert a.last_error == "503"
    clock.now = a.down_until
    assert pick_answered(endpoints) is a
    assert (a.state, a.failures) == ("up", 0)
    turns = [pick_answered(endpoints).text for _ in range(4)]
    assert turns[:2] in ([A, B], [B, A])  # healthy again: in turn with b
    assert turns[2:] == turns[:2]


def test_the_attempts_a_host_held_when_it_went_down_count_as_one_failure() -> None:
    clock = Clock()
    endpoints = Endpoints([A, B], clock)
    a = endpoints.all[0]
    held = [endpoints.pick() for _ in range(6)]  # three each
    on_a = [t for t in held if t.endpoint is a]
    for ticket in on_a:  # the host hangs, then its attempts time out one after another
        clock.now += 0.1
        endpoints.answered(ticket, None, "timeout")
    assert (a.failures, a.failed) == (1, 3)
    assert a.down_until == pytest.approx(0.1 + BACKOFF_SECONDS)


def test_a_late_answer_of_an_older_attempt_leaves_the_probe_alone() -> None:
    clock = Clock()
    endpoints = Endpoints([A, B], clock)
    a = endpoints.all[0]
    old = endpoints.pick()
    assert old.endpoint is a
    fail(endpoints, a)  # a goes down; `old` is still under way
    clock.now = a.down_until
    probe = endpoints.pick()
    assert (probe.endpoint, a.state) == (a, "probing")
    endpoints.answered(old, None, "timeout")  # sent before a went down
    assert (a.state, a.failures) == ("probing", 1)
    assert endpoints.pick().endpoint is not a  # still one probe at a time
    endpoints.answered(probe, None, "timeout")
    assert (a.state, a.failures) == ("down", 2)


def test_a_4xx_is_an_answer_and_leaves_the_endpoint_healthy() -> None:
    endpoints = Endpoints([A, B], Clock())
    a = endpoints.all[0]
    endpoints.answered(endpoints.pick(), 422, None)
    assert (a.state, a.attempts, a.delivered, a.failed, a.outstanding) == ("up", 1, 0, 0, 0)


def test_only_no_answer_or_a_5xx_fails_over_at_once() -> None:
    endpoints = Endpoints([A, B], Clock())
    a = endpoints.all[0]
    assert endpoints.fails_over(a, None)
    assert endpoints.fails_over(a, 503)
    assert not endpoints.fails_over(a, 429)  # wait as asked, not elsewhere at once
    assert not endpoints.fails_over(a, 408)
    assert endpoints.failovers == 2


def test_with_every_endpoint_down_the_attempt_goes_to_the_one_back_first() -> None:
    clock = Clock()
    endpoints = Endpoints([A, B, C], clock)
    a, b, c = endpoints.all
    for endpoint, failures in ((a, 3), (b, 1), (c, 2)):
        for _ in range(failures):
            fail(endpoints, endpoint)
    assert endpoints.pick().endpoint is b
    assert not endpoints.has_healthy(besides=a)
    assert not endpoints.fails_over(a, None)
    clock.now = b.down_until
    assert endpoints.has_healthy(besides=a)
    assert not endpoints.has_healthy(besides=b)


def test_one_endpoint_is_always_the_one_and_never_fails_over() -> None:
    clock = Clock()
    endpoints = Endpoints([A], clock)
    only = endpoints.all[0]
    ticket = endpoints.pick()
    endpoints.answered(ticket, None, "refused")
    assert endpoints.pick(failed=only) == ticket
    assert not endpoints.fails_over(only, None)
    assert (endpoints.failovers, only.outstanding) == (0, 0)


def test_the_workers_endpoints_add_up() -> None:
    clock = Clock()
    parts = []
    for failing in (False, True):
        endpoints = Endpoints([A, B], clock)
        a, b = endpoints.all
        endpoints.answered(Ticket(a, 0), 200, None)
        if failing:
            fail(endpoints, b)
            endpoints.fails_over(b, None)
        else:
            endpoints.answered(Ticket(b, 0), 200, None)
        parts.append(endpoints.to_json())
    parent = Endpoints([A, B], clock)
    parent.add_up(parts)
    a, b = parent.all
    assert (a.attempts, a.delivered, a.state) == (2, 2, "up")
    assert (b.attempts, b.delivered, b.failed, b.state, b.last_error) == (
        2,
        1,
        1,
        "down",
        "connection refused",
    )
    assert parent.failovers == 1
    clock.now = b.down_until
    probing = Endpoints([A, B], clock)
    fail(probing, probing.all[1])
    clock.now = probing.all[1].down_until
    assert probing.pick().endpoint is probing.all[1]
    parent.add_up([probing.to_json(), parts[0]])
    assert parent.all[1].state == "probing"


def test_an_endpoint_holding_attempts_gets_no_more_until_the_others_have_as_many() -> None:
    endpoints = Endpoints([A, B, C], Clock())
    a, b, c = endpoints.all
    held = [endpoints.pick() for _ in range(3)]  # one each
    assert [t.endpoint for t in held] == [a, b, c]
    endpoints.answered(held[1], 200, None)
    endpoints.answered(held[2], 200, None)
    # a still holds its attempt (a hung host): the next ones go to b and c
    assert [endpoints.pick().endpoint.text for _ in range(2)] == [B, C]
    assert (a.outstanding, b.outstanding, c.outstanding) == (1, 1, 1)
    endpoints.released(held[0])
    assert a.outstanding == 0
    assert endpoints.pick().endpoint is a


class Hosts:
    """Injected consumers by host: `down` ones refuse connections (or answer `status`); each
    stores an id once, as the real consumer does, and counts every request."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.down: dict[str, int | None] = {}  # host -> status (None: connection refused)
        self.requests: Counter[str] = Counter()
        self.stored: dict[str, str] = {}  # id -> host it was stored on

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.requests[host] += 1
        if host in self.down:
            status = self.down[host]
            if status is None:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(status)
        key = request.headers["Idempotency-Key"]
        replayed = key in self.stored
        self.stored.setdefault(key, host)
        return httpx.Response(200, headers={"Idempotent-Replayed": str(replayed).lower()})


def several(hosts: Hosts, plan: Plan, records: list[Record] | None = None) -> Propagator:
    return Propagator(
        plan,
        Delivery((A, B), httpx.MockTransport(hosts), policy=RetryPolicy()),
        runtime=virtual(hosts.clock),
        observers=Observers(on_record=None if records is None else records.append),
    )


@pytest.mark.parametrize("down_with", [None, 503])
async def test_events_fail_over_to_the_healthy_endpoint_at_once_with_their_ids(
    down_with: int | None,
) -> None:
    clock = VirtualClock()
    hosts = Hosts(clock)
    hosts.down["a.test"] = down_with
    records: list[Record] = []
    stats = await clock.run(several(hosts, Plan(EVENTS, 0.01, count=200), records).run())
    assert (stats.delivered, stats.failed) == (200, 0)
    assert len(hosts.stored) == 200
    assert set(hosts.stored.values()) == {"b.test"}
    # one failed attempt on a: the rest went to b while a was down (probes aside)
    assert hosts.requests["a.test"] <= 3
    assert stats.endpoints is not None
    assert stats.endpoints.failovers == hosts.requests["a.test"]
    failover = next(r for r in records if r.outcome == "retrying")
    assert (failover.endpoint, failover.retry_in) == (A, 0.0)
    next_one = next(r for r in records if r.event_id == failover.event_id and r.attempt == 2)
    assert (next_one.endpoint, next_one.outcome) == (B, "delivered")
    summary = stats.summary(clock.now)
    assert summary["failovers"] == stats.endpoints.failovers
    assert [e["state"] for e in stats.endpoints.summary(clock.now)] == ["down", "up"]
    assert summary["endpoints"] == stats.endpoints.summary(clock.now)
    assert any("failover" in line for line in summary_lines(summary))


async def test_an_endpoint_back_from_its_backoff_takes_its_share_again() -> None:
    clock = VirtualClock()
    hosts = Hosts(clock)
    hosts.down["a.test"] = None
    propagator = several(hosts, Plan(EVENTS, 0.01, count=2000))

    async def bring_back() -> None:
        await clock.sleep(5.0)
        del hosts.down["a.test"]

    async def both() -> Stats:
        stats, _ = await asyncio.gather(propagator.run(), bring_back())
        return stats

    stats = await clock.run(both())
    assert (stats.delivered, len(hosts.stored)) == (2000, 2000)
    # probes at 1, 3 and 7 s (back-offs of 1, 2, 4 s): a is back at 7 s of 20 and takes half
    # of the rest
    shares = Counter(hosts.stored.values())
    assert 550 < shares["a.test"] < 750, shares
    assert propagator.endpoints.all[0].state == "up"


async def test_with_every_endpoint_down_the_retry_policy_spaces_the_attempts() -> None:
    clock = VirtualClock()
    hosts = Hosts(clock)
    hosts.down.update({"a.test": None, "b.test": 503})
    policy = RetryPolicy(attempts=6, base_seconds=1.0, max_seconds=1.0, max_elapsed_seconds=100)
    propagator = Propagator(
        Plan(EVENTS, 1.0, count=1),
        Delivery((A, B), httpx.MockTransport(hosts), policy=policy),
        runtime=virtual(clock),
    )
    stats = await clock.run(propagator.run())
    assert (stats.failed, stats.attempts) == (1, 6)
    assert sum(hosts.requests.values()) == 6
    assert clock.now >= 3.0  # two at once (one each), then spaced by the policy


@pytest.mark.parametrize("status", [429, 408])
async def test_a_429_or_408_from_every_endpoint_waits_as_asked_and_fails_nothing_over(
    status: int,
) -> None:
    clock = VirtualClock()
    hosts = Hosts(clock)
    hosts.down.update({"a.test": status, "b.test": status})
    policy = RetryPolicy(attempts=5, base_seconds=1.0, max_seconds=1.0, max_elapsed_seconds=100)
    records: list[Record] = []
    propagator = Propagator(
        Plan(EVENTS, 1.0, count=1),
        Delivery((A, B), httpx.MockTransport(hosts), policy=policy),
        runtime=virtual(clock),
        observers=Observers(on_record=records.append),
    )
    stats = await clock.run(propagator.run())
    assert (stats.failed, stats.attempts) == (1, 5)
    assert all(r.retry_in and r.retry_in >= 0.5 for r in records if r.outcome == "retrying")
    assert clock.now >= 4 * 0.5
    assert propagator.endpoints.failovers == 0
    assert [e.state for e in propagator.endpoints.all] == ["up", "up"]


def test_the_live_status_shows_each_endpoints_state() -> None:
    clock = Clock()
    endpoints = Endpoints([A, B], clock)
    fail(endpoints, endpoints.all[0])
    endpoints.answered(Ticket(endpoints.all[1], 0), 200, None)
    propagator = Propagator(
        Plan(EVENTS, 1.0, count=1), Delivery((A, B), httpx.MockTransport(lambda r: r))
    )
    stats = propagator.stats
    stats.endpoints = endpoints
    console = Console(file=StringIO(), width=140, color_system=None)
    console.print(render(stats, 0.5))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "2 endpoints" in text
    assert "down 0.5s" in text
    assert "connection refused" in text
    assert A in text
    assert B in text
