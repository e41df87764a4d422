"""Stages of a run: the plan's due times, its accuracy, rate changes, and honest latency."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from eventctl.propagator.propagator import (
    Delivery,
    Observers,
    Plan,
    Propagator,
    Scheduled,
    Stats,
)
from eventctl.propagator.schedule import Schedule, Stage, StagesError, parse_stages
from tests.propagator.test_propagator import ENDPOINT, EVENTS, Peer, make, virtual
from tests.vclock import VirtualClock

pytestmark = pytest.mark.anyio

PLAN = "30s@100,1m@100-2000,30s@2000"


def due_times(schedule: Schedule) -> list[float]:
    times, k = [], 0
    while (t := schedule.due(k)) is not None:
        times.append(t)
        k += 1
    return times


def test_stages_parse_holds_and_ramps() -> None:
    assert parse_stages(PLAN) == (
        Stage(30, 100, 100),
        Stage(60, 100, 2000),
        Stage(30, 2000, 2000),
    )
    assert parse_stages(" 1m30s@5 , 500ms@0-10 ") == (Stage(90, 5, 5), Stage(0.5, 0, 10))
    assert [s.label() for s in parse_stages(PLAN)] == ["30s@100", "60s@100-2000", "30s@2000"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "DURATION@RATE"),
        ("30s", "a stage is DURATION@RATE"),
        ("30s@fast", "'fast' is not a rate"),
        ("0s@5", "more than 0s"),
        ("5s@2000000", "between 0 and 1,000,000"),
        ("5s@nan", "between 0"),
        ("soon@5", "not a duration"),
        ("5s@0,10s@0", "nothing would be sent"),
        ("1s@5,,2s@5", "comma-separated"),
        (",".join(["1s@1"] * 101), "at most 100"),
    ],
)
def test_a_wrong_plan_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(StagesError, match=says):
        parse_stages(text)


def test_each_stage_plans_its_integral_and_the_times_are_drift_free() -> None:
    schedule = Schedule(parse_stages(PLAN))
    times = due_times(schedule)
    assert len(times) == 3_000 + 63_000 + 60_000
    for i, stage in enumerate(schedule.stages):
        start, end = schedule.stage_window(i)
        assert sum(start <= t < end for t in times) == stage.events
    assert times[:3] == [0.0, 0.01, 0.02]
    assert times == sorted(times)
    # in the ramp the rate at t is the derivative of the count: gaps shrink as it climbs
    ramp = [t for t in times if 30 <= t < 90]
    assert ramp[1] - ramp[0] == pytest.approx(1 / 100, rel=0.01)
    assert ramp[-1] - ramp[-2] == pytest.approx(1 / 2000, rel=0.01)
    assert schedule.rate_at(60) == pytest.approx(1050)
    assert schedule.rate_at(120) == 0.0


def test_a_ramp_from_zero_and_a_pause() -> None:
    schedule = Schedule(parse_stages("2s@0,2s@0-10,1s@4"))
    times = due_times(schedule)
    assert times[0] == 2.0  # nothing during the pause; the ramp's first event at its start
    assert sum(2 <= t < 4 for t in times) == 10
    assert sum(t >= 4 for t in times) == 4


def test_scaling_changes_the_rate_from_then_on_and_keeps_the_shape() -> None:
    schedule = Schedule.steady(10.0, 10.0)
    schedule.scale(2.0, 5.0)
    times = due_times(schedule)
    assert sum(t < 5 for t in times) == 50
    assert sum(t >= 5 for t in times) == 100
    assert schedule.rate_at(4) == 10
    assert schedule.rate_at(6) == 20
    assert schedule.count_at(10) == pytest.approx(150)
    assert schedule.scaled
    endless = Schedule.steady(4.0)
    assert math.isinf(endless.seconds)
    assert endless.due(1000) == 250.0


async def test_a_run_of_stages_sends_each_stage_on_plan() -> None:
    clock = VirtualClock()
    peer = Peer(clock)
    schedule = Schedule(parse_stages("2s@50,3s@50-250,2s@250"))
    propagator = make(peer, Plan(EVENTS, 1 / 50, schedule=schedule))
    stats = await clock.run(propagator.run())
    assert stats.generated == 100 + 450 + 500
    stages = stats.summary(clock.now)["stages"]
    assert isinstance(stages, list)
    assert [s["sent"] for s in stages] == [100, 450, 500]
    assert all(s["achieved_vs_plan"] == 1.0 for s in stages)
    assert [s["planned_rate"] for s in stages] == [50, 150, 250]
    assert peer.times()[-1] < 7.0


async def test_rescale_while_running_changes_what_is_due() -> None:
    clock = VirtualClock()
    peer = Peer(clock)
    propagator = make(peer, Plan(EVENTS, 0.1, duration=10.0))

    async def press_plus() -> None:
        await clock.sleep(5.05)
        propagator.rescale(2.0)

    presser = asyncio.ensure_future(press_plus())
    stats = await clock.run(propagator.run())
    await presser
    times = peer.times()
    assert sum(t < 5.05 for t in times) == 51
    assert sum(t >= 5.05 for t in times) == pytest.approx(99, abs=1)
    assert stats.summary(clock.now)["rate_changed"] is True


async def test_latency_counts_from_the_due_time_so_a_queue_cannot_hide() -> None:
    """A replay (which waits instead of dropping) of events due every 0.1 s at a server
    that takes 1 s, one at a time: the service time stays 1 s, the latency from the due
    time grows with the queue: coordinated omission, corrected."""
    clock = VirtualClock()

    async def slow(request: httpx.Request) -> httpx.Response:
        await clock.sleep(1.0)
        return httpx.Response(200, json={"status": "success"})

    page = [Scheduled(f"id-{k}", EVENTS[0], k * 0.1, k) for k in range(20)]
    stats = Stats(ENDPOINT, 0.0, 1)
    propagator = Propagator(
        Plan(replay=iter([page])),
        Delivery(ENDPOINT, httpx.MockTransport(Peer(clock, slow)), max_in_flight=1),
        runtime=virtual(clock),
        observers=Observers(stats),
    )
    await clock.run(propagator.run())
    assert stats.delivered == 20
    assert stats.service.quantile(0.5) == pytest.approx(1.0, rel=0.01)
    assert stats.service.max == pytest.approx(1.0, rel=0.01)
    # the last was due at 1.9 s and answered at 20 s
    assert stats.latency.max == pytest.approx(20.0 - 1.9, rel=0.01)
    assert stats.latency.quantile(0.5) > 5 * stats.service.quantile(0.5)
    summary = stats.summary(clock.now)
    assert summary["latency_p999_ms"] == pytest.approx(18_100, rel=0.01)
    assert summary["service_max_ms"] == pytest.approx(1_000, rel=0.01)


def test_a_ramp_down_to_zero_ends_without_a_math_error() -> None:
    stage = Stage(3.0, 7.0, 0.0)
    end = math.nextafter(stage.events, -math.inf)
    assert 0 <= stage.offset(end) <= 3.0
    for n in (0.0, 1.0, stage.events / 2, end):
        assert stage.offset(n) <= stage.seconds


def test_rates_may_be_written_with_an_exponent() -> None:
    assert parse_stages("1s@1e-3,2s@1e-3-5e2") == (Stage(1, 0.001, 0.001), Stage(2, 0.001, 500))


def test_worker_shares_interleave_to_the_whole_plan_exactly() -> None:
    plan = Schedule(parse_stages("1s@10,1s@10-40,1s@7"))
    shares = [plan.share(i, 3) for i in range(3)]
    together = sorted(t for share in shares for t in due_times(share))
    assert together == due_times(plan)
    assert sum(share.count_at(3.0) for share in shares) == pytest.approx(plan.count_at(3.0))
    assert shares[0].rate_at(0.5) == pytest.approx(10 / 3)


async def test_a_rate_change_before_generation_starts_is_kept_for_it() -> None:
    clock = VirtualClock()
    peer = Peer(clock)
    propagator = make(peer, Plan(EVENTS, 0.1, duration=2.0))
    propagator.rescale(2.0)  # as the keys may while what was pending is resent
    stats = await clock.run(propagator.run())
    assert stats.generated == 40


async def test_a_late_batch_is_counted_in_the_stages_its_events_were_due_in() -> None:
    clock = VirtualClock()
    peer = Peer(clock)
    schedule = Schedule(parse_stages("1s@10,1s@10"))
    propagator = make(peer, Plan(EVENTS, 0.1, schedule=schedule))

    async def block() -> None:  # the loop stalls from 0.5 s to 1.5 s: one late batch
        await clock.sleep(0.45)
        clock.now = 1.5

    blocker = asyncio.ensure_future(block())
    stats = await clock.run(propagator.run())
    await blocker
    assert stats.stage_sent == [10, 10]
