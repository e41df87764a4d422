"""Store and forward: deliver what `serve` stored onward, route by route, from the outbox.

Runs on the server's event loop beside the app. Every database call goes to one thread of
its own with its own connection (SQLite `synchronous=NORMAL`: a settle lost to a power cut
means a repeat, never a loss, and the receiver deduplicates by id). Per route, a claim loop
leases due entries (see eventctl/outbox.py), sends each once with the propagator's engine
(eventctl/delivery.py: transport, signing, Idempotency-Key and webhook-id set to the stored
event id), and a settler writes what became of them in batches. A retried entry waits on
disk until its due time, not in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import httpx

from eventctl.auth import Credentials
from eventctl.config import ForwardRoute
from eventctl.delivery import Answer, Attempt, post_once, timeout_extensions
from eventctl.endpoints import Endpoints
from eventctl.errors import DatabaseError
from eventctl.events import Event
from eventctl.outbox import PAUSED, Batch, Breaker, Entry, Outbox, RouteRow, Settled
from eventctl.retry import RetryPolicy
from eventctl.store import Store
from eventctl.transport import http_transport

log = logging.getLogger("eventctl.consumer.forwarder")

CLAIM_MAX = 256
SETTLE_MAX = 256
MAX_UNSETTLED = 4 * SETTLE_MAX
SETTLE_WAIT_SECONDS = 0.02
POLL_SECONDS = 0.25
GATHER_SECONDS = 0.005
SHUTDOWN_GRACE_SECONDS = 3.0
GONE = 410

T = TypeVar("T")


def lease_ms(route: ForwardRoute) -> int:
    """How long a claim holds its entries: a wait for a free slot and one send, each at
    most the timeout, and a second to settle. Another worker takes them over after that."""
    return int((2 * route.timeout_seconds + 1) * 1000)


def policy(route: ForwardRoute) -> RetryPolicy:
    return RetryPolicy(
        attempts=1_000_000,  # retried for retry_max_elapsed_seconds, however many that is
        base_seconds=route.retry_base_seconds,
        max_seconds=route.retry_max_seconds,
        max_elapsed_seconds=route.retry_max_elapsed_seconds,
    )


def breaker(route: ForwardRoute) -> Breaker:
    return Breaker(
        failures=route.breaker_failures,
        cooldown_ms=int(route.breaker_cooldown_seconds * 1000),
        max_cooldown_ms=int(route.breaker_max_cooldown_seconds * 1000),
    )


def entry_after(
    attempt: Attempt, entry: Entry, route: ForwardRoute, now_ms: int, rng: random.Random
) -> Settled:
    """What becomes of an entry after one attempt: delivered (2xx); kept queued (410, which
    disables the route); failed (any other refusal, or retried for retry_max_elapsed);
    or retried after Retry-After or the route's backoff."""
    attempts = entry.attempts + 1
    first = entry.first_attempt_ms if entry.first_attempt_ms is not None else now_ms
    result = str(attempt.status) if attempt.status is not None else (attempt.error or "?")
    answer = attempt.answer
    if answer is Answer.DELIVERED:
        return Settled(entry.event_row, "delivered", attempts, first, now_ms, result)
    if attempt.status == GONE:  # its retry time starts again when the route is enabled
        return Settled(entry.event_row, "kept", attempts, entry.first_attempt_ms, now_ms, result)
    if answer is Answer.REFUSED or now_ms - first >= route.retry_max_elapsed_seconds * 1000:
        return Settled(entry.event_row, "failed", attempts, first, now_ms, result)
    delay = attempt.retry_after
    if delay is None:
        delay = policy(route).delay(attempts, rng)
    return Settled(entry.event_row, "retry", attempts, first, now_ms + int(delay * 1000), result)


@dataclass
class RouteCounters:
    """What one process did on one route since it started (for /metrics)."""

    enqueued: int = 0
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)  # drained by the metrics


@dataclass(eq=False)
class _Route:
    config: ForwardRoute
    id: int
    credentials: Credentials
    transport: httpx.AsyncBaseTransport
    endpoints: Endpoints
    extensions: dict[str, Any]
    senders_max: int  # sends at once: 1 when ordered, else max_in_flight
    counters: RouteCounters = field(default_factory=RouteCounters)
    row: RouteRow | None = None
    outstanding: int = 0  # claimed and not yet settled
    sending: int = 0  # claimed and not yet answered
    pending: list[Settled] = field(default_factory=list)
    batch: Batch = field(default_factory=Batch)
    queue: deque[tuple[Entry, float]] = field(default_factory=deque)  # claimed, not yet sent
    senders: set[asyncio.Task[None]] = field(default_factory=set)
    idle: deque[asyncio.Future[None]] = field(default_factory=deque)  # senders waiting
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    settle_now: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)


def _now() -> datetime:
    return datetime.now(UTC)


def _wake_senders(route: _Route, wanted: int) -> int:
    """Wake up to `wanted` idle senders of `route`; how many more are wanted."""
    idle = route.idle
    while wanted > 0 and idle:
        waiter = idle.popleft()
        if not waiter.done():  # not one whose sender was cancelled
            waiter.set_result(None)
            wanted -= 1
    return wanted


def _merge(batch: Batch, attempt: Attempt, settled: Settled) -> Batch:
    if settled.kind == "delivered":
        return batch._replace(delivered=batch.delivered + 1)
    gone = settled.result if attempt.status == GONE else batch.gone
    failures = batch.failures + (settled.kind == "retry")
    retry_after = batch.retry_after_ms
    if attempt.retry_after is not None:
        retry_after = max(retry_after, int(attempt.retry_after * 1000))
    return Batch(batch.delivered, failures, retry_after, gone, settled.result)


class Forwarder:
    """Delivers the outbox of `database_url` for `routes`. `start` before the first event
    is stored (the writer's fanout needs the route ids), `stop` after the last."""

    def __init__(  # noqa: PLR0913 - the routes, their credentials, and the injected transport, clock and randomness
        self,
        database_url: str,
        routes: Sequence[ForwardRoute],
        *,
        credentials: Sequence[Credentials] | None = None,
        transport: Callable[[ForwardRoute], httpx.AsyncBaseTransport] | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
    ) -> None:
        self.database_url = database_url
        self.configs = list(routes)
        self.credentials = list(credentials or [Credentials() for _ in routes])
        self.make_transport = transport or (
            lambda r: http_transport(*r.urls, max_connections=r.max_in_flight)
        )
        self.wall_ms = wall_ms
        self.rng = rng or random.Random()
        self.owner = uuid.uuid4().hex
        self.routes: list[_Route] = []
        self._fanout: dict[str, tuple[int, ...]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._outbox: Outbox | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake_pending = False

    # -- called from the writer's thread --------------------------------------------------

    def fanout(self, event_type: str) -> Sequence[int]:
        """The ids of the routes an event of this type goes to (cached per type)."""
        ids = self._fanout.get(event_type)
        if ids is None:
            if len(self.routes) != len(self.configs):
                raise DatabaseError("events not stored: the forwarder has not started")
            ids = tuple(r.id for r in self.routes if r.config.matches(event_type))
            if len(self._fanout) < 10_000:
                self._fanout[event_type] = ids
        for route in self.routes:
            if route.id in ids:
                route.counters.enqueued += 1
        return ids

    def wake(self) -> None:
        """New entries were committed: look now rather than at the next poll. Thread-safe."""
        loop = self._loop
        if loop is None or self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._wake_pending = False
        for route in self.routes:
            route.wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    async def _db(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(call, *args, **kwargs))

    def _open(self) -> dict[str, int]:
        store = Store.open(self.database_url, create=True, synchronous="normal")
        lease = max(lease_ms(r) for r in self.configs)
        self._outbox = Outbox(store, owner=self.owner, lease_ms=lease)
        return self._outbox.sync_routes([(r.name, r.url) for r in self.configs])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventctl-forwarder")
        ids = await self._db(self._open)
        self.routes = [
            _Route(
                config=config,
                id=ids[config.name],
                credentials=credentials,
                transport=self.make_transport(config),
                endpoints=Endpoints(config.urls, time.monotonic),
                extensions=timeout_extensions(config.timeout_seconds),
                senders_max=1 if config.ordered else config.max_in_flight,
            )
            for config, credentials in zip(self.configs, self.credentials, strict=True)
        ]
        for route in self.routes:
            self._tasks.append(asyncio.create_task(self._claim_loop(route)))
            self._tasks.append(asyncio.create_task(self._settle_loop(route)))

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop claiming, let sends in flight finish for up to `grace` seconds, settle what
        they got, and give back the leases of the rest, so another worker (or the next
        start) sends them without waiting for their lease to end."""
        self._stopping = True
        for route in self.routes:
            route.wake.set()
            route.room.set()
        claiming, settling = self._tasks[0::2], self._tasks[1::2]
        await asyncio.gather(*claiming, return_exceptions=True)
        for route in self.routes:
            _wake_senders(route, len(route.idle))  # to send what is claimed, or to end
        sending = [task for route in self.routes for task in route.senders]
        if sending:
            _, late = await asyncio.wait(sending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for route in self.routes:
            route.queue.clear()  # never sent: their leases are given back below
            route.settle_now.set()
        await asyncio.gather(*settling, return_exceptions=True)
        try:
            if self._outbox is not None:
                await self._db(self._outbox.release)
                await self._db(self._outbox.store.close)
        except DatabaseError as exc:
            log.warning("forwarding stopped without giving back its leases: %s", exc)
        for route in self.routes:
            await route.transport.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- per route --------------------------------------------------------------------------

    def _capacity(self, route: _Route) -> int:
        """How many entries to claim now; 0 to wait for room. Answered entries waiting for
        their settle do not hold back the next claim (up to a bound), so the sends go on
        while a settle is written; a claim waits for half the window to be free, so that
        claims stay few and large. An ordered or paused route claims when its last entry is
        settled."""
        if route.config.ordered or (route.row is not None and route.row.state == PAUSED):
            return 1 - route.outstanding  # a paused route: one probe at a time
        if route.outstanding - route.sending >= MAX_UNSETTLED:
            return 0
        window = 2 * route.config.max_in_flight
        room = min(CLAIM_MAX, window - route.sending)
        if route.sending and room < window // 2:
            return 0
        return room

    async def _claim_loop(self, route: _Route) -> None:
        assert self._outbox is not None
        while not self._stopping:
            room = self._capacity(route)
            if room <= 0:
                route.room.clear()
                await route.room.wait()
                continue
            claimed_at = time.monotonic()  # before the claim waits for the database
            route.wake.clear()  # a commit from now on wakes the next wait
            try:
                claim = await self._db(
                    self._outbox.claim,
                    route.id,
                    limit=room,
                    now_ms=self.wall_ms(),
                    ordered=route.config.ordered,
                )
            except DatabaseError as exc:
                log.warning("forwarding to %s: %s", route.config.name, exc)
                await self._idle(route, 1.0)
                continue
            except Exception:
                # a bug must not end forwarding on this route: say so, and go on
                log.exception("forwarding to %s: a claim failed", route.config.name)
                await self._idle(route, 1.0)
                continue
            route.row = claim.route
            if self._stopping:
                break  # what it leased is given back by `stop`
            if not claim.entries:
                wait = POLL_SECONDS
                if claim.route.not_before_ms > 0:
                    left = (claim.route.not_before_ms - self.wall_ms()) / 1000
                    wait = min(max(left, 0.0), 1.0) or POLL_SECONDS
                await self._idle(route, wait)
                continue
            route.outstanding += len(claim.entries)
            route.sending += len(claim.entries)
            route.queue.extend((entry, claimed_at) for entry in claim.entries)
            self._dispatch(route)

    def _dispatch(self, route: _Route) -> None:
        """Get the queued entries sent: wake idle senders, and start more up to the route's
        limit. Senders live as long as they find work (a task per send cost more CPU)."""
        waiting = _wake_senders(route, len(route.queue))
        while waiting > 0 and len(route.senders) < route.senders_max:
            task = asyncio.create_task(self._sender(route))
            route.senders.add(task)
            task.add_done_callback(route.senders.discard)
            waiting -= 1

    async def _sender(self, route: _Route) -> None:
        loop = asyncio.get_running_loop()
        queue = route.queue
        while True:
            if queue:
                entry, claimed_at = queue.popleft()
                await self._send(route, entry, claimed_at)
                continue
            if self._stopping:
                return
            waiter = loop.create_future()
            route.idle.append(waiter)
            await waiter

    async def _idle(self, route: _Route, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await route.wake.wait()
        except TimeoutError:
            return
        # woken by a commit: let a few more commits land, so that one claim takes them all
        # (a claim per commit cost more CPU than the sends at paced rates)
        await asyncio.sleep(GATHER_SECONDS)

    async def _send(self, route: _Route, entry: Entry, claimed_at: float) -> None:
        config = route.config
        try:
            # a claim whose lease is nearly over is left for whoever takes it next
            if time.monotonic() - claimed_at > lease_ms(config) / 1000 - config.timeout_seconds:
                self._done(route, None)
                return
            attempt = await self._attempt(route, entry)
        except asyncio.CancelledError:
            self._done(route, None)  # stopping: its lease is given back
            raise
        except Exception as exc:  # not a transport error: a bug, or a peer httpx cannot parse
            log.exception("forwarding to %s: sending event %s failed", config.name, entry.event_id)
            attempt = Attempt(None, type(exc).__name__, 0.0, None, False)
        self._finish(route, entry, attempt)

    async def _attempt(self, route: _Route, entry: Entry) -> Attempt:
        """Send `entry` on `route`: to one of its URLs, and (several) at once to another
        healthy one after no answer or a 5xx, within one timeout in all; the last attempt's
        answer."""
        config, endpoints = route.config, route.endpoints
        event = Event(entry.event_type, entry.event_payload)
        deadline = time.monotonic() + config.timeout_seconds
        endpoint = None
        while True:
            ticket = endpoints.pick(endpoint)
            endpoint = ticket.endpoint
            route.counters.attempts += 1
            try:
                attempt = await post_once(
                    route.transport,
                    endpoint.url,
                    route.credentials,
                    entry.event_id,
                    event,
                    extensions=route.extensions,
                    clock=time.monotonic,
                    wall_clock=_now,
                    # httpx's timeouts are per phase (connect, write, each read): a send must
                    # end within its lease
                    total_timeout=max(deadline - time.monotonic(), 0.0),
                )
            except BaseException:
                endpoints.released(ticket)
                raise
            endpoints.answered(ticket, attempt.status, attempt.error)
            if time.monotonic() >= deadline or not endpoints.fails_over(endpoint, attempt.status):
                return attempt

    def _finish(self, route: _Route, entry: Entry, attempt: Attempt) -> None:
        config = route.config
        try:
            settled = entry_after(attempt, entry, config, self.wall_ms(), self.rng)
        except Exception:
            log.exception("forwarding to %s: event %s", config.name, entry.event_id)
            self._done(route, None)  # its lease runs out and it is tried again
            return
        counters = route.counters
        if settled.kind == "delivered":
            counters.delivered += 1
            if len(counters.durations) < 10_000:
                counters.durations.append(attempt.latency)
        elif settled.kind == "retry":
            counters.retried += 1
        elif settled.kind == "failed":
            counters.failed += 1
            log.warning(
                "forwarding to %s: event %s failed for good (%s)",
                config.name,
                entry.event_id,
                settled.result,
            )
        route.batch = _merge(route.batch, attempt, settled)
        self._done(route, settled)

    def _done(self, route: _Route, settled: Settled | None) -> None:
        route.sending -= 1
        route.room.set()
        if settled is None:
            route.outstanding -= 1
            route.room.set()
            return
        route.pending.append(settled)
        if len(route.pending) == 1 or len(route.pending) >= SETTLE_MAX or route.config.ordered:
            route.settle_now.set()

    async def _settle_loop(self, route: _Route) -> None:
        assert self._outbox is not None
        while True:
            await route.settle_now.wait()
            route.settle_now.clear()
            if 0 < len(route.pending) < SETTLE_MAX and not (route.config.ordered or self._stopping):
                await asyncio.sleep(SETTLE_WAIT_SECONDS)
            settled, route.pending = route.pending[:SETTLE_MAX], route.pending[SETTLE_MAX:]
            batch, route.batch = route.batch, Batch()
            if route.pending:
                route.settle_now.set()
            if settled:
                try:
                    route.row = await self._db(
                        self._outbox.settle,
                        route.id,
                        settled=settled,
                        breaker=breaker(route.config),
                        batch=batch,
                        now_ms=self.wall_ms(),
                    )
                except DatabaseError as exc:
                    # their leases run out and they are sent again: a repeat, not a loss
                    log.warning("forwarding to %s: %s", route.config.name, exc)
                except Exception:
                    log.exception("forwarding to %s: a settle failed", route.config.name)
                route.outstanding -= len(settled)
                route.room.set()
                route.wake.set()
            if self._stopping and not route.pending and not route.senders:
                return
