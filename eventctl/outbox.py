"""The outbox of store and forward: what each forwarding route still has to deliver.

`Store.insert_requests(..., fanout=...)` writes one outbox entry per new event and matching
route in the events' own transaction. A forwarder then claims entries (a lease: one worker
delivers each (event, route) at a time, on SQLite and on PostgreSQL with any number of
workers or hosts), and settles them: a delivered entry is deleted, a retried one waits until
its due time, a refused one is kept as failed. The route's shared state (active, paused by
the circuit breaker, disabled by a 410) lives in `forward_routes` and moves in the same
transaction as its entries. Every method is blocking; the forwarder calls them from one
thread of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import peewee

from eventctl.errors import EventctlError, ExitCode
from eventctl.store import FAILED, QUEUED, Store, iso

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"


class UnknownRoute(EventctlError):
    """A route name that the database does not know."""

    exit_code = ExitCode.INPUT


class RouteRow(NamedTuple):
    """A route's shared state, as `forward_routes` holds it."""

    id: int
    name: str
    url: str
    state: str
    reason: str
    failures: int
    not_before_ms: int
    cooldown_ms: int
    delivered: int
    probe_until_ms: int = 0


_ROUTE_COLUMNS = (
    "id, name, url, state, reason, failures, not_before_ms, cooldown_ms, delivered, probe_until_ms"
)


class Entry(NamedTuple):
    """A claimed outbox entry with its event."""

    event_row: int
    event_id: str
    event_type: str
    event_payload: str
    received_at: datetime
    attempts: int
    first_attempt_ms: int | None


class Claim(NamedTuple):
    route: RouteRow
    entries: list[Entry]


Kind = Literal["delivered", "retry", "failed", "kept"]


class Settled(NamedTuple):
    """What becomes of one claimed entry. `kept` stays queued, due now (a 410 that disabled
    the route, a send cut short by shutdown)."""

    event_row: int
    kind: Kind
    attempts: int
    first_attempt_ms: int | None
    due_ms: int
    result: str


class Batch(NamedTuple):
    """What a settled batch says about the receiver."""

    delivered: int = 0
    failures: int = 0  # retryable: no answer, 5xx, 408, 429
    retry_after_ms: int = 0  # the longest Retry-After asked for
    gone: str = ""  # the result of a 410, which disables the route
    last_result: str = ""


@dataclass(frozen=True)
class Breaker:
    """The circuit breaker of one route: after `failures` retryable failures in a row the
    route pauses for `cooldown_ms`, then one entry probes it; each failed probe doubles the
    pause, up to `max_cooldown_ms`; a delivery closes it."""

    failures: int = 5
    cooldown_ms: int = 5_000
    max_cooldown_ms: int = 60_000


def route_after(row: RouteRow, batch: Batch, breaker: Breaker, now_ms: int) -> RouteRow:
    """The route's state once `batch` is settled at `now_ms`."""
    state, reason, failures = row.state, row.reason, row.failures
    not_before, cooldown = row.not_before_ms, row.cooldown_ms
    if batch.gone:
        state = DISABLED
        reason = f"the receiver answered {batch.gone}; `eventctl routes enable {row.name}` resumes"
    elif batch.delivered:
        failures = 0
        if state == PAUSED:
            state, reason, cooldown = ACTIVE, "", 0
    if batch.failures and not batch.delivered:
        failures += batch.failures
        if state == PAUSED and now_ms >= not_before:  # the probe failed
            cooldown = min(max(cooldown * 2, breaker.cooldown_ms), breaker.max_cooldown_ms)
        elif state == ACTIVE and failures >= breaker.failures:
            state, cooldown = PAUSED, breaker.cooldown_ms
        if state == PAUSED:
            not_before = max(not_before, now_ms + cooldown)
            reason = (
                f"{failures} failures in a row (last: {batch.last_result}); "
                f"probing again after {cooldown / 1000:g}s"
            )
    if batch.retry_after_ms:
        not_before = max(not_before, now_ms + batch.retry_after_ms)
    return row._replace(
        state=state,
        reason=reason,
        failures=failures,
        not_before_ms=not_before,
        cooldown_ms=cooldown,
        delivered=row.delivered + batch.delivered,
        probe_until_ms=0 if row.state == PAUSED else row.probe_until_ms,  # the probe is back
    )


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """What `eventctl routes`, GET /routes, /metrics and the web page show of a route."""

    name: str
    url: str
    state: str
    reason: str
    queued: int
    failed: int
    delivered: int
    oldest_queued: datetime | None
    not_before: datetime | None

    def lag_seconds(self, now: datetime) -> float:
        """The age of the oldest undelivered event (0 when nothing is queued)."""
        if self.oldest_queued is None:
            return 0.0
        return max((now - self.oldest_queued).total_seconds(), 0.0)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "state": self.state,
            "reason": self.reason,
            "queued": self.queued,
            "failed": self.failed,
            "delivered": self.delivered,
            "lag_seconds": round(self.lag_seconds(now), 3),
            "oldest_queued_at": None if self.oldest_queued is None else iso(self.oldest_queued),
            "next_attempt_at": None if self.not_before is None else iso(self.not_before),
        }


def _moment(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


class Outbox:
    """The outbox and route tables of one store (see the module docstring), as one worker
    `owner` sees them: its claims lease entries for `lease_ms`."""

    def __init__(self, store: Store, *, owner: str = "", lease_ms: int = 11_000) -> None:
        self.store = store
        self.owner = owner
        self.lease_ms = lease_ms
        self.database = store.database
        self.p = store.database.param
        self.skip_locked = "" if store.is_sqlite else " FOR UPDATE SKIP LOCKED"
        self.lock_row = "" if store.is_sqlite else " FOR UPDATE"

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.database.execute_sql(sql.replace("?", self.p), list(params))  # type: ignore[no-untyped-call]

    @contextmanager
    def _write(self, doing: str) -> Iterator[None]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so it waits on busy_timeout
        for the write lock rather than failing on an upgrade)."""
        store = self.store
        with store._errors(doing), store.write_gate:
            # as the write path: a SQLite file replaced under us is reopened, not refused
            store._current(writer=True)
            if store.is_sqlite:
                self.database.begin("IMMEDIATE")  # type: ignore[call-arg]
            else:
                self.database.begin()
            try:
                yield
            except BaseException:
                store._rollback()
                raise
            store._commit()

    def sync_routes(self, routes: Sequence[tuple[str, str]]) -> dict[str, int]:
        """Register (name, url) routes, keeping the state of those already known; their ids."""
        ids: dict[str, int] = {}
        with self._write("cannot register forwarding routes"):
            for name, url in routes:
                self._sql(
                    "INSERT INTO forward_routes (name, url, state, reason, failures, "
                    "not_before_ms, cooldown_ms, delivered, probe_until_ms) "
                    "VALUES (?, ?, ?, '', 0, 0, 0, 0, 0) "
                    "ON CONFLICT (name) DO UPDATE SET url = excluded.url",
                    (name, url, ACTIVE),
                )
                (ids[name],) = self._sql(
                    "SELECT id FROM forward_routes WHERE name = ?", (name,)
                ).fetchone()
        return ids

    def _route(self, route_id: int, *, lock: bool) -> RouteRow:
        row = self._sql(
            f"SELECT {_ROUTE_COLUMNS} FROM forward_routes WHERE id = ?"
            + (self.lock_row if lock else ""),
            (route_id,),
        ).fetchone()
        return RouteRow(*row)

    def claim(self, route_id: int, *, limit: int, now_ms: int, ordered: bool) -> Claim:
        """Lease up to `limit` due entries of a route to the owner until now + lease_ms,
        oldest first; none while the route is disabled or must wait (Retry-After, the
        breaker's pause), one (the probe) when a pause is over. An ordered route has at
        most one entry leased, always its oldest queued one."""
        with self._write("cannot claim outbox entries"):
            route = self._route(route_id, lock=False)
            if route.state == DISABLED or now_ms < route.not_before_ms or limit <= 0:
                return Claim(route, [])
            if route.state == PAUSED:
                # one probe at a time across every worker and host: whoever marks it sends it
                marked = self._sql(
                    "UPDATE forward_routes SET probe_until_ms = ? "
                    "WHERE id = ? AND state = ? AND probe_until_ms <= ?",
                    (now_ms + self.lease_ms, route_id, PAUSED, now_ms),
                )
                if marked.rowcount != 1:
                    return Claim(route, [])
            if route.state == PAUSED or ordered:
                limit = 1
            free = "due_ms <= ? AND lease_until_ms <= ?"
            # Pick, then lease: one UPDATE with the pick as its subquery may lease more
            # than the pick's LIMIT on PostgreSQL (the subquery sees the rows it updates).
            if ordered:
                # not SKIP LOCKED: skipping a locked head would deliver out of order
                picked = self._sql(
                    "SELECT event_row FROM outbox WHERE route = ? AND state = ? "
                    f"ORDER BY event_row LIMIT 1{self.lock_row}",
                    (route_id, QUEUED),
                ).fetchall()
            else:
                picked = self._sql(
                    f"SELECT event_row FROM outbox WHERE route = ? AND state = ? AND {free} "
                    f"ORDER BY event_row LIMIT ?{self.skip_locked}",
                    (route_id, QUEUED, now_ms, now_ms, limit),
                ).fetchall()
            if not picked:
                return Claim(route, [])
            marks = ", ".join("?" * len(picked))
            claimed = self._sql(
                "UPDATE outbox SET lease_until_ms = ?, leased_by = ? "
                f"WHERE route = ? AND {free} AND event_row IN ({marks}) "
                "RETURNING event_row, attempts, first_attempt_ms",
                (
                    now_ms + self.lease_ms,
                    self.owner,
                    route_id,
                    now_ms,
                    now_ms,
                    *(r for (r,) in picked),
                ),
            ).fetchall()
            if not claimed:
                return Claim(route, [])
            events = self._events([row for row, _, _ in claimed])
        entries = [
            Entry(row, *events[row], attempts, first)
            for row, attempts, first in sorted(claimed)
            if row in events
        ]
        return Claim(route, entries)

    def _events(self, rows: list[int]) -> dict[int, tuple[str, str, str, datetime]]:
        marks = ", ".join("?" * len(rows))
        tuples: list[Any] = self._sql(
            "SELECT id, event_id, event_type, event_payload, received_at FROM events "
            f"WHERE id IN ({marks})",
            rows,
        ).fetchall()
        found: dict[int, tuple[str, str, str, datetime]] = {}
        for row_id, event_id, kind, payload, received in tuples:
            found[row_id] = (event_id, kind, payload, _received(received))
        return found

    def settle(
        self,
        route_id: int,
        *,
        settled: Sequence[Settled],
        breaker: Breaker,
        batch: Batch,
        now_ms: int,
    ) -> RouteRow:
        """Apply what became of entries the owner leased, and move the route's state by
        `batch`, in one transaction. An entry whose lease another worker has taken since
        is left to that worker. The route as it is now."""
        owner = self.owner
        delivered = [s.event_row for s in settled if s.kind == "delivered"]
        others = [s for s in settled if s.kind != "delivered"]
        with self._write("cannot settle outbox entries"):
            gone = 0
            for start in range(0, len(delivered), 500):
                chunk = delivered[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                cursor = self._sql(
                    "DELETE FROM outbox WHERE route = ? AND leased_by = ? "
                    f"AND event_row IN ({marks})",
                    (route_id, owner, *chunk),
                )
                gone += max(cursor.rowcount, 0)
            if others:
                sql = (
                    "UPDATE outbox SET state = ?, attempts = ?, first_attempt_ms = ?, due_ms = ?, "
                    "lease_until_ms = 0, leased_by = '', last_result = ? "
                    "WHERE route = ? AND event_row = ? AND leased_by = ?"
                ).replace("?", self.p)
                rows = [
                    (
                        FAILED if s.kind == "failed" else QUEUED,
                        s.attempts,
                        s.first_attempt_ms,
                        s.due_ms,
                        s.result[:200],
                        route_id,
                        s.event_row,
                        owner,
                    )
                    for s in others
                ]
                cursor = self.database.cursor()  # type: ignore[no-untyped-call]
                with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
                    cursor.executemany(sql, rows)  # its errors as Peewee's, so as DatabaseError
            route = self._route(route_id, lock=True)
            after = route_after(route, batch._replace(delivered=gone), breaker, now_ms)
            if after != route:
                self._sql(
                    "UPDATE forward_routes SET state = ?, reason = ?, failures = ?, "
                    "not_before_ms = ?, cooldown_ms = ?, delivered = ?, probe_until_ms = ? "
                    "WHERE id = ?",
                    (
                        after.state,
                        after.reason,
                        after.failures,
                        after.not_before_ms,
                        after.cooldown_ms,
                        after.delivered,
                        after.probe_until_ms,
                        route_id,
                    ),
                )
        return after

    def release(self) -> int:
        """Give back every lease the owner holds (a forwarder stopping); how many."""
        with self._write("cannot release outbox entries"):
            cursor = self._sql(
                "UPDATE outbox SET lease_until_ms = 0, leased_by = '' WHERE leased_by = ?",
                (self.owner,),
            )
            return int(max(cursor.rowcount, 0))

    def has_tables(self) -> bool:
        with self.store._errors("cannot read forwarding routes"):
            return bool(self.database.table_exists("forward_routes"))

    def status(self) -> list[RouteStatus]:
        """Every known route, by name: its state and what its outbox holds."""
        store = self.store
        with store._errors("cannot read forwarding routes"):
            store._current(writer=False)  # first: a replaced SQLite file is refused, not empty
            if not self.database.table_exists("forward_routes"):
                return []
            routes = [
                RouteRow(*row)
                for row in self._sql(
                    f"SELECT {_ROUTE_COLUMNS} FROM forward_routes ORDER BY name"
                ).fetchall()
            ]
            counts: dict[tuple[int, int], tuple[int, int]] = {
                (route, state): (n, oldest)
                for route, state, n, oldest in self._sql(
                    "SELECT route, state, COUNT(*), MIN(event_row) FROM outbox "
                    "GROUP BY route, state"
                ).fetchall()
            }
            oldest_rows = [v[1] for (_, state), v in counts.items() if state == QUEUED]
            received = (
                {row: event[3] for row, event in self._events(oldest_rows).items()}
                if oldest_rows
                else {}
            )
        found = []
        for route in routes:
            queued, oldest = counts.get((route.id, QUEUED), (0, 0))
            failed, _ = counts.get((route.id, FAILED), (0, 0))
            found.append(
                RouteStatus(
                    name=route.name,
                    url=route.url,
                    state=route.state,
                    reason=route.reason,
                    queued=int(queued),
                    failed=int(failed),
                    delivered=int(route.delivered),
                    oldest_queued=received.get(oldest) if queued else None,
                    not_before=_moment(int(route.not_before_ms)),
                )
            )
        return found

    def _route_id(self, name: str) -> int:
        row = self._sql("SELECT id FROM forward_routes WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [n for (n,) in self._sql("SELECT name FROM forward_routes ORDER BY name")]
            listed = ", ".join(known) if known else "none"
            raise UnknownRoute(f"no forwarding route named {name!r} (known: {listed})")
        return int(row[0])

    def retry(self, name: str | None) -> int:
        """Queue a route's failed entries (every route's, with None) again, due now and
        with their attempts counted afresh; how many."""
        if not self.has_tables():
            if name is None:
                return 0
            raise UnknownRoute(f"no forwarding route named {name!r} (known: none)")
        with self._write("cannot retry outbox entries"):
            where, params = "state = ?", [FAILED]
            if name is not None:
                where += " AND route = ?"
                params.append(self._route_id(name))
            cursor = self._sql(
                "UPDATE outbox SET state = ?, attempts = 0, first_attempt_ms = NULL, due_ms = 0, "
                f"lease_until_ms = 0, leased_by = '' WHERE {where}",
                (QUEUED, *params),
            )
            return int(max(cursor.rowcount, 0))

    def enable(self, name: str) -> None:
        """Make a route active again (after a 410, or to end a breaker's pause now)."""
        if not self.has_tables():
            raise UnknownRoute(f"no forwarding route named {name!r} (known: none)")
        with self._write("cannot enable the route"):
            route_id = self._route_id(name)
            self._sql(
                "UPDATE forward_routes SET state = ?, reason = '', failures = 0, "
                "not_before_ms = 0, cooldown_ms = 0, probe_until_ms = 0 WHERE id = ?",
                (ACTIVE, route_id),
            )


def _received(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
