"""Event storage behind one database URL (SQLite or PostgreSQL), via Peewee.

No SQL dialect leaks out of this module. Every public method is blocking: call it from
a worker thread, never from the event loop.

A SQLite file can be deleted or replaced under a running process, which then keeps using
the old file. So each connection remembers the (st_dev, st_ino) of the database file and
of its -wal file, every operation compares them with the path first, and `insert` compares
again after its commit: a connection whose files are no longer at the path is never used.
Only the write path (`insert`, `probe`) reopens the file; readers wait for it to do so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, Unpack
from urllib.parse import parse_qs, urlsplit

import peewee
from playhouse.db_url import connect

from eventctl.errors import DatabaseError, DatabaseUnreachable, IdempotencyConflict
from eventctl.events import MAX_EVENT_TYPE_LENGTH, Event

SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full"}
INSERT_CHUNK = 1000
INSERT_COLUMNS = ("event_id", "event_type", "event_payload", "received_at")
PG_CONNECT_TIMEOUT = 5
# A cut link drops packets without a reset, and TCP alone would retransmit for about 15
# minutes. So a connection fails once data it sent is unacknowledged for
# PG_TCP_USER_TIMEOUT_MS, and one with nothing unacknowledged (idle, or awaiting an answer)
# is probed after PG_KEEPALIVES_IDLE s of silence and fails once the user timeout has passed
# (Linux; after PG_KEEPALIVES_COUNT probes elsewhere). The server probes its end the same
# way, so that a session whose client is gone ends and releases its locks.
PG_KEEPALIVES_IDLE = 5
PG_KEEPALIVES_INTERVAL = 1
PG_KEEPALIVES_COUNT = 5
PG_TCP_USER_TIMEOUT_MS = 5000
PG_CONNECTION_DEFAULTS: dict[str, int] = {
    "connect_timeout": PG_CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": PG_KEEPALIVES_IDLE,
    "keepalives_interval": PG_KEEPALIVES_INTERVAL,
    "keepalives_count": PG_KEEPALIVES_COUNT,
    "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS,
}
PG_SESSION_SETTINGS: dict[str, str | int] = {
    "synchronous_commit": "on",
    "tcp_keepalives_idle": PG_KEEPALIVES_IDLE,
    "tcp_keepalives_interval": PG_KEEPALIVES_INTERVAL,
    "tcp_keepalives_count": PG_KEEPALIVES_COUNT,
}
# Not ASCII, so no Idempotency-Key, batch id or generated id can ever be this.
PROBE_EVENT_ID = "\u2022eventctl write probe"
PG_DISK_FULL = "53100"

log = logging.getLogger("eventctl.store")

FileId = tuple[int, int]
_NO_MOMENT = object()
Row = tuple[str, str, str, object]
"""(event_id, event_type, event_payload, received_at as the database takes it)"""


class _Files(NamedTuple):
    """(st_dev, st_ino) of the database file and of its -wal file, None where missing."""

    db: FileId | None
    wal: FileId | None


def _file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _stale_wal(old: _Files, files: _Files) -> bool:
    """Whether the -wal file at the path is the old one while the database file is not."""
    return old.wal is not None and files.wal == old.wal and files.db != old.db


def _cause(exc: peewee.PeeweeException) -> str:
    """What the database's error code says, where a message alone hides it."""
    orig = getattr(exc, "orig", None) or exc.__context__
    name = getattr(orig, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL") or getattr(orig, "pgcode", None) == PG_DISK_FULL:
        return "the disk is full"
    if name.startswith("SQLITE_READONLY"):
        return "the database is read-only"
    return ""


class Incoming(NamedTuple):
    """An accepted event on its way into the table."""

    event_id: str
    event: Event
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the events table."""

    id: int
    event_id: str
    event_type: str
    event_payload: str
    received_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_payload": self.event_payload,
            "received_at": iso(self.received_at),
        }


class EventFilter(TypedDict, total=False):
    """Which events a read returns (`Store.events`, `Follower`, `Store.page`), each filter
    optional: these event types, received_at in [since, until), a payload substring
    (case-sensitive), these event ids.
    GET /events, GET /events/stream and list-events pass them by these names."""

    types: Sequence[str]
    since: datetime | None
    until: datetime | None
    q: str | None
    event_ids: Sequence[str]


FOLLOW_BATCH = 500
FOLLOW_POLL_SECONDS = 0.25


class Follower:
    """Follows the table from a row id: each `next_batch` returns up to FOLLOW_BATCH rows
    stored after the last one it returned, oldest first, matching the filters of
    `Store.events`. The one way `GET /events/stream` and `list-events --follow` read new
    rows; each caller waits FOLLOW_POLL_SECONDS after an empty batch in its own way."""

    def __init__(self, store: Store, last_id: int, **filters: Unpack[EventFilter]) -> None:
        self.store = store
        self.last_id = last_id
        self.filters = filters

    def next_batch(self) -> list[StoredEvent]:
        rows = self.store.events(
            limit=FOLLOW_BATCH, after_id=self.last_id, oldest_first=True, **self.filters
        )
        if rows:
            self.last_id = rows[-1].id
        return rows


def _bucket_counts(rows: Sequence[Any], buckets: int) -> list[int]:
    counts = [0] * buckets
    for index, n in rows:
        if 0 <= int(index) < buckets:  # always, as the query's window is whole buckets
            counts[int(index)] += int(n)
    return counts


class Summary(NamedTuple):
    """What Store.summary counts: the highest row id, (event_type, count) most frequent
    first, and events per bucket of the window, oldest bucket first."""

    last_id: int
    types: list[tuple[str, int]]
    buckets: list[int]


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z suffix, e.g. 2026-11-27T09:14:42.123456Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_utc(value: datetime | str) -> datetime:
    """An aggregate's datetime: SQLite returns MIN/MAX of the column as text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


class _EventModel(peewee.Model):
    id = peewee.AutoField()
    event_id = peewee.CharField(max_length=255, unique=True)
    event_type = peewee.CharField(max_length=MAX_EVENT_TYPE_LENGTH, index=True)
    event_payload = peewee.TextField()
    received_at = peewee.DateTimeField(index=True)


class _RouteModel(peewee.Model):
    """A forwarding route's shared state (eventctl/outbox.py reads and moves it)."""

    id = peewee.AutoField()
    name = peewee.TextField(unique=True)  # the URL by default, which may be long
    url = peewee.TextField()
    state = peewee.CharField(max_length=16)  # active, paused or disabled
    reason = peewee.TextField()
    failures = peewee.IntegerField()  # retryable failures in a row
    not_before_ms = peewee.BigIntegerField()  # no attempt before (Retry-After, a cooldown)
    cooldown_ms = peewee.BigIntegerField()  # the circuit breaker's last pause
    delivered = peewee.BigIntegerField()
    probe_until_ms = peewee.BigIntegerField()  # a paused route's probe is out until then


class _OutboxModel(peewee.Model):
    """One event still to deliver on one route; a delivered entry is deleted."""

    route = peewee.IntegerField()
    event_row = peewee.IntegerField()  # events.id
    state = peewee.SmallIntegerField()  # QUEUED or FAILED
    attempts = peewee.IntegerField()
    first_attempt_ms = peewee.BigIntegerField(null=True)
    due_ms = peewee.BigIntegerField()
    lease_until_ms = peewee.BigIntegerField()
    leased_by = peewee.CharField(max_length=64)
    last_result = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("route", "event_row")
        indexes = ((("route", "state", "event_row"), False),)


OUTBOX_COLUMNS = (
    "route",
    "event_row",
    "state",
    "attempts",
    "due_ms",
    "lease_until_ms",
    "leased_by",
    "last_result",
)
QUEUED, FAILED = 0, 2
OUTBOX_CHUNK = 2000
Fanout = Callable[[str], Sequence[int]]
"""event_type -> the ids of the forwarding routes whose match it passes"""


class Models(NamedTuple):
    events: type[_EventModel]
    routes: type[_RouteModel]
    outbox: type[_OutboxModel]


def _bind(database: peewee.Database) -> Models:
    """Model classes bound to one database, so several stores can live in one process."""

    class EventRow(_EventModel):
        class Meta:
            table_name = "events"

    class RouteRow(_RouteModel):
        class Meta:
            table_name = "forward_routes"

    class OutboxRow(_OutboxModel):
        class Meta:
            table_name = "outbox"

    for model in (EventRow, RouteRow, OutboxRow):
        model._meta.set_database(database)
    return Models(EventRow, RouteRow, OutboxRow)


_GATES: dict[str, threading.Lock] = {}
_GATES_LOCK = threading.Lock()


def _write_gate(path: Path | None) -> AbstractContextManager[Any]:
    """What a write transaction on this database takes first, shared by every store of the
    same SQLite file in this process (the writer and the forwarder): waiting on it wakes at
    once when the other is done, where SQLite's busy handler would poll and sleep (up to 100
    ms a time). Other processes still meet the busy handler. Nothing for PostgreSQL."""
    if path is None:
        return nullcontext()
    key = os.path.realpath(path)
    with _GATES_LOCK:
        return _GATES.setdefault(key, threading.Lock())


def sqlite_path(database_url: str) -> Path | None:
    """The file behind a sqlite:/// URL, or None for other backends."""
    parts = urlsplit(database_url)
    if parts.scheme != "sqlite":
        return None
    return Path(parts.path[1:])


def describe_url(database_url: str) -> str:
    """The URL with any password hidden, safe for messages and logs."""
    parts = urlsplit(database_url)
    if parts.password is None:
        return database_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        event_payload=row.event_payload,
        received_at=row.received_at.replace(tzinfo=UTC),
    )


class Store:
    """The events table in one database. Thread-safe: each thread gets its own connection."""

    def __init__(self, database: peewee.Database, url: str) -> None:
        self.database = database
        self.url = url
        self.models = _bind(database)
        self.model = self.models.events
        self.is_sqlite = isinstance(database, peewee.SqliteDatabase)
        self.path = sqlite_path(url) if self.is_sqlite else None
        self._file_names = (str(self.path), f"{self.path}-wal")
        self._insert_sql_cache: dict[tuple[int, bool], str] = {}
        # The files the write path (or `open`) last opened on purpose; None after letting go
        # of replaced files, until the write path reopens the path.
        self._files: _Files | None = None
        self._local = threading.local()  # .conn, .files: this thread's connection and its files
        self.write_gate = _write_gate(self.path)

    @classmethod
    def open(
        cls,
        database_url: str,
        *,
        create: bool = False,
        busy_timeout_ms: int = 10_000,
        synchronous: str = "full",
    ) -> Store:
        """Connect to the database and check (or, with `create`, make) the events table.

        Without `create`, a SQLite file that does not exist is an error, not a new file.
        `synchronous="normal"` (SQLite) skips the fsync of each commit: only for writes
        whose loss costs a repeat, never an acknowledged event (the forwarder's settles).
        """
        where = describe_url(database_url)
        path = sqlite_path(database_url)
        kwargs: dict[str, Any] = {}
        if path is not None:
            if str(path) in ("", ":memory:"):
                raise DatabaseError(
                    f"{where}: in-memory SQLite is not supported (each connection would "
                    "see a different database); use a file, e.g. sqlite:///events.db"
                )
            if not create and not path.exists():
                raise DatabaseError(
                    f"{where}: database file {path} does not exist "
                    "(start `eventctl serve` to create it, or pass --database-url)"
                )
            kwargs["pragmas"] = {
                **SQLITE_PRAGMAS,
                "synchronous": synchronous,
                "busy_timeout": busy_timeout_ms,
            }
        else:
            given = parse_qs(urlsplit(database_url).query, keep_blank_values=True)
            kwargs.update((k, v) for k, v in PG_CONNECTION_DEFAULTS.items() if k not in given)
            if "options" not in given:
                kwargs["options"] = " ".join(f"-c {k}={v}" for k, v in PG_SESSION_SETTINGS.items())
        try:
            database = connect(database_url, **kwargs)
        except (RuntimeError, ValueError, ImportError) as exc:
            raise DatabaseError(f"{where}: cannot use this database URL: {exc}") from None
        store = cls(database, database_url)
        with store._errors(
            "cannot open the database", DatabaseError if path else DatabaseUnreachable
        ):
            database.connect(reuse_if_open=True)
        with store._errors("cannot open the database"):
            if create:
                database.create_tables(list(store.models), safe=True)
            elif not database.table_exists("events"):
                store.close()
                raise DatabaseError(f"{where}: no events table here; is this an eventctl database?")
            if path is not None:
                store._remember(owner=True)
        return store

    @contextmanager
    def _errors(self, doing: str, error: type[DatabaseError] = DatabaseError) -> Iterator[None]:
        try:
            yield
        except peewee.PeeweeException as exc:
            if isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
                self._drop_connection()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if cause := _cause(exc):
                message = f"{cause} ({message})"
            raise error(f"{describe_url(self.url)}: {doing}: {message}") from exc
        except OSError as exc:
            raise error(f"{describe_url(self.url)}: {doing}: {exc}") from exc

    def _paths(self) -> _Files:
        assert self.path is not None
        db, wal = self._file_names
        return _Files(_file_id(db), _file_id(wal))

    def _remember(self, *, owner: bool) -> None:
        """Record the files this thread's new connection has open (after a first read, so
        that its -wal file is open too)."""
        files = self._paths()
        self._local.conn = self.database.connection()  # type: ignore[no-untyped-call]
        self._local.files = files
        if owner:
            self._files = files

    def file_changed(self) -> bool:
        """Whether the SQLite file at the path is no longer the one last opened."""
        if self.path is None:
            return False
        with self._errors("cannot look at the database file"):
            return self._paths() != self._files

    def _current(self, *, writer: bool) -> None:
        """Make sure this thread's connection has the files at the path open (SQLite).

        A connection to files that were deleted or replaced is closed; the write path then
        reopens the path, and a reader refuses until the write path has done so.
        On PostgreSQL the write path connects here, if it is not connected: failing, it
        raises DatabaseUnreachable."""
        if self.path is None:
            if writer and self.database.is_closed():
                with self._errors("cannot connect to the database", DatabaseUnreachable):
                    self.database.connect()
            return
        local = self._local
        if (
            writer
            and not self.database.is_closed()
            and getattr(local, "checked", None) is self.database.connection()  # type: ignore[no-untyped-call]
        ):
            # The last commit on this connection was checked against the path (after it,
            # before anyone was answered); a change since then is caught after the next.
            return
        files = self._paths()
        if not self.database.is_closed():
            conn = self.database.connection()  # type: ignore[no-untyped-call]
            held = local.files if getattr(local, "conn", None) is conn else self._files
            if held == files:
                local.conn, local.files = conn, files
                return
            if writer:
                self._let_go(held, files)
            else:
                self._drop_connection()
        where = describe_url(self.url)
        if files != self._files:
            # A reader may read a new -wal file (SQLite makes one after the last connection
            # closed); a database file other than the one the write path opened, never.
            if not writer and (self._files is None or files.db != self._files.db):
                raise DatabaseError(
                    f"{where}: the database file {self.path} was deleted or replaced while in "
                    "use; not reading the old one (the next write reopens the path)"
                )
            # No connection to the old file is left on this thread to empty its log with.
            old = self._files
            if old is not None and _stale_wal(old, files):
                raise DatabaseError(
                    f"{where}: {self.path} was replaced while in use, and {self.path}-wal "
                    "still belongs to the old file; opening them together would corrupt "
                    f"it: stop eventctl and move {self.path}-wal and {self.path}-shm away"
                )
        self._reopen(writer=writer)

    def _let_go(self, held: _Files | None, files: _Files) -> None:
        """Close the write connection to files no longer at the path, leaving nothing of
        the old file that the path's new file could be paired with."""
        assert self.path is not None
        then = "closing the old file and reopening the path (nothing written to the old file "
        then += "since then is acknowledged)"
        if files.db is None:
            what = f"the database file {self.path} was deleted"
        elif held is None or files.db != held.db:
            what = f"the database file {self.path} was replaced by another file"
        else:
            what = f"the write-ahead log {self.path}-wal was deleted or replaced"
            then = "copying what it holds into the database file and starting a new log"
        log.warning(
            "%s: %s while in use; %s",
            describe_url(self.url),
            what,
            then,
        )
        if (
            held is not None
            and held.wal is not None
            and (_stale_wal(held, files) or files.db == held.db)
        ):
            # The old -wal is still at the path (a new file there would replay it), or the
            # old file is (our frames must reach it): copy every frame into the file we have
            # open and empty the log, which resets the shared index too.
            cursor = self.database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[no-untyped-call]
            busy = cursor.fetchone()[0]
            if busy:
                raise DatabaseError(
                    f"{describe_url(self.url)}: {what} while in use, and the old write-ahead "
                    "log cannot be emptied while another connection reads it; retrying on the "
                    "next write"
                )
        self._drop_connection()
        self._files = None

    def _reopen(self, *, writer: bool) -> None:
        """Connect this thread. The write path creates the table only where that is safe:
        the path is missing or an empty file."""
        assert self.path is not None
        fresh = writer and (not self.path.exists() or self.path.stat().st_size == 0)
        self.database.connect()
        try:
            if fresh:
                self.database.create_tables(list(self.models), safe=True)
            elif writer and not self.database.table_exists("events"):
                raise DatabaseError(
                    f"{describe_url(self.url)}: no events table in {self.path}; is this an "
                    "eventctl database? (nothing is stored in it)"
                )
            else:
                self.database.execute_sql("SELECT 1 FROM sqlite_master LIMIT 1")  # type: ignore[no-untyped-call]
        except BaseException:
            self._drop_connection()
            raise
        self._remember(owner=writer)

    def _check_unchanged(self) -> None:
        """After a commit: raise unless it went to the database file at the path. (When only
        the -wal changed, the commit is copied into that file and stands.)"""
        if self.path is None:
            return
        files = self._paths()
        held = self._local.files
        if files == held:
            self._local.checked = self.database.connection()  # type: ignore[no-untyped-call]
            return
        self._local.checked = None
        self._let_go(held, files)
        if held is None or files.db != held.db:
            raise DatabaseError(
                f"{describe_url(self.url)}: the database file {self.path} was deleted or "
                "replaced during the commit, which went to the old file (the next write "
                "reopens the path)"
            )

    def _begin(self) -> None:
        self.database.begin()

    def _rollback(self) -> None:
        """Roll back if a transaction is still open. A failed COMMIT (SQLITE_FULL, ...) may
        have rolled back already; the original error is the one worth reporting."""
        with suppress(peewee.PeeweeException):
            self.database.rollback()

    def _commit(self) -> None:
        try:
            self.database.commit()
        except BaseException:
            self._rollback()
            raise

    def connect_writer(self) -> None:
        """Open the write path's connection now (on the calling thread), so that the files
        it holds are known before the first write."""
        with self._errors("cannot open the database"):
            self._current(writer=True)

    def _drop_connection(self) -> None:
        """Forget this thread's connection after a connection-level error; the next call
        opens a new one, so the service recovers by itself once the database is back."""
        # close() forgets the connection even when closing it fails (it is dead already).
        with suppress(peewee.PeeweeException):
            self.database.close()

    def _insert_sql(self, rows: int, *, row_ids: bool = False) -> str:
        """`INSERT ... ON CONFLICT DO NOTHING RETURNING event_id[, id]` for `rows` rows, in
        this database's dialect; built once per row count by Peewee, then reused."""
        key = (rows, row_ids)
        sql = self._insert_sql_cache.get(key)
        if sql is None:
            model = self.model
            row = dict.fromkeys(INSERT_COLUMNS, "")
            query = model.insert_many([row] * rows).on_conflict_ignore()
            returned = (model.event_id, model.id) if row_ids else (model.event_id,)
            sql, _ = query.returning(*returned).sql()
            self._insert_sql_cache[key] = sql
        return sql

    def _outbox_sql(self, rows: int) -> str:
        key = (-rows, False)
        sql = self._insert_sql_cache.get(key)
        if sql is None:
            row = dict.fromkeys(OUTBOX_COLUMNS, 0)
            query = self.models.outbox.insert_many([row] * rows).on_conflict_ignore()
            sql, _ = query.sql()
            self._insert_sql_cache[key] = sql
        return sql

    def _insert_outbox(self, row_ids: dict[str, int], rows: dict[str, Row], fanout: Fanout) -> int:
        """Inside the events' transaction: one queued outbox entry per new event and route
        its type matches. The number of entries."""
        due = int(datetime.now(UTC).timestamp() * 1000)
        entries = [
            (route, row_id, QUEUED, 0, due, 0, "", "")
            for event_id, row_id in row_ids.items()
            for route in fanout(rows[event_id][1])
        ]
        for start in range(0, len(entries), OUTBOX_CHUNK):
            chunk = entries[start : start + OUTBOX_CHUNK]
            params = [value for entry in chunk for value in entry]
            self.database.execute_sql(self._outbox_sql(len(chunk)), params)  # type: ignore[no-untyped-call]
        return len(entries)

    def _rows(self, requests: Sequence[Sequence[Incoming]]) -> dict[str, Row]:
        """The row of each event id, as its first record gives it, ready for `_insert_rows`."""
        rows: dict[str, Row] = {}
        last_moment: object = _NO_MOMENT
        value: object = None
        for records in requests:
            for event_id, event, received_at in records:
                if event_id not in rows:
                    if received_at is not last_moment:  # a batch shares one arrival time
                        last_moment = received_at
                        value = self._db_time(received_at)
                    rows[event_id] = (event_id, event.event_type, event.event_payload, value)
        return rows

    def _insert_rows(self, rows: list[Row], row_ids: dict[str, int] | None = None) -> set[str]:
        """Insert `rows` (at most INSERT_CHUNK) unless their id is taken; the new ids (and,
        into `row_ids`, the row id of each)."""
        params = [value for row in rows for value in row]
        sql = self._insert_sql(len(rows), row_ids=row_ids is not None)
        cursor = self.database.execute_sql(sql, params)  # type: ignore[no-untyped-call]
        # Outside a transaction the statement commits as its last row is read, so a full
        # disk raises here, as the driver's own error unless Peewee maps it.
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
            if row_ids is None:
                return {event_id for (event_id,) in cursor.fetchall()}
            found = dict(cursor.fetchall())
        row_ids.update(found)
        return set(found)

    def _db_time(self, moment: datetime) -> object:
        """Naive UTC; as text for SQLite (whose default datetime adapter is deprecated)."""
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        if self.is_sqlite:
            return moment.isoformat(" ", "microseconds")[:26]  # without its "+00:00"
        return moment.replace(tzinfo=None)

    def insert(self, records: Sequence[Incoming]) -> set[str]:
        """Store all records in one transaction; return the event ids that were new.

        A record whose event id is already stored (or repeated earlier in `records`) with
        the same event_type and event_payload is skipped, so retrying a batch never stores
        an event twice. With different content it raises IdempotencyConflict and stores
        nothing.
        """
        [result] = self.insert_requests([records])
        if isinstance(result, IdempotencyConflict):
            raise result
        return result

    def insert_requests(
        self, requests: Sequence[Sequence[Incoming]], fanout: Fanout | None = None
    ) -> list[set[str] | IdempotencyConflict]:
        """Store several requests, each whole or not at all, committed before this returns:
        for each, the event ids that were new, or the IdempotencyConflict that refused it
        (and nothing of it is stored).

        A request conflicts when one of its event ids is stored, or taken by an earlier
        request, with a different event_type or event_payload. Found inside a transaction,
        so exact under concurrency; the transaction is then rolled back and redone without
        the refused requests.

        With `fanout` (event_type -> ids of the forwarding routes it matches), each new event
        gets one outbox entry per route in the same transaction: nothing is stored without
        its entries, and no entry exists for an event not stored.
        """
        with self._errors("cannot store events"), self.write_gate:
            self._current(writer=True)
            if fanout is not None:
                return self._insert_transaction(requests, fanout)
            if 0 < len(requests) <= INSERT_CHUNK and all(len(records) == 1 for records in requests):
                return self._insert_singles(requests)
            return self._insert_transaction(requests)

    def _insert_singles(
        self, requests: Sequence[Sequence[Incoming]]
    ) -> list[set[str] | IdempotencyConflict]:
        """Requests of one event each (the usual POST /event traffic), as one INSERT that
        commits by itself: no BEGIN, no COMMIT. A request whose event id was not new stored
        nothing, so nothing needs rolling back; those few are then settled exactly by
        `_insert_transaction` (a replay, or a conflict)."""
        new = self._insert_rows(list(self._rows(requests).values()))
        self._check_unchanged()
        if len(new) == len(requests):
            return [{records[0].event_id} for records in requests]
        results: list[set[str] | IdempotencyConflict] = []
        again: list[int] = []
        for position, ((event_id, _, _),) in enumerate(requests):
            if event_id in new:
                new.discard(event_id)  # a later request with this id is a replay or conflict
                results.append({event_id})
            else:
                results.append(set())
                again.append(position)
        settled = self._insert_transaction([requests[i] for i in again])
        for position, result in zip(again, settled, strict=True):
            results[position] = result
        return results

    def _insert_transaction(
        self, requests: Sequence[Sequence[Incoming]], fanout: Fanout | None = None
    ) -> list[set[str] | IdempotencyConflict]:
        """`insert_requests` in an explicit transaction, rolled back and redone without the
        requests found to conflict."""
        results: dict[int, set[str] | IdempotencyConflict] = {}
        pending = list(range(len(requests)))
        while pending:
            self._begin()
            row_ids: dict[str, int] | None = None if fanout is None else {}
            try:
                rows, new, refused = self._insert_checked([requests[i] for i in pending], row_ids)
                if not refused and fanout is not None and row_ids:
                    self._insert_outbox(row_ids, rows, fanout)
            except BaseException:
                self._rollback()
                raise
            if refused:
                self._rollback()
                for position, conflict in refused.items():
                    results[pending[position]] = conflict
                pending = [i for n, i in enumerate(pending) if n not in refused]
                continue
            self._commit()
            self._check_unchanged()
            for i in pending:
                mine = {r.event_id for r in requests[i]} & new
                new -= mine  # an id repeated in a later request is a replay there
                results[i] = mine
            pending = []
        return [results[i] for i in range(len(requests))]

    def _insert_checked(
        self, requests: Sequence[Sequence[Incoming]], row_ids: dict[str, int] | None = None
    ) -> tuple[dict[str, Row], set[str], dict[int, IdempotencyConflict]]:
        """Inside a transaction: insert every new id; return the rows, the new ids and the
        requests (by position) holding an id whose stored content differs from theirs."""
        rows = self._rows(requests)
        total = sum(len(records) for records in requests)
        values = list(rows.values())
        new: set[str] = set()
        for start in range(0, len(values), INSERT_CHUNK):
            chunk = values[start : start + INSERT_CHUNK]
            new.update(self._insert_rows(chunk, row_ids))
        if len(new) == total:  # every id new and none repeated: nothing to compare
            return rows, new, {}
        content = {event_id: (row[1], row[2]) for event_id, row in rows.items()}
        content.update(self._stored_content([i for i in rows if i not in new]))
        refused: dict[int, IdempotencyConflict] = {}
        for position, records in enumerate(requests):
            for index, (event_id, event, _) in enumerate(records):
                if content[event_id] != (event.event_type, event.event_payload):
                    refused[position] = IdempotencyConflict(event_id, index)
                    break
        return rows, new, refused

    def _stored_content(self, event_ids: list[str]) -> dict[str, tuple[str, str]]:
        model = self.model
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(event_ids), INSERT_CHUNK):
            chunk = event_ids[start : start + INSERT_CHUNK]
            query = model.select(model.event_id, model.event_type, model.event_payload).where(
                model.event_id.in_(chunk)
            )
            rows: list[Any] = list(query.tuples())
            found.update((event_id, (kind, payload)) for event_id, kind, payload in rows)
        return found

    def probe(self) -> None:
        """Check the write path: insert and delete a row in one committed transaction, so
        that the database really writes (a full disk or a read-only file fails here)."""
        model = self.model
        with self._errors("cannot store events"), self.write_gate:
            self._current(writer=True)
            self._begin()
            try:
                row_id = model.insert(
                    event_id=PROBE_EVENT_ID,
                    event_type="probe",
                    event_payload="",
                    received_at=self._db_time(datetime.now(UTC)),
                ).execute()
                model.delete().where(model.id == row_id).execute()
            except BaseException:
                self._rollback()
                raise
            self._commit()
            self._check_unchanged()

    def events(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        after_id: int | None = None,
        oldest_first: bool = False,
        **filters: Unpack[EventFilter],
    ) -> list[StoredEvent]:
        """Up to `limit` events that pass `filters` (see EventFilter), newest first (or
        oldest first), with `id` below `before_id` / above `after_id` (for stable paging
        and following)."""
        model = self.model
        order = model.id.asc() if oldest_first else model.id.desc()
        query = self._where(model.select().order_by(order).limit(limit), filters)
        if before_id is not None:
            query = query.where(model.id < before_id)
        if after_id is not None:
            query = query.where(model.id > after_id)
        with self._errors("cannot read events"):
            self._current(writer=False)
            return [_stored(row) for row in query]

    def _where(self, query: Any, filters: EventFilter) -> Any:
        model = self.model
        types = filters.get("types")
        since = filters.get("since")
        until = filters.get("until")
        q = filters.get("q")
        event_ids = filters.get("event_ids")
        if types:
            query = query.where(model.event_type.in_(list(types)))
        if since is not None:
            query = query.where(model.received_at >= _naive_utc(since))
        if until is not None:
            query = query.where(model.received_at < _naive_utc(until))
        if q:
            position = peewee.fn.instr if self.is_sqlite else peewee.fn.strpos
            query = query.where(position(model.event_payload, q) > 0)
        if event_ids:
            query = query.where(model.event_id.in_(list(event_ids)))
        return query

    def page(
        self,
        *,
        after_id: int,
        upto_id: int,
        limit: int,
        times: bool = False,
        **filters: Unpack[EventFilter],
    ) -> list[tuple[int, str, str, str, datetime | None]]:
        """(id, event_id, event_type, event_payload, received_at) of up to `limit` events
        with after_id < id <= upto_id that pass `filters`, oldest first: a page of a
        replay, read by primary key as plain tuples. received_at is None unless `times`."""
        model = self.model
        received = model.received_at if times else peewee.Value(None).alias("received_at")
        query = self._where(
            model.select(model.id, model.event_id, model.event_type, model.event_payload, received)
            .where(model.id > after_id, model.id <= upto_id)
            .order_by(model.id.asc())
            .limit(limit),
            filters,
        )
        with self._errors("cannot read events"):
            self._current(writer=False)
            rows = list(query.tuples())
        if times:
            return [(i, e, t, p, r.replace(tzinfo=UTC)) for i, e, t, p, r in rows]
        return rows

    def count_between(self, *, after_id: int, upto_id: int, **filters: Unpack[EventFilter]) -> int:
        """How many events with after_id < id <= upto_id pass `filters`."""
        model = self.model
        query = self._where(model.select().where(model.id > after_id, model.id <= upto_id), filters)
        with self._errors("cannot count events"):
            self._current(writer=False)
            return int(query.count())

    def nth_newest_id(self, n: int, *, upto_id: int, **filters: Unpack[EventFilter]) -> int | None:
        """The id of the n-th newest event with id <= upto_id that passes `filters`."""
        model = self.model
        query = self._where(
            model.select(model.id)
            .where(model.id <= upto_id)
            .order_by(model.id.desc())
            .offset(n - 1)
            .limit(1),
            filters,
        )
        with self._errors("cannot read events"):
            self._current(writer=False)
            value = query.scalar()
        return None if value is None else int(value)

    def stored_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids are stored."""
        model = self.model
        found: set[str] = set()
        with self._errors("cannot read events"):
            self._current(writer=False)
            for start in range(0, len(event_ids), INSERT_CHUNK):
                chunk = list(event_ids[start : start + INSERT_CHUNK])
                query = model.select(model.event_id).where(model.event_id.in_(chunk))
                found.update(row.event_id for row in query)
        return found

    def last_id(self) -> int:
        """The highest row id (0 for an empty table)."""
        model = self.model
        with self._errors("cannot read events"):
            self._current(writer=False)
            value = model.select(peewee.fn.MAX(model.id)).scalar()
        return int(value or 0)

    def event(self, event_id: str) -> StoredEvent | None:
        """The event with this event id, if stored."""
        model = self.model
        with self._errors("cannot read events"):
            self._current(writer=False)
            row = model.get_or_none(model.event_id == event_id)
        return None if row is None else _stored(row)

    def type_counts(
        self, since: datetime | None = None
    ) -> list[tuple[str, int, datetime, datetime]]:
        """(event_type, count, first received_at, last received_at), most frequent first."""
        model = self.model
        count = peewee.fn.COUNT(model.id)
        query = (
            model.select(
                model.event_type,
                count.alias("n"),
                peewee.fn.MIN(model.received_at).alias("first"),
                peewee.fn.MAX(model.received_at).alias("last"),
            )
            .group_by(model.event_type)
            .order_by(count.desc(), model.event_type)
            .tuples()
        )
        if since is not None:
            query = query.where(model.received_at >= _naive_utc(since))
        with self._errors("cannot read events"):
            self._current(writer=False)
            rows: list[Any] = list(query)
            return [(kind, n, _as_utc(first), _as_utc(last)) for kind, n, first, last in rows]

    def summary(self, *, start: datetime, bucket_seconds: int, buckets: int) -> Summary:
        """Counts over the whole table and per time bucket, from one snapshot.

        The per-type counts come from the event_type index (one group per type), the last
        id from the primary key, and the series from the received_at index over the window
        only: `buckets` buckets of `bucket_seconds` from `start` (a multiple of
        `bucket_seconds` in Unix seconds). The three queries run in one read transaction
        (SQLite: WAL snapshot; PostgreSQL: REPEATABLE READ), so they agree with each other
        and with `last_id`: a stream from there on misses and repeats nothing."""
        model = self.model
        count = peewee.fn.COUNT(peewee.SQL("*"))  # index-only where the database can
        per_type = (
            model.select(model.event_type, count)
            .group_by(model.event_type)
            .order_by(count.desc(), model.event_type)
            .tuples()
        )
        series = self._series(start, bucket_seconds, buckets)
        with self._errors("cannot summarize events"):
            self._current(writer=False)
            self._begin()
            try:
                if not self.is_sqlite:
                    self.database.execute_sql(  # type: ignore[no-untyped-call]
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                    )
                last = model.select(peewee.fn.MAX(model.id)).scalar()
                type_rows: list[Any] = list(per_type)
                slot_rows: list[Any] = list(series)
            finally:
                self._rollback()
        types = [(str(kind), int(n)) for kind, n in type_rows]
        return Summary(int(last or 0), types, _bucket_counts(slot_rows, buckets))

    def per_bucket(self, *, start: datetime, bucket_seconds: int, buckets: int) -> list[int]:
        """Events received in each of `buckets` buckets of `bucket_seconds` from `start`,
        oldest first, counted by the database over the received_at index."""
        with self._errors("cannot count events"):
            self._current(writer=False)
            rows: list[Any] = list(self._series(start, bucket_seconds, buckets))
        return _bucket_counts(rows, buckets)

    def _series(self, start: datetime, bucket_seconds: int, buckets: int) -> Any:
        """(bucket index, count) rows of the window, in this database's dialect."""
        model = self.model
        count = peewee.fn.COUNT(peewee.SQL("*"))
        seconds: Any
        if self.is_sqlite:
            seconds = peewee.fn.CAST(
                peewee.NodeList(
                    (peewee.fn.strftime("%s", model.received_at), peewee.SQL("AS INTEGER"))
                )
            )
        else:
            seconds = peewee.fn.CAST(
                peewee.NodeList(
                    (
                        peewee.fn.floor(peewee.fn.date_part("epoch", model.received_at)),
                        peewee.SQL("AS BIGINT"),
                    )
                )
            )
        slot = (seconds - int(start.timestamp())) / bucket_seconds
        end = start + timedelta(seconds=bucket_seconds * buckets)
        return (
            model.select(slot, count)
            .where((model.received_at >= _naive_utc(start)) & (model.received_at < _naive_utc(end)))
            .group_by(slot)
            .tuples()
        )

    def ids_since(self, since: datetime) -> list[tuple[str, datetime]]:
        """(event_id, received_at) of every row received at or after `since`."""
        model = self.model
        query = model.select(model.event_id, model.received_at).where(
            model.received_at >= _naive_utc(since)
        )
        with self._errors("cannot read events"):
            self._current(writer=False)
            return [(row.event_id, row.received_at.replace(tzinfo=UTC)) for row in query]

    def count(self) -> int:
        with self._errors("cannot count events"):
            self._current(writer=False)
            return int(self.model.select().count())

    def ping(self) -> None:
        """Raise DatabaseError unless the database answers a query on the events table."""
        with self._errors("not answering"):
            self._current(writer=False)
            with self.database.connection_context():
                list(self.model.select(self.model.id).limit(1))

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.database.is_closed():
            self.database.close()
