"""The Event Propagator: picks an event at random on a drift-free schedule and delivers it.

Library code with every outside effect injected (clock, sleep, random source, HTTP client,
id maker); it reports through callbacks and never prints.
"""

from __future__ import annotations

import asyncio
import math
import random
import shlex
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import httpx

from eventctl.auth import Credentials
from eventctl.delivery import (
    Answer,
    Attempt,
    classify,
    event_body,
    post_once,
    request_headers,
    timeout_extensions,
)
from eventctl.endpoints import Endpoints, Ticket
from eventctl.errors import InvalidEvent, Unavailable
from eventctl.events import Event, new_event_id
from eventctl.histogram import Histogram
from eventctl.propagator.report import Timeline
from eventctl.propagator.schedule import Schedule
from eventctl.propagator.spool import Spool
from eventctl.propagator.templates import EventPool
from eventctl.retry import RetryPolicy, transport_error_text
from eventctl.textsafe import json_text

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

LATENCY_WINDOW = 10_000
GATHER_SECONDS = 0.001
RECENT = 8


Outcome = Literal["delivered", "retrying", "failed"]


class Record(NamedTuple):
    """What happened to one attempt to deliver one event."""

    outcome: Outcome
    event_id: str
    event_type: str
    attempt: int
    at: float
    status: int | None = None
    error: str | None = None
    latency: float | None = None
    retry_in: float | None = None
    replayed: bool = False
    endpoint: str | None = None  # where the attempt went, when there are several

    @property
    def result(self) -> str:
        """The status code, or the transport error, as one short word or phrase."""
        return str(self.status) if self.status is not None else (self.error or "?")


@dataclass
class Stats:
    """Counts and recent history of a run; what the display renders and the summary reports."""

    endpoint: str
    interval: float
    max_in_flight: int
    pacing: str | None = None
    started_at: float = 0.0
    schedule_start: float = 0.0
    finished_at: float | None = None
    cpu_seconds: float = 0.0
    generated: int = 0
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    pending_at_exit: int = 0
    replayed: int = 0
    skipped_ticks: int = 0
    dropped: int = 0
    resent: int = 0
    capped: bool = False
    keys: bool = False
    spool_full: bool = False
    last: Record | None = None
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    recent: deque[Record] = field(default_factory=lambda: deque(maxlen=RECENT))
    latency: Histogram = field(default_factory=Histogram)
    service: Histogram = field(default_factory=Histogram)
    timeline: Timeline | None = None
    origin: float = 0.0
    schedule: Schedule | None = None
    stage_sent: list[int] = field(default_factory=list)
    endpoints: Endpoints | None = None

    def percentile(self, q: float, data: deque[float]) -> float | None:
        """Quantile (0-1) of the last LATENCY_WINDOW values of `data` (lateness), seconds."""
        if not data:
            return None
        if len(data) == 1:
            return data[0]
        return statistics.quantiles(data, n=100, method="inclusive")[round(q * 100) - 1]

    def achieved_rate(self, now: float) -> float:
        elapsed = (self.finished_at or now) - self.started_at
        return self.generated / elapsed if elapsed > 0 else 0.0

    @property
    def all_delivered(self) -> bool:
        return self.failed == 0 and self.pending_at_exit == 0

    def target_rate(self, now: float) -> float | None:
        """The rate the schedule plans now, events/s (None without a schedule)."""
        schedule = self.schedule
        return None if schedule is None else schedule.rate_at(now - self.schedule_start)

    def stages(self) -> list[dict[str, object]]:
        """Each stage of the schedule: the plan, what was sent in its time, and the ratio."""
        schedule = self.schedule
        if schedule is None or not schedule.varies:
            return []
        rows = []
        for i, planned in enumerate(schedule.describe()):
            start, end = schedule.stage_window(i)
            want = schedule.count_at(end) - schedule.count_at(start)
            sent = self.stage_sent[i] if i < len(self.stage_sent) else 0
            seconds = end - start
            rows.append(
                {
                    **planned,
                    "planned_events": round(want, 1),
                    "sent": sent,
                    "planned_rate": round(want / seconds, 2) if seconds else None,
                    "achieved_rate": round(sent / seconds, 2) if seconds else None,
                    "achieved_vs_plan": round(sent / want, 4) if want else None,
                }
            )
        return rows

    def summary(self, now: float) -> dict[str, object]:
        sent = self.generated + self.resent
        return {
            "endpoint": self.endpoint,
            "elapsed_seconds": round((self.finished_at or now) - self.started_at, 3),
            "generated": self.generated,
            "delivered": self.delivered,
            "failed": self.failed,
            "pending": self.pending_at_exit,
            "attempts": self.attempts,
            "replayed": self.replayed,
            "skipped_ticks": self.skipped_ticks,
            "dropped": self.dropped,
            "resent": self.resent,
            **percentiles("latency", self.latency),
            **percentiles("service", self.service),
            "achieved_rate": round(self.achieved_rate(now), 2),
            "lateness_p50_ms": _ms(self.percentile(0.5, self.lateness)),
            "lateness_p99_ms": _ms(self.percentile(0.99, self.lateness)),
            "cpu_per_event_us": round(self.cpu_seconds / sent * 1e6, 1) if sent else None,
            "rate_changed": self.schedule is not None and self.schedule.scaled,
            "stages": self.stages(),
            **self._endpoints(now),
        }

    def _endpoints(self, now: float) -> dict[str, object]:
        """With several endpoints: each one's state and counts, and the failovers."""
        endpoints = self.endpoints
        if endpoints is None or len(endpoints) == 1:
            return {}
        return {"failovers": endpoints.failovers, "endpoints": endpoints.summary(now)}


QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "max": 1.0}


def percentiles(name: str, histogram: Histogram) -> dict[str, float | None]:
    """`name`_p50_ms, _p90_ms, _p99_ms, _p999_ms and _max_ms of `histogram`."""
    return {f"{name}_{key}_ms": _ms(histogram.quantile(q)) for key, q in QUANTILES.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def _first(done: asyncio.Future[None], *waits: Awaitable[object]) -> None:
    """Wait until `done` or the first of `waits` is done; cancel the waits (not `done`)."""
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait({done, *futures}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduled(NamedTuple):
    """One event of a replay: the id it goes out with, the event, when it is due (seconds
    after the replay starts) and its position in the source (the spool's cursor)."""

    event_id: str
    event: Event
    due: float
    position: int


Pages = Iterator[Sequence[Scheduled]]


@dataclass(frozen=True)
class Plan:
    """What a run generates and when: one event picked from `events` per tick, tick k due
    `k * interval` seconds after the start, until `count` events or `duration` seconds (with
    neither, until stop()). count=0 generates nothing: the run only resends what is pending.

    With `schedule`, tick k is due when it says instead (stages; `duration` and `interval`
    then only describe it). With `replay`, the run sends instead the events of these pages,
    in order, each when it is due; a full in-flight cap delays them (a replay skips
    nothing)."""

    events: Sequence[Event] | EventPool = ()
    interval: float = 0.0
    count: int | None = None
    duration: float | None = None
    replay: Pages | None = None
    schedule: Schedule | None = None

    def __post_init__(self) -> None:
        if self.replay is None and not self.events and self.count != 0:
            raise ValueError("no events to send")


async def _in_thread(read: Callable[[], Sequence[Scheduled]]) -> Sequence[Scheduled]:
    return await asyncio.to_thread(read)


@dataclass(frozen=True)
class Delivery:
    """Where each event goes and how: POSTed to `endpoint` (one URL, or several that
    share the events, see eventctl.endpoints) through `transport` with
    `credentials`, each attempt given `timeout` seconds, failed attempts retried by
    `policy`, and at most `max_in_flight` events unsettled at once."""

    endpoint: str | Sequence[str]
    transport: httpx.AsyncBaseTransport
    credentials: Credentials = field(default_factory=Credentials)
    timeout: float = 10.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_in_flight: int = 100

    @property
    def urls(self) -> tuple[str, ...]:
        endpoint = self.endpoint
        return (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)


@dataclass(frozen=True)
class Spooling:
    """The durable record of a run: each generated event is written to `spool` before it is
    sent and settled there after; generation pauses while `max_pending` events wait in it;
    `resend` (what earlier runs left pending, with their ids) is sent before anything new."""

    spool: Spool
    max_pending: int = 10_000
    resend: Sequence[tuple[str, Event]] = ()


@dataclass(frozen=True)
class Runtime:
    """What the propagator takes from the world, the process's own by default: the monotonic
    `clock` that schedules and its `sleep`, the CPU clock of the summary, the wall clock
    (templates, signatures, Retry-After dates), the id of each new event, the random
    sources of the choice of events (`rng`, which --seed seeds) and of the retry jitter, and
    how a replay's next page is read (in a thread, while the current one is sent).
    Tests replace them with a virtual clock and seeded sources, so that nothing really waits."""

    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    cpu_clock: Clock = time.process_time
    wall_clock: Callable[[], datetime] = _utc_now
    new_id: Callable[[], str] = new_event_id
    rng: random.Random = field(default_factory=random.Random)
    jitter_rng: random.Random = field(default_factory=random.Random)
    read_page: Callable[[Callable[[], Sequence[Scheduled]]], Awaitable[Sequence[Scheduled]]] = (
        _in_thread
    )


@dataclass(frozen=True)
class Observers:
    """Who watches a run: the `stats` it counts into (made beforehand when a display shows
    them; else the propagator makes its own) and `on_record`, called for every attempt's
    outcome."""

    stats: Stats | None = None
    on_record: Callable[[Record], None] | None = None


class Propagator:
    """Sends one random event per tick, as `plan` says, by `delivery`, until stopped or done.

    Tick k is due at start + k * interval on the runtime's clock, whatever the responses do.
    At most `max_in_flight` events are unsettled at once; a tick that finds the cap (or the
    spool) full is skipped (no event is generated for it) and counted. Each event keeps its
    id, sent as `Idempotency-Key`, across retries, and ends delivered, failed, or pending at
    exit.
    """

    def __init__(
        self,
        plan: Plan,
        delivery: Delivery,
        *,
        spooling: Spooling | None = None,
        runtime: Runtime | None = None,
        observers: Observers | None = None,
    ) -> None:
        self.plan = plan
        self.delivery = delivery
        self.spooling = spooling
        self.runtime = runtime = runtime or Runtime()
        observers = observers or Observers()
        events = plan.events
        self.source = events if isinstance(events, EventPool) else EventPool.plain(events)
        self.on_record = observers.on_record
        self.endpoints = Endpoints(delivery.urls, runtime.clock)  # URLs parsed once
        self._several = len(self.endpoints) > 1
        self._extensions = timeout_extensions(delivery.timeout)
        self.stats = observers.stats or Stats(
            " ".join(delivery.urls), plan.interval, delivery.max_in_flight
        )
        self.stats.endpoints = self.endpoints
        self.schedule = plan.schedule
        if self.schedule is None and plan.replay is None and plan.interval > 0:
            self.schedule = Schedule.steady(1 / plan.interval, plan.duration)
        self.stats.schedule = self.schedule
        if self.schedule is not None:
            self.stats.stage_sent = [0] * len(self.schedule.stages)
        self._stop = asyncio.Event()
        self._room = asyncio.Event()
        self._abort = asyncio.Event()
        self._sleeper: asyncio.Future[None] | None = None
        self._rescaled = False
        self._generating = False
        self._factors: list[float] = []
        # events are delivered by up to max_in_flight sender coroutines, which live while the
        # run does (a task per event cost more CPU): launched events wait in _queue for one
        self._queue: deque[tuple[str, Event, float]] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._idle: list[asyncio.Future[None]] = []  # senders waiting for an event
        self._unsettled = 0  # launched and not yet settled (queued or being delivered)
        self._drained: asyncio.Future[None] | None = None  # set when _unsettled drops to 0
        self._failure: Exception | None = None  # the first delivery that raised (the spool's)

    def stop(self) -> None:
        """Stop generating; run() then gives in-flight events the grace period and returns."""
        self._stop.set()
        self._room.set()
        if self._sleeper is not None:
            self._sleeper.cancel()

    def abort(self) -> None:
        """Stop at once: no grace period; what is in flight stays pending in the spool."""
        self._abort.set()
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; return True early if stop() was called."""
        if self._stop.is_set():
            return True
        if seconds <= 0:
            return False
        # one task per tick, which stop() cancels; cheaper than racing two tasks
        self._sleeper = asyncio.ensure_future(self.runtime.sleep(seconds))
        try:
            await self._sleeper
        except asyncio.CancelledError:
            if self._rescaled:
                self._rescaled = False
                return self._stop.is_set()
            if not self._stop.is_set():
                raise
        finally:
            self._sleeper = None
        return self._stop.is_set()

    async def run(self, grace: float = 3.0) -> Stats:
        """Resend what the spooling says first, then generate (or replay) and deliver until
        done; return the stats."""
        stats, clock = self.stats, self.runtime.clock
        stats.started_at = clock()
        if not stats.origin:  # a worker of several counts from the run's start
            stats.origin = stats.started_at
        cpu_start = self.runtime.cpu_clock()
        for event_id, event in () if self.spooling is None else self.spooling.resend:
            if self._unsettled >= self.delivery.max_in_flight and await self._wait_for_slot():
                break
            stats.resent += 1
            self._launch(event_id, event)
        try:
            if self.plan.replay is not None:
                await self._replay(self.plan.replay)
            else:
                await self._generate()
        except Exception:
            # a source that cannot be read (or a spool that cannot be written) stops the run;
            # what is in flight still gets the grace period, and the error goes up
            self.stop()
            await self._settle(grace)
            raise
        await self._settle(grace)
        if self._failure is not None:
            raise self._failure
        stats.finished_at = clock()
        stats.cpu_seconds = self.runtime.cpu_clock() - cpu_start
        return stats

    async def _generate(self) -> None:
        """The ticks of the schedule, each due on time, until done or stopped."""
        clock, schedule, stats = self.runtime.clock, self.schedule, self.stats
        assert schedule is not None
        spool = None if self.spooling is None else self.spooling.spool
        start = stats.schedule_start = clock()
        for factor in self._factors:  # typed while what was pending was resent
            schedule.scale(factor, 0.0)
        self._factors.clear()
        self._generating = True
        stage, stage_end = 0, schedule.stage_window(0)[1]
        last_stage = len(schedule.stages) - 1
        tick = 0
        offset = schedule.due(tick)
        committed = -math.inf
        while offset is not None and not self._done():
            # at most one spool commit per GATHER_SECONDS: fast, ticks share commits
            wake = max(start + offset, committed + GATHER_SECONDS)
            if await self._sleep_or_stop(wake - clock()):
                break
            now = clock()
            if start + offset > now:  # woken early: the rate changed
                offset = schedule.due(tick)
                continue
            # every tick already due goes out together: one spool commit, one wake-up
            fresh: list[tuple[str, Event]] = []
            dues: list[float] = []
            while True:
                while offset >= stage_end and stage < last_stage:
                    stage += 1
                    stage_end = schedule.stage_window(stage)[1]
                before = len(fresh)
                self._tick(start + offset, fresh, dues)
                stats.stage_sent[stage] += len(fresh) - before
                tick += 1
                offset = schedule.due(tick)
                if offset is None or start + offset > now or self._done():
                    break
            if not fresh:
                if stats.capped or stats.spool_full:
                    # all dropped: look again in GATHER_SECONDS, not at every tick (flat out,
                    # a wake-up per tick cost more CPU than the events sent)
                    committed = now
                continue
            if spool is not None:
                spool.add_many(fresh)
                committed = now
            for (event_id, event), due in zip(fresh, dues, strict=True):
                self._launch(event_id, event, due)
        if offset is None and last_stage and not self._done():
            # the plan's last events are sent; a stage that sends nothing (a cool-down at
            # rate 0) still lasts its time
            await self._sleep_or_stop(start + schedule.seconds - clock())

    def rescale(self, factor: float) -> None:
        """Multiply the planned rate by `factor` from now on (the display's `+` and `-`)."""
        if self.schedule is None:
            return
        if not self._generating:
            self._factors.append(factor)
            return
        self.schedule.scale(factor, self.runtime.clock() - self.stats.schedule_start)
        if self._sleeper is not None and self._sleeper.cancel():  # the next may be due sooner
            self._rescaled = True

    async def _replay(self, pages: Pages) -> None:
        """Send each page's events when due and there is room in flight, until the pages end
        or stop(); the next page is read while this one is sent. Everything due together
        goes in one spool commit, which also moves the run's cursor."""
        clock, stats = self.runtime.clock, self.stats
        spool = None if self.spooling is None else self.spooling.spool

        def read() -> Sequence[Scheduled]:
            return next(pages, ())

        start = clock()
        ahead = asyncio.ensure_future(self.runtime.read_page(read))
        try:
            while page := await ahead:
                ahead = asyncio.ensure_future(self.runtime.read_page(read))
                i = 0
                while i < len(page):
                    if await self._sleep_or_stop(start + page[i].due - clock()):
                        return
                    if await self._wait_for_room():
                        return
                    now = clock()
                    room = self.delivery.max_in_flight - self._unsettled
                    j = i + 1
                    while j < len(page) and j - i < room and start + page[j].due <= now:
                        j += 1
                    batch = page[i:j]
                    if spool is not None:
                        spool.add_many(
                            [(s.event_id, s.event) for s in batch], cursor=batch[-1].position
                        )
                    for item in batch:
                        if item.due > 0:  # due at once (flat out, the first): never late
                            stats.lateness.append(now - start - item.due)
                        self._launch(item.event_id, item.event, start + item.due)
                    stats.generated += len(batch)
                    i = j
        finally:
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # retrieved: a read that failed after a stop is not news
            ahead.cancel()

    async def _wait_for_room(self) -> bool:
        """Wait for a free place in flight (for an eighth of them, once the cap is full, so
        that a replay running flat out commits its spool in batches); True if stopped."""
        cap = self.delivery.max_in_flight
        if self._unsettled >= cap:
            self.stats.capped = True
            most = cap - max(1, cap // 8)
            while self._unsettled > most and not self._stop.is_set():
                self._room.clear()
                await self._room.wait()
            self.stats.capped = False
        return self._stop.is_set()

    def _done(self) -> bool:
        count = self.plan.count
        return count is not None and self.stats.generated >= count

    def _tick(self, due: float, fresh: list[tuple[str, Event]], dues: list[float]) -> None:
        """Generate the event of the tick due at `due` into `fresh` (and `due` into `dues`),
        unless a cap is full."""
        stats, runtime, spooling = self.stats, self.runtime, self.spooling
        stats.capped = self._unsettled + len(fresh) >= self.delivery.max_in_flight
        stats.spool_full = (
            spooling is not None
            and spooling.spool.pending_count + len(fresh) >= spooling.max_pending
        )
        if stats.capped or stats.spool_full:
            stats.skipped_ticks += 1
            if stats.capped:
                stats.dropped += 1
                if stats.timeline is not None:
                    stats.timeline.dropped(due - stats.origin)
            return
        stats.lateness.append(runtime.clock() - due)
        event_id = runtime.new_id()
        stats.generated += 1
        try:
            event = self.source.pick(runtime.rng, stats.generated, runtime.wall_clock)
        except InvalidEvent as exc:
            stats.failed += 1
            self._report(Record("failed", event_id, "?", 0, runtime.clock(), error=str(exc)))
            return
        fresh.append((event_id, event))
        dues.append(due)

    async def _wait_for_slot(self) -> bool:
        """Wait until fewer than max_in_flight are unsettled; True if stopped meanwhile."""
        while self._unsettled >= self.delivery.max_in_flight and not self._stop.is_set():
            self._room.clear()
            await self._room.wait()
        return self._stop.is_set()

    def _launch(self, event_id: str, event: Event, due: float | None = None) -> None:
        """Queue the event for a sender (an idle one, else a new one up to max_in_flight);
        its latency counts from `due` (the moment it was due to be sent; now when not
        given)."""
        self.stats.in_flight += 1
        if due is None:
            due = self.runtime.clock()
        timeline = self.stats.timeline
        if timeline is not None:
            timeline.sent(due - self.stats.origin)
        self._queue.append((event_id, event, due))
        self._unsettled += 1
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():  # not one whose sender was cancelled
                waiter.set_result(None)
                return
        if len(self._senders) < self.delivery.max_in_flight:
            task = asyncio.get_running_loop().create_task(self._sender())
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _sender(self) -> None:
        """Deliver queued events one after another; wait (idle) while there are none."""
        loop, queue = asyncio.get_running_loop(), self._queue
        while True:
            if not queue:
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            event_id, event, due = queue.popleft()
            try:
                await self._deliver(event_id, event, due)
            except Exception as exc:  # a spool that cannot be written: the run stops
                if self._failure is None:
                    self._failure = exc
                self.stop()
            finally:
                self._unsettled -= 1
                self._room.set()
                drained = self._drained
                if not self._unsettled and drained is not None and not drained.done():
                    drained.set_result(None)

    async def _settle(self, grace: float) -> None:
        """Wait for in-flight events: all of them, or (once stopped) for `grace` seconds;
        then end the senders (what they still hold stays pending in the spool)."""
        if self._unsettled and not self._abort.is_set():
            self._drained = drained = asyncio.get_running_loop().create_future()
            if not self._stop.is_set():
                await _first(drained, self._stop.wait())
            if self._unsettled and not self._abort.is_set():
                await _first(drained, self.runtime.sleep(grace), self._abort.wait())
            drained.cancel()
            self._drained = None
        self.stats.pending_at_exit = self._unsettled
        senders = set(self._senders)
        for task in senders:
            task.cancel()
        if senders:
            await asyncio.wait(senders)

    def _report(self, record: Record) -> None:
        self.stats.last = record
        self.stats.recent.append(record)
        if self.on_record is not None:
            self.on_record(record)

    async def _post(
        self, ticket: Ticket, event_id: str, event: Event, attempt: int
    ) -> tuple[Record, float | None]:
        """One attempt, to the ticket's endpoint: the record of what happened, and the
        Retry-After delay if any."""
        runtime, delivery = self.runtime, self.delivery
        try:
            tried = await post_once(
                delivery.transport,
                ticket.endpoint.url,
                delivery.credentials,
                event_id,
                event,
                extensions=self._extensions,
                clock=runtime.clock,
                wall_clock=runtime.wall_clock,
            )
        except BaseException:
            if self._several:
                self.endpoints.released(ticket)
            raise
        endpoint = None
        if self._several:  # one endpoint is always the one: its health changes nothing
            self.endpoints.answered(ticket, tried.status, tried.error)
            endpoint = ticket.endpoint.text
        record = self._record(tried, event_id, event, attempt, endpoint)
        return record, tried.retry_after if record.outcome == "failed" else None

    def _record(
        self, tried: Attempt, event_id: str, event: Event, attempt: int, endpoint: str | None
    ) -> Record:
        now = self.runtime.clock()
        status = tried.status
        if status is not None and classify(status) is Answer.DELIVERED:
            return Record(
                "delivered",
                event_id,
                event.event_type,
                attempt,
                now,
                status,
                latency=tried.latency,
                replayed=tried.replayed,
                endpoint=endpoint,
            )
        return Record(
            "failed",
            event_id,
            event.event_type,
            attempt,
            now,
            status,
            tried.error,
            tried.latency,
            endpoint=endpoint,
        )

    async def _deliver(self, event_id: str, event: Event, due: float) -> None:
        """Attempt until delivered, refused, or out of attempts or time; settle the event.
        The latency of an answer counts from `due`, its service time from its attempt. An
        attempt that got no answer or a 5xx is tried again at once on another endpoint when
        one is healthy (with the same id, so it is stored once); any other retry (408, 429,
        or no endpoint healthy) waits the policy's delay or Retry-After."""
        stats, clock, policy = self.stats, self.runtime.clock, self.delivery.policy
        spool = None if self.spooling is None else self.spooling.spool
        timeline = stats.timeline
        endpoints = self.endpoints
        deadline = clock() + policy.max_elapsed_seconds
        endpoint = None
        try:
            for attempt in range(1, policy.attempts + 1):
                stats.attempts += 1
                ticket = endpoints.pick(endpoint)
                endpoint = ticket.endpoint
                record, retry_after = await self._post(ticket, event_id, event, attempt)
                if timeline is not None:
                    at = record.at - stats.origin
                    if attempt > 1:
                        timeline.retried(at)
                    timeline.answered(at, record.result, record.at - due, record.latency or 0.0)
                if record.outcome == "delivered":
                    stats.delivered += 1
                    stats.replayed += record.replayed
                    stats.service.record(record.latency or 0.0)
                    stats.latency.record(record.at - due)
                    if spool is not None:
                        spool.settle(event_id, "delivered", attempt, record.result)
                    self._report(record)
                    return
                left = deadline - clock()
                refused = classify(record.status) is Answer.REFUSED
                if refused or attempt == policy.attempts or left <= 0:
                    break
                if self._several and endpoints.fails_over(endpoint, record.status):
                    self._report(record._replace(outcome="retrying", retry_in=0.0))
                    continue
                delay = retry_after
                if delay is None:
                    delay = policy.delay(attempt, self.runtime.jitter_rng)
                delay = min(delay, left)
                self._report(record._replace(outcome="retrying", retry_in=delay))
                stats.retrying += 1
                try:
                    await self.runtime.sleep(delay)
                finally:
                    stats.retrying -= 1
            stats.failed += 1
            if spool is not None:
                spool.settle(event_id, "failed", attempt, record.result)
            self._report(record)
        finally:
            stats.in_flight -= 1


def curl_command(
    url: str, credentials: Credentials, event_id: str, event: Event, now: Callable[[], datetime]
) -> str:
    """A `curl` command that POSTs `event` to `url` as the propagator would: its id as
    Idempotency-Key, the bearer token and a signature (valid for the receiver's tolerance,
    five minutes by default) when `credentials` have them. The body is JSON whose characters
    a terminal would act on are escaped, and the signature covers exactly that body."""
    body = json_text(event.to_json()).encode()
    parts = ["curl", "-sS", shlex.quote(url)]
    for name, value in request_headers(credentials, event_id, body, now):
        parts += ["-H", shlex.quote(f"{name.decode()}: {value.decode()}")]
    parts += ["--data-binary", shlex.quote(body.decode())]
    return " ".join(parts)


@dataclass(frozen=True)
class Sent:
    """The answer to one event sent by `send_event`."""

    event_id: str
    status: int
    body: object
    replayed: bool
    latency: float

    def error_text(self) -> str:
        """The server's error, from the consumer's error shape when it is one."""
        if isinstance(self.body, dict) and "message" in self.body:
            code = self.body.get("code")
            return f"{code}: {self.body['message']}" if code else str(self.body["message"])
        return str(self.body)[:200] or "(empty body)"


def send_event(  # noqa: PLR0913 - send-once's inputs (endpoint, event, --idempotency-key, --timeout, credentials) and its clock and transport
    endpoint: str,
    event: Event,
    *,
    event_id: str,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
    clock: Clock,
    credentials: Credentials | None = None,
) -> Sent:
    """POST one event and return the answer; raise Unavailable when there is none."""
    started = clock()
    body = event_body(event)
    headers = request_headers(
        credentials or Credentials(), event_id, body, lambda: datetime.now(UTC)
    )
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.post(endpoint, content=body, headers=headers)
    except httpx.TimeoutException:
        raise Unavailable(f"cannot reach {endpoint}: no answer within {timeout:g}s") from None
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot connect to {endpoint}: {transport_error_text(exc)}") from None
    try:
        answer: object = response.json()
    except ValueError:
        answer = response.text
    return Sent(
        event_id=response.headers.get("Event-Id", event_id),
        status=response.status_code,
        body=answer,
        replayed=response.headers.get("Idempotent-Replayed") == "true",
        latency=clock() - started,
    )
