"""The propagator's durable record of the events it generated: a small SQLite file.

Every event is written here (pending) before its first send, and marked delivered or failed
when it settles, so a propagator that stops or is killed resends what is still pending, with
the same ids, on its next run; `eventctl verify` compares this record with the database.
It uses the standard library's sqlite3: it is a private queue, not the events store.

Each `propagate` that generates events does so in a *run* (an id, its `--count` target,
endpoint and events file, a start time); every event remembers its run, so `verify` can
check one run, and a run killed before its target is resumed rather than begun again.
A `replay` run also keeps its source position (the cursor, written in the same transaction
as the events it covers), so a replay killed and started again goes on where it stopped;
its entries are resent only by the replay, never by `propagate`.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from eventctl.errors import EventctlError, ExitCode
from eventctl.events import Event

SETTLE_BATCH = 256
SPOOL_TABLE = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at REAL NOT NULL,
    settled_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_result TEXT,
    run_id INTEGER REFERENCES runs (run_id)
);
"""
SCHEMA = (
    SPOOL_TABLE
    + """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    target INTEGER,
    endpoint TEXT NOT NULL,
    events_file TEXT NOT NULL,
    started_at REAL NOT NULL
);
"""
)
INDEXES = """
DROP INDEX IF EXISTS spool_state;
DROP INDEX IF EXISTS spool_run;
DROP INDEX IF EXISTS spool_event;
CREATE INDEX IF NOT EXISTS spool_run_id ON spool (run_id);
CREATE INDEX IF NOT EXISTS spool_pending ON spool (run_id, created_at) WHERE state = 'pending';
"""
"""A settle changes only a row's state: no index holds the state but spool_pending, which
holds pending rows alone, so a settle removes one index entry (before, it moved two, in
(state, created_at) and (run_id, state)). Older spools lose those two here. Nothing is
looked up by event_id (a settle finds its row by seq), so no index holds it: the unique
(event_id, run_id) index of before cost a quarter of the spool's CPU per event."""
STATES = ("pending", "delivered", "failed")
# Older spools: events before runs existed lack run_id (and belong to no run); before
# replay, event_id was the primary key, so one id could not be in two runs; runs lack the
# columns of replay (kind, run_key, cursor: the last source position spooled, upto: the
# source's last position when the run began, window: its --since/--until as resolved then).
RUN_COLUMN = "ALTER TABLE spool ADD COLUMN run_id INTEGER REFERENCES runs (run_id)"
RUN_COLUMNS = {
    "kind": "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'propagate'",
    "run_key": "ALTER TABLE runs ADD COLUMN run_key TEXT",
    "cursor": "ALTER TABLE runs ADD COLUMN cursor INTEGER",
    "upto": "ALTER TABLE runs ADD COLUMN upto INTEGER",
    "window": "ALTER TABLE runs ADD COLUMN window TEXT",
}
SPOOL_COLUMNS = (
    "event_id, event_type, event_payload, state, created_at, settled_at, attempts, "
    "last_result, run_id"
)
RUN_SELECT = (
    "SELECT r.run_id, r.target, r.endpoint, r.events_file, r.started_at, "
    "(SELECT count(*) FROM spool s WHERE s.run_id = r.run_id), "
    "(SELECT count(*) FROM spool s WHERE s.run_id = r.run_id AND s.state = 'pending'), "
    "r.kind, r.run_key, r.cursor, r.upto, r.window "
    "FROM runs r"
)
OF_KIND = (
    "(run_id IS NULL AND ? = 'propagate' OR run_id IN (SELECT run_id FROM runs WHERE kind = ?))"
)


PIECE = 128
"""Most rows one INSERT or UPDATE statement of the spool writes (5 values a row: within the
999 variables of SQLite's oldest limit). A statement of many rows costs half the CPU of as
many one-row statements; pieces of 128, 64, ... 1 rows keep the statements few, so that
they stay in the connection's cache."""
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
SETTLE_ONE = (
    "UPDATE spool SET state = ?, settled_at = ?, attempts = attempts + ?, last_result = ? "
    "WHERE seq = ? AND state = 'pending'"
)

T = TypeVar("T")


def _pieces(rows: list[T]) -> Iterator[list[T]]:
    """`rows` in pieces of PIECE rows, then of the powers of two below it."""
    i, size = 0, PIECE
    while i < len(rows):
        while size > len(rows) - i:
            size //= 2
        yield rows[i : i + size]
        i += size


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


@functools.cache
def _insert_sql(n: int) -> str:
    """The INSERT of `n` new pending events."""
    values = ", ".join(["(?, ?, ?, 'pending', ?, ?)"] * n)
    return (
        "INSERT INTO spool (event_id, event_type, event_payload, state, created_at, run_id) "
        f"VALUES {values}"
    )


@functools.cache
def _settle_sql(n: int) -> str:
    """The UPDATE of `n` settlements (state, settled_at, attempts, last_result, seq)."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * n)
    return (
        "UPDATE spool SET state = v.column1, settled_at = v.column2, "
        "attempts = attempts + v.column3, last_result = v.column4 "
        f"FROM (VALUES {values}) AS v WHERE spool.seq = v.column5 AND spool.state = 'pending'"
    )


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a spool written by an older eventctl to this layout, its entries kept."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(spool)")}
    if "run_id" not in columns:
        connection.execute(RUN_COLUMN)
    if "seq" not in columns:
        with connection:
            connection.execute("BEGIN")
            connection.execute("ALTER TABLE spool RENAME TO spool_before_replay")
            connection.execute(SPOOL_TABLE)
            connection.execute(
                f"INSERT INTO spool ({SPOOL_COLUMNS}) SELECT {SPOOL_COLUMNS} "
                "FROM spool_before_replay ORDER BY rowid"
            )
            connection.execute("DROP TABLE spool_before_replay")
    found = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    for name, sql in RUN_COLUMNS.items():
        if name not in found:
            connection.execute(sql)
    connection.executescript(INDEXES)


class SpoolError(EventctlError):
    """The spool file cannot be opened or written."""

    exit_code = ExitCode.DATABASE


STATES = ("pending", "delivered", "failed")
SELECTIONS: dict[str, tuple[str, ...]] = {
    "unsettled": ("pending", "failed"),
    "all": (),
    **{state: (state,) for state in STATES},
}
"""What `spool list --state` may name, and the states each selects (none: all)."""


class Entry(NamedTuple):
    """One generated event as the spool remembers it."""

    event_id: str
    event: Event
    state: str
    created_at: float
    settled_at: float | None
    attempts: int
    last_result: str | None
    run_id: int | None
    seq: int = 0  # the row's, by which it settles

    def to_json(self) -> dict[str, Any]:
        settled = None if self.settled_at is None else _iso(self.settled_at)
        return {
            "event_id": self.event_id,
            "state": self.state,
            "event": self.event.to_json(),
            "attempts": self.attempts,
            "last_result": self.last_result,
            "created_at": _iso(self.created_at),
            "settled_at": settled,
        }


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat()


class Run(NamedTuple):
    """One `propagate` or `replay` run: what it was asked for, and how far it got. A replay
    run's `events_file` names its source, `target` is the number of events it selected,
    `cursor` the source position of the last one spooled, `upto` the source's last position
    when it began (a resumed replay reads no further)."""

    run_id: int
    target: int | None
    endpoint: str
    events_file: str
    started_at: float
    generated: int
    pending: int
    kind: str = "propagate"
    run_key: str | None = None
    cursor: int | None = None
    upto: int | None = None
    window: str | None = None

    @property
    def unfinished(self) -> bool:
        """Short of its target, or with events still pending (None: no target, never)."""
        return self.target is not None and (self.generated < self.target or self.pending > 0)


class Spool:
    """Pending, delivered and failed events of this propagator, in `path`.

    Writes are committed in WAL mode with synchronous=NORMAL: a record survives the
    propagator being killed (the case it exists for), not the machine losing power.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self.pending_count = self._pending_of_propagate()
        self.run_id: int | None = None
        # the row of each event added by this spool (or tracked to be resent) and not yet
        # settled: one id may be pending in several runs (replays), and settling it must
        # touch its own row only
        self._seqs: dict[str, int] = {}
        self._settled_rows: list[tuple[str, float, int, str, int]] = []

    @classmethod
    def open(cls, path: Path) -> Spool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.executescript(SCHEMA)
            _migrate(connection)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"{path}: cannot open the spool: {exc}") from None
        return cls(connection, path)

    def _pending_of_propagate(self) -> int:
        """Pending events that count against propagate's spool_max_pending (a replay's
        are sent by the replay alone)."""
        (n,) = self.connection.execute(
            f"SELECT count(*) FROM spool WHERE state = 'pending' AND {OF_KIND}",
            ("propagate", "propagate"),
        ).fetchone()
        return int(n)

    def _commit(
        self, inserts: list[tuple[str, str, str, float, int | None]], cursor: int | None = None
    ) -> int:
        """One transaction: the new events, the run's cursor, every settlement noted since;
        the rowid of the last event inserted (those before it have the ones just below:
        the transaction holds the write lock, so nobody inserts in between)."""
        rows, self._settled_rows = self._settled_rows, []
        last = 0
        try:
            with self.connection:
                self.connection.execute("BEGIN")
                for new in _pieces(inserts):
                    self.connection.execute(_insert_sql(len(new)), _flat(new))
                if inserts:
                    (last,) = self.connection.execute("SELECT last_insert_rowid()").fetchone()
                if cursor is not None:
                    self.connection.execute(
                        "UPDATE runs SET cursor = ? WHERE run_id = ?", (cursor, self.run_id)
                    )
                if not UPDATE_FROM:
                    self.connection.executemany(SETTLE_ONE, rows)
                for settled in _pieces(rows) if UPDATE_FROM else ():
                    self.connection.execute(_settle_sql(len(settled)), _flat(settled))
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot write the spool: {exc}") from None
        return int(last)

    def add(self, event_id: str, event: Event, created_at: float | None = None) -> None:
        """Record a new event as pending; committed before this returns."""
        self.add_many([(event_id, event)], created_at)

    def add_many(
        self,
        events: list[tuple[str, Event]],
        created_at: float | None = None,
        *,
        cursor: int | None = None,
    ) -> None:
        """Record new events as pending, in `run_id`'s run, in one transaction committed
        before this returns; with `cursor`, the run's source position in the same one."""
        at = created_at or time.time()
        run = self.run_id
        last = self._commit(
            [(i, e.event_type, e.event_payload, at, run) for i, e in events], cursor
        )
        first = last - len(events) + 1
        self._seqs.update((event_id, first + k) for k, (event_id, _) in enumerate(events))
        self.pending_count += len(events)

    def track(self, entries: list[Entry]) -> None:
        """Remember the rows of pending entries about to be resent, so that each settles in
        its own run."""
        self._seqs.update((e.event_id, e.seq) for e in entries)

    def settle(self, event_id: str, state: str, attempts: int, result: str) -> None:
        """Note a pending event, added or tracked by this spool, as delivered or failed.
        Settlements are committed with the next `add` (or `flush`): losing them to a crash
        only means the event is sent again, and the consumer stores a resent id once."""
        try:
            seq = self._seqs.pop(event_id)
        except KeyError:
            raise ValueError(f"{event_id!r} was neither added nor tracked here") from None
        self.pending_count -= 1
        self._settled_rows.append((state, time.time(), attempts, result, seq))
        if len(self._settled_rows) >= SETTLE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Commit the settlements noted so far."""
        if self._settled_rows:
            self._commit([])

    def entries(
        self, *states: str, run_id: int | None = None, kind: str | None = None
    ) -> list[Entry]:
        """Entries in the given states (all when none), of one run or all (or all runs of
        one kind: `propagate` takes the events of no run too), oldest first."""
        self.flush()
        sql = (
            "SELECT event_id, event_type, event_payload, state, created_at, settled_at, "
            "attempts, last_result, run_id, seq FROM spool WHERE 1"
        )
        params: list[object] = []
        if states:
            unknown = set(states) - set(STATES)
            if unknown:
                raise ValueError(f"not a state of the spool: {sorted(unknown)}")
            # literals, so that the query planner takes spool_pending for `pending`
            if len(states) == 1:
                sql += f" AND state = '{states[0]}'"
            else:
                sql += f" AND state IN ({', '.join(repr(state) for state in states)})"
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if kind is not None:
            sql += f" AND {OF_KIND}"
            params += [kind, kind]
        rows = self.connection.execute(sql + " ORDER BY created_at, rowid", params).fetchall()
        return [Entry(row[0], Event(row[1], row[2]), *row[3:]) for row in rows]

    def runs(self) -> list[Run]:
        """Every run, oldest first."""
        self.flush()
        rows = self.connection.execute(RUN_SELECT + " ORDER BY r.run_id").fetchall()
        return [Run(*row) for row in rows]

    def run(self, run_id: int) -> Run | None:
        self.flush()
        row = self.connection.execute(RUN_SELECT + " WHERE r.run_id = ?", (run_id,)).fetchone()
        return None if row is None else Run(*row)

    def latest_run(self, kind: str | None = None, run_key: str | None = None) -> Run | None:
        """The latest run (of this kind, with this key, when given)."""
        self.flush()
        sql, params = RUN_SELECT + " WHERE 1", []
        if kind is not None:
            sql += " AND r.kind = ?"
            params.append(kind)
        if run_key is not None:
            sql += " AND r.run_key = ?"
            params.append(run_key)
        row = self.connection.execute(sql + " ORDER BY r.run_id DESC LIMIT 1", params).fetchone()
        return None if row is None else Run(*row)

    def begin_run(
        self, target: int | None, endpoint: str, events_file: str, *, new: bool = False
    ) -> tuple[Run, bool]:
        """The run new events go to, and whether it is resumed: the latest run when it is
        unfinished with this same target, endpoint and events file (unless `new`), else a
        new one. A run without a target (until Ctrl-C or --duration) is never resumed."""
        latest = None if new else self.latest_run("propagate")
        if (
            latest is not None
            and latest.unfinished
            and (latest.target, latest.endpoint, latest.events_file)
            == (target, endpoint, events_file)
        ):
            self.run_id = latest.run_id
            return latest, True
        return self.new_run(target, endpoint, events_file), False

    def new_run(  # noqa: PLR0913 - the columns of a run
        self,
        target: int | None,
        endpoint: str,
        events_file: str,
        *,
        kind: str = "propagate",
        run_key: str | None = None,
        upto: int | None = None,
        window: str | None = None,
    ) -> Run:
        """Begin a new run, which the events added from now on belong to."""
        try:
            cursor = self.connection.execute(
                "INSERT INTO runs (target, endpoint, events_file, started_at, kind, run_key, "
                "upto, window) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (target, endpoint, events_file, time.time(), kind, run_key, upto, window),
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot write the spool: {exc}") from None
        assert cursor.lastrowid is not None
        self.run_id = cursor.lastrowid
        started = self.run(self.run_id)
        assert started is not None
        return started

    def resume(self, run: Run) -> None:
        """Add the events from now on to `run`."""
        self.run_id = run.run_id

    def requeue_failed(self) -> int:
        """Make failed events of propagate runs pending again; returns how many. (A replay's
        failed events are sent again by running the replay again.)"""
        self.flush()
        cursor = self.connection.execute(
            "UPDATE spool SET state = 'pending', settled_at = NULL WHERE state = 'failed' "
            f"AND {OF_KIND}",
            ("propagate", "propagate"),
        )
        self.pending_count += cursor.rowcount
        return cursor.rowcount

    def counts(self, run_id: int | None = None) -> dict[str, int]:
        self.flush()
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        rows = self.connection.execute(
            f"SELECT state, count(*) FROM spool {where} GROUP BY state", params
        )
        found = dict.fromkeys(("pending", "delivered", "failed"), 0)
        found.update({state: int(n) for state, n in rows})
        return found

    def close(self) -> None:
        self.flush()
        self.connection.close()
