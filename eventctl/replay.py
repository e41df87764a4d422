"""`eventctl replay`'s source: stored events, or an export of them, read again in pages,
oldest first, and paced into the propagator's plan.

The events come from a Store: the database itself, or an export file (what `list-events
--output ndjson|json` writes) staged into a temporary SQLite file first, every line checked
before anything is sent. A replay reads a snapshot, the events with ids up to the last one
stored when it began, by primary key, PAGE_SIZE at a time: memory stays the same whatever
the number of events, and a replay that is resumed reads the same snapshot again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

import orjson
import peewee

from eventctl.errors import DatabaseError, EventctlError, ExitCode, InvalidEvent
from eventctl.events import Event, new_event_id, validate_event
from eventctl.propagator.propagator import Pages, Scheduled
from eventctl.store import EventFilter, Store, describe_url, sqlite_path

PAGE_SIZE = 1000
STAGE_CHUNK = 1000
MAX_EVENT_ID_LENGTH = 255
EXPORT_FIELDS = frozenset({"id", "event_id", "event_type", "event_payload", "received_at"})
SHOWN_IDS = 3

Row = tuple[int, str, str, str, datetime | None]
PacingKind = Literal["flat", "rate", "interval", "speed"]


class ReplayInputError(EventctlError):
    """The events to replay cannot be had: an unknown id, an empty selection, a bad file."""

    exit_code = ExitCode.INPUT


@dataclass(frozen=True)
class Selection:
    """Which stored events a replay sends, as `list-events` selects them; `limit`: the
    newest N of them (still sent oldest first). `since` and `until` are moments; the flags
    as typed (`1h`, an ISO time) are `window_flags`, which the replay's key is made of."""

    types: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None
    event_ids: tuple[str, ...] = ()
    limit: int | None = None
    window_flags: tuple[str | None, str | None] = (None, None)

    def filters(self) -> EventFilter:
        return {
            "types": self.types,
            "since": self.since,
            "until": self.until,
            "q": self.q,
            "event_ids": self.event_ids,
        }

    def key(self) -> list[Any]:
        return [sorted(self.types), *self.window_flags, self.q, sorted(self.event_ids), self.limit]

    def window(self) -> str:
        """since and until, as the run keeps them (JSON)."""
        moments = (self.since, self.until)
        return json.dumps([None if m is None else m.isoformat() for m in moments])

    def in_window(self, window: str | None) -> Selection:
        """This selection in a window kept by `window()` (None: as it is)."""
        if window is None:
            return self
        since, until = (
            None if m is None else datetime.fromisoformat(m) for m in json.loads(window)
        )
        return dataclasses.replace(self, since=since, until=until)

    def describe(self) -> str:
        parts = [f"--type {t}" for t in self.types]
        parts += [f"--since {self.since.isoformat()}"] if self.since else []
        parts += [f"--until {self.until.isoformat()}"] if self.until else []
        parts += [f"--q {self.q!r}"] if self.q else []
        parts += [f"--id {i}" for i in self.event_ids[:SHOWN_IDS]]
        if len(self.event_ids) > SHOWN_IDS:
            parts.append(f"(and {len(self.event_ids) - SHOWN_IDS} more --id)")
        parts += [f"--limit {self.limit}"] if self.limit else []
        return " ".join(parts) or "no filter"


class Pacing(NamedTuple):
    """When each replayed event is due: `flat` (at once, as --max-in-flight allows), at a
    `rate` (events/s), every `interval` seconds, or at `speed` X: the recorded gaps between
    events divided by X. Due times count from the start, so nothing drifts."""

    kind: PacingKind = "flat"
    value: float = 0.0

    @property
    def needs_times(self) -> bool:
        return self.kind == "speed"

    @property
    def interval(self) -> float:
        """The gap between events, where there is one fixed gap (else 0)."""
        if self.kind == "rate":
            return 1 / self.value
        return self.value if self.kind == "interval" else 0.0

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat out"
        if self.kind == "speed":
            return f"--speed {self.value:g}: recorded gaps / {self.value:g}"
        return f"{self.interval:g} s ({1 / self.interval:g}/s)"

    def schedule(self, pages: Iterator[list[Row]], new_id: Callable[[], str] | None) -> Pages:
        """The propagator's pages: each row with the id it goes out with (its own, or
        `new_id()`'s) and its due time."""
        k = 0
        anchor: datetime | None = None
        for rows in pages:
            page = []
            for position, event_id, event_type, payload, received_at in rows:
                if self.kind == "speed":
                    assert received_at is not None
                    anchor = anchor or received_at
                    due = (received_at - anchor).total_seconds() / self.value
                else:
                    due = k * self.interval
                sent_id = event_id if new_id is None else new_id()
                page.append(Scheduled(sent_id, Event(event_type, payload), due, position))
                k += 1
            yield page


class Bounds(NamedTuple):
    """A replay's snapshot: events with after_id < id <= upto_id that pass the selection."""

    after_id: int
    upto_id: int
    total: int


class Replay:
    """The events of `store` that `selection` picks, as one replay to `to` sends them."""

    def __init__(  # noqa: PLR0913 - the inputs of a replay, as its flags give them
        self,
        store: Store,
        selection: Selection,
        *,
        name: str,
        identity: str,
        to: str,
        new_ids: bool = False,
        staged: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.store = store
        self.selection = selection
        self.name = name
        self.to = to
        self.new_ids = new_ids
        self._staged = staged
        parts = [identity, selection.key(), to, new_ids]
        self.key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    @classmethod
    def from_database(
        cls, database_url: str, selection: Selection, *, to: str, new_ids: bool = False
    ) -> Replay:
        store = Store.open(database_url)
        path = sqlite_path(database_url)
        # the same file named from another directory is the same source
        identity = database_url if path is None else f"sqlite:{path.resolve()}"
        name = describe_url(database_url)
        return cls(store, selection, name=name, identity=identity, to=to, new_ids=new_ids)

    @classmethod
    def from_file(
        cls,
        path: Path,
        selection: Selection,
        *,
        needs_times: bool,
        to: str,
        new_ids: bool = False,
    ) -> Replay:
        """Stage the export `path` into a temporary SQLite file, checking every line."""
        try:
            found = path.stat()
            staged = tempfile.TemporaryDirectory(prefix="eventctl-replay-")
        except OSError as exc:
            raise ReplayInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            store = Store.open(f"sqlite:///{Path(staged.name) / 'events.db'}", create=True)
            _stage(path, store, needs_ids=not new_ids, needs_times=needs_times)
        except peewee.PeeweeException as exc:
            staged.cleanup()
            raise DatabaseError(
                f"{path}: cannot copy into a temporary file in {Path(staged.name).parent}: {exc}"
            ) from None
        except BaseException:
            staged.cleanup()
            raise
        identity = f"{path.resolve()}:{found.st_size}:{found.st_mtime_ns}"
        return cls(
            store,
            selection,
            name=str(path),
            identity=identity,
            to=to,
            new_ids=new_ids,
            staged=staged,
        )

    def keep_window(self, window: str | None) -> None:
        """Select in the time window a resumed run began with (None: keep this one)."""
        self.selection = self.selection.in_window(window)

    def bounds(self, upto_id: int | None = None) -> Bounds:
        """The snapshot ending at `upto_id` (None: the last event stored now); raises
        ReplayInputError for an unknown --id or a selection that matches nothing."""
        store, selection = self.store, self.selection
        if upto_id is None:
            upto_id = store.last_id()
        if selection.event_ids:
            found = store.stored_ids(selection.event_ids)
            missing = [i for i in selection.event_ids if i not in found]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise ReplayInputError(f"{self.name}: no event with event_id {missing[0]}{more}")
        after_id = 0
        if selection.limit is not None:
            nth = store.nth_newest_id(selection.limit, upto_id=upto_id, **selection.filters())
            after_id = 0 if nth is None else nth - 1
        total = store.count_between(after_id=after_id, upto_id=upto_id, **selection.filters())
        if total == 0:
            raise ReplayInputError(
                f"{self.name}: no events match ({self.selection.describe()}); nothing to replay"
            )
        return Bounds(after_id, upto_id, total)

    def rows(
        self, bounds: Bounds, after: int | None = None, *, times: bool = False
    ) -> Iterator[list[Row]]:
        """The snapshot's rows after position `after`, oldest first, a page at a time."""
        last = max(bounds.after_id, after or 0)
        while True:
            page = self.store.page(
                after_id=last,
                upto_id=bounds.upto_id,
                limit=PAGE_SIZE,
                times=times,
                **self.selection.filters(),
            )
            if not page:
                return
            yield page
            last = page[-1][0]

    def pages(
        self,
        pacing: Pacing,
        bounds: Bounds,
        after: int | None = None,
        *,
        new_id: Callable[[], str] = new_event_id,
    ) -> Pages:
        """What the propagator sends: the rows after `after`, paced."""
        rows = self.rows(bounds, after, times=pacing.needs_times)
        return pacing.schedule(rows, new_id if self.new_ids else None)

    def first(self, bounds: Bounds, n: int) -> list[Row]:
        return self.store.page(
            after_id=bounds.after_id,
            upto_id=bounds.upto_id,
            limit=n,
            times=True,
            **self.selection.filters(),
        )

    def close(self) -> None:
        self.store.close()
        if self._staged is not None:
            self._staged.cleanup()


def _stage(path: Path, store: Store, *, needs_ids: bool, needs_times: bool) -> None:
    """Copy the export file's events into `store`, each row checked; ReplayInputError names
    the line (or, in a JSON array, the item) of the first bad one."""
    model = store.model
    fields = [model.id, model.event_id, model.event_type, model.event_payload, model.received_at]
    chunk: list[tuple[str, tuple[Any, ...]]] = []
    with_ids: bool | None = None

    def flush() -> None:
        try:
            with store.database.atomic():
                model.insert_many([row for _, row in chunk], fields=fields).execute()
        except peewee.IntegrityError:
            _find_repeat(store, fields, chunk)
        chunk.clear()

    store.database.connect(reuse_if_open=True)
    for where, item in _items(path):
        row = _export_row(where, item, needs_ids=needs_ids, needs_times=needs_times)
        has_id = row[0] is not None
        if with_ids is None:
            with_ids = has_id
        elif has_id != with_ids:
            raise ReplayInputError(
                f"{where}: {'an' if has_id else 'no'} id, unlike the lines before"
            )
        chunk.append((where, row))
        if len(chunk) >= STAGE_CHUNK:
            flush()
    if chunk:
        flush()


def _find_repeat(store: Store, fields: list[Any], chunk: list[tuple[str, tuple[Any, ...]]]) -> None:
    for where, row in chunk:
        try:
            with store.database.atomic():
                store.model.insert_many([row], fields=fields).execute()
        except peewee.IntegrityError:
            raise ReplayInputError(
                f"{where}: event_id {row[1]} or id {row[0]} appears earlier in the file"
            ) from None
    raise AssertionError("a chunk failed, but none of its rows")  # pragma: no cover


def _items(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed value) of each event in an NDJSON file or a JSON array (read whole).
    Read front to back once, so a pipe (`--from-file /dev/stdin`) works too."""
    try:
        with path.open("rb") as file:
            yield from _parsed(path, file)
    except OSError as exc:
        raise ReplayInputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parsed(path: Path, file: BinaryIO) -> Iterator[tuple[str, Any]]:
    skipped = b""
    while (byte := file.read(1)) and byte.isspace():
        skipped += byte
    if byte == b"[":
        text = skipped + byte + file.read()
        try:
            values = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ReplayInputError(f"{path} line {exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(values, list):
            raise ReplayInputError(f"{path}: not a JSON array of events")
        for index, value in enumerate(values, 1):
            yield f"{path} item {index}", value
        return
    first = skipped + byte + file.readline()
    for number, line in enumerate(itertools.chain(first.splitlines(keepends=True), file), 1):
        if not line.strip():
            continue
        try:
            yield f"{path} line {number}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ReplayInputError(f"{path} line {number}: not valid JSON: {exc.msg}") from None


def _export_row(where: str, item: Any, *, needs_ids: bool, needs_times: bool) -> tuple[Any, ...]:
    """(id or None, event_id, event_type, event_payload, received_at) of one exported event."""
    if not isinstance(item, dict):
        raise ReplayInputError(f"{where}: not a JSON object")
    unknown = sorted(set(item) - EXPORT_FIELDS)
    if unknown:
        raise ReplayInputError(f"{where}: unknown field {unknown[0]!r}")
    try:
        event = validate_event({k: item[k] for k in ("event_type", "event_payload") if k in item})
    except InvalidEvent as exc:
        raise ReplayInputError(f"{where}: {exc}") from None
    row_id = item.get("id")
    if row_id is not None and (
        not isinstance(row_id, int) or isinstance(row_id, bool) or row_id < 1
    ):
        raise ReplayInputError(f"{where}: id must be a positive integer")
    event_id = item.get("event_id")
    if event_id is None and needs_ids:
        raise ReplayInputError(f"{where}: no event_id (--new-ids sends events without one)")
    if event_id is not None and not (
        isinstance(event_id, str)
        and 0 < len(event_id) <= MAX_EVENT_ID_LENGTH
        and event_id.isascii()
        and event_id.isprintable()
    ):
        raise ReplayInputError(f"{where}: event_id must be 1-255 printable ASCII characters")
    received = item.get("received_at")
    if received is None:
        if needs_times:
            raise ReplayInputError(f"{where}: no received_at, which --speed needs")
        at = datetime(1970, 1, 1)
    else:
        try:
            moment = datetime.fromisoformat(received) if isinstance(received, str) else None
        except ValueError:
            moment = None
        if moment is None:
            raise ReplayInputError(f"{where}: received_at must be an ISO 8601 time")
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        at = moment
    # with --new-ids the stored id is never sent, so two lines may share one
    staged_id = event_id if needs_ids else os.urandom(16).hex()
    return (row_id, staged_id, event.event_type, event.event_payload, at)


@contextlib.contextmanager
def opened(replay: Replay) -> Iterator[Replay]:
    try:
        yield replay
    finally:
        replay.close()
