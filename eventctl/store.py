"""Event storage behind one database URL (SQLite or PostgreSQL), via Peewee.

No SQL dialect leaks out of this module. Every public method is blocking: call it from
a worker thread, never from the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import peewee
from playhouse.db_url import connect

from eventctl.errors import DatabaseError
from eventctl.events import MAX_EVENT_TYPE_LENGTH, Event

SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full"}
INSERT_CHUNK = 1000
INSERT_COLUMNS = ("event_id", "event_type", "event_payload", "received_at")
PG_CONNECT_TIMEOUT = 5


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


def _bind(database: peewee.Database) -> type[_EventModel]:
    """A model class bound to one database, so several stores can live in one process."""

    class EventRow(_EventModel):
        class Meta:
            table_name = "events"

    EventRow._meta.set_database(database)
    return EventRow


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
        self.model = _bind(database)
        self.is_sqlite = isinstance(database, peewee.SqliteDatabase)
        self._insert_sql_cache: dict[int, str] = {}

    @classmethod
    def open(
        cls, database_url: str, *, create: bool = False, busy_timeout_ms: int = 10_000
    ) -> Store:
        """Connect to the database and check (or, with `create`, make) the events table.

        Without `create`, a SQLite file that does not exist is an error, not a new file.
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
            kwargs["pragmas"] = {**SQLITE_PRAGMAS, "busy_timeout": busy_timeout_ms}
        else:
            query = urlsplit(database_url).query
            if "connect_timeout=" not in query:
                kwargs["connect_timeout"] = PG_CONNECT_TIMEOUT
            if "options=" not in query:
                kwargs["options"] = "-c synchronous_commit=on"
        try:
            database = connect(database_url, **kwargs)
        except (RuntimeError, ValueError, ImportError) as exc:
            raise DatabaseError(f"{where}: cannot use this database URL: {exc}") from None
        store = cls(database, database_url)
        with store._errors("cannot open the database"):
            database.connect(reuse_if_open=True)
            if create:
                database.create_tables([store.model], safe=True)
            elif not database.table_exists("events"):
                store.close()
                raise DatabaseError(f"{where}: no events table here; is this an eventctl database?")
        return store

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except peewee.PeeweeException as exc:
            if isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
                self._drop_connection()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"{describe_url(self.url)}: {doing}: {message}") from exc

    def _drop_connection(self) -> None:
        """Forget this thread's connection after a connection-level error; the next call
        opens a new one, so the service recovers by itself once the database is back."""
        # close() forgets the connection even when closing it fails (it is dead already).
        with suppress(peewee.PeeweeException):
            self.database.close()

    def _insert_sql(self, rows: int) -> str:
        """`INSERT ... ON CONFLICT DO NOTHING RETURNING event_id` for `rows` rows, in this
        database's dialect; built once per row count by Peewee, then reused."""
        sql = self._insert_sql_cache.get(rows)
        if sql is None:
            model = self.model
            row = dict.fromkeys(INSERT_COLUMNS, "")
            query = model.insert_many([row] * rows).on_conflict_ignore()
            sql, _ = query.returning(model.event_id).sql()
            self._insert_sql_cache[rows] = sql
        return sql

    def _db_time(self, moment: datetime) -> object:
        """Naive UTC; as text for SQLite (whose default datetime adapter is deprecated)."""
        naive = moment.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.is_sqlite else naive

    def insert(self, records: Sequence[Incoming]) -> set[str]:
        """Store all records in one transaction; return the event ids that were new.

        A record whose event id is already stored (or repeated earlier in `records`) is
        skipped, so retrying a batch never stores an event twice.
        """
        rows: dict[str, tuple[str, str, str, object]] = {}
        last_moment: datetime | None = None
        value: object = None
        for event_id, event, received_at in records:
            if event_id not in rows:
                if received_at is not last_moment:  # a batch shares one arrival time
                    last_moment = received_at
                    value = self._db_time(received_at)
                rows[event_id] = (event_id, event.event_type, event.event_payload, value)
        values = list(rows.values())
        stored: set[str] = set()
        with self._errors("cannot store events"), self.database.atomic():
            for start in range(0, len(values), INSERT_CHUNK):
                chunk = values[start : start + INSERT_CHUNK]
                params = [value for row in chunk for value in row]
                sql = self._insert_sql(len(chunk))
                cursor = self.database.execute_sql(sql, params)  # type: ignore[no-untyped-call]
                stored.update(event_id for (event_id,) in cursor.fetchall())
        return stored

    def events(
        self,
        *,
        limit: int,
        types: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        q: str | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        oldest_first: bool = False,
    ) -> list[StoredEvent]:
        """Up to `limit` events, newest first (or oldest first), filtered by any of: event
        types, received_at in [since, until), a payload substring (case-sensitive), and
        `id` below `before_id` / above `after_id` (for stable paging and following)."""
        model = self.model
        order = model.id.asc() if oldest_first else model.id.desc()
        query = model.select().order_by(order).limit(limit)
        if types:
            query = query.where(model.event_type.in_(list(types)))
        if since is not None:
            query = query.where(model.received_at >= _naive_utc(since))
        if until is not None:
            query = query.where(model.received_at < _naive_utc(until))
        if q:
            position = peewee.fn.instr if self.is_sqlite else peewee.fn.strpos
            query = query.where(position(model.event_payload, q) > 0)
        if before_id is not None:
            query = query.where(model.id < before_id)
        if after_id is not None:
            query = query.where(model.id > after_id)
        with self._errors("cannot read events"):
            return [_stored(row) for row in query]

    def last_id(self) -> int:
        """The highest row id (0 for an empty table)."""
        model = self.model
        with self._errors("cannot read events"):
            value = model.select(peewee.fn.MAX(model.id)).scalar()
        return int(value or 0)

    def event(self, event_id: str) -> StoredEvent | None:
        """The event with this event id, if stored."""
        model = self.model
        with self._errors("cannot read events"):
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
            rows: list[Any] = list(query)
            return [(kind, n, _as_utc(first), _as_utc(last)) for kind, n, first, last in rows]

    def ids_since(self, since: datetime) -> list[tuple[str, datetime]]:
        """(event_id, received_at) of every row received at or after `since`."""
        model = self.model
        query = model.select(model.event_id, model.received_at).where(
            model.received_at >= _naive_utc(since)
        )
        with self._errors("cannot read events"):
            return [(row.event_id, row.received_at.replace(tzinfo=UTC)) for row in query]

    def count(self) -> int:
        with self._errors("cannot count events"):
            return int(self.model.select().count())

    def ping(self) -> None:
        """Raise DatabaseError unless the database answers a query on the events table."""
        with self._errors("not answering"), self.database.connection_context():
            list(self.model.select(self.model.id).limit(1))

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.database.is_closed():
            self.database.close()
