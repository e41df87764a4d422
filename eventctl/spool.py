"""The propagator's durable record of the events it generated: a small SQLite file.

Every event is written here (pending) before its first send, and marked delivered or failed
when it settles, so a propagator that stops or is killed resends what is still pending, with
the same ids, on its next run; `eventctl verify` compares this record with the database.
It uses the standard library's sqlite3: it is a private queue, not the events store.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from eventctl.errors import EventctlError, ExitCode
from eventctl.events import Event

SETTLE_BATCH = 256
SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    event_payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at REAL NOT NULL,
    settled_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_result TEXT
);
CREATE INDEX IF NOT EXISTS spool_state ON spool (state, created_at);
"""


class SpoolError(EventctlError):
    """The spool file cannot be opened or written."""

    exit_code = ExitCode.DATABASE


class Entry(NamedTuple):
    """One generated event as the spool remembers it."""

    event_id: str
    event: Event
    state: str
    created_at: float
    settled_at: float | None
    attempts: int
    last_result: str | None


class Spool:
    """Pending, delivered and failed events of this propagator, in `path`.

    Writes are committed in WAL mode with synchronous=NORMAL: a record survives the
    propagator being killed (the case it exists for), not the machine losing power.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self.pending_count = self._count("pending")
        self._settled: list[tuple[str, float, int, str, str]] = []

    @classmethod
    def open(cls, path: Path) -> Spool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"{path}: cannot open the spool: {exc}") from None
        return cls(connection, path)

    def _count(self, state: str) -> int:
        (n,) = self.connection.execute(
            "SELECT count(*) FROM spool WHERE state = ?", (state,)
        ).fetchone()
        return int(n)

    def _commit(self, inserts: list[tuple[str, str, str, float]]) -> None:
        """One transaction: the new events and every settlement noted since."""
        settled, self._settled = self._settled, []
        try:
            with self.connection:
                self.connection.execute("BEGIN")
                self.connection.executemany(
                    "INSERT INTO spool (event_id, event_type, event_payload, state, "
                    "created_at) VALUES (?, ?, ?, 'pending', ?)",
                    inserts,
                )
                self.connection.executemany(
                    "UPDATE spool SET state = ?, settled_at = ?, attempts = attempts + ?, "
                    "last_result = ? WHERE event_id = ? AND state = 'pending'",
                    settled,
                )
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot write the spool: {exc}") from None

    def add(self, event_id: str, event: Event, created_at: float | None = None) -> None:
        """Record a new event as pending; committed before this returns."""
        self.add_many([(event_id, event)], created_at)

    def add_many(self, events: list[tuple[str, Event]], created_at: float | None = None) -> None:
        """Record new events as pending, in one transaction committed before this returns."""
        at = created_at or time.time()
        self._commit([(i, e.event_type, e.event_payload, at) for i, e in events])
        self.pending_count += len(events)

    def settle(self, event_id: str, state: str, attempts: int, result: str) -> None:
        """Note a pending event as delivered or failed. Settlements are committed with the
        next `add` (or `flush`): losing them to a crash only means the event is sent again,
        and the consumer stores a resent id once."""
        self._settled.append((state, time.time(), attempts, result, event_id))
        self.pending_count -= 1
        if len(self._settled) >= SETTLE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Commit the settlements noted so far."""
        if self._settled:
            self._commit([])

    def entries(self, *states: str) -> list[Entry]:
        """Entries in the given states (all when none), oldest first."""
        self.flush()
        sql = "SELECT * FROM spool"
        if states:
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
        rows = self.connection.execute(sql + " ORDER BY created_at, rowid", states).fetchall()
        return [
            Entry(row[0], Event(row[1], row[2]), row[3], row[4], row[5], row[6], row[7])
            for row in rows
        ]

    def requeue_failed(self) -> int:
        """Make failed events pending again; returns how many."""
        self.flush()
        cursor = self.connection.execute(
            "UPDATE spool SET state = 'pending', settled_at = NULL WHERE state = 'failed'"
        )
        self.pending_count += cursor.rowcount
        return cursor.rowcount

    def counts(self) -> dict[str, int]:
        self.flush()
        rows = self.connection.execute("SELECT state, count(*) FROM spool GROUP BY state")
        found = dict.fromkeys(("pending", "delivered", "failed"), 0)
        found.update({state: int(n) for state, n in rows})
        return found

    def close(self) -> None:
        self.flush()
        self.connection.close()
