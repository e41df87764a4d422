"""Group commit: one thread owns the write connection and commits what is waiting together.

Handlers hand over their records and wait; the writer takes everything queued (up to a
bound), inserts it in one transaction, commits, and only then wakes each waiting handler.
Each event is durable before it is acknowledged, at the cost of one commit per batch.
A request whose event id is stored with other content is refused (IdempotencyConflict)
without failing the others. `last_error` is the outcome of the latest commit or probe.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventctl.errors import DatabaseError, DatabaseUnreachable, EventctlError, IdempotencyConflict
from eventctl.store import Fanout, Incoming, Store

log = logging.getLogger("eventctl.consumer.writer")


class Overloaded(EventctlError):
    """The writer has as many events waiting as it may; the caller should retry later."""


@dataclass(eq=False, slots=True)
class _Submission:
    records: Sequence[Incoming]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[set[str]]
    stored: set[str] = field(default_factory=set)
    error: EventctlError | None = None
    probe: bool = False


_STOP = object()

CommitHook = Callable[[int, int, float, int, bool], None]
"""on_commit(events, new events, seconds, events still queued, failed)"""


class Writer:
    """Owns the store's write path. Start it, `await write(...)` from handlers, stop it.

    `max_batch` bounds the events in one transaction (a single submission larger than that
    is still committed whole), `max_wait` is how long the writer waits for more events
    after the first before committing (0: commit as soon as the last commit is done), and
    `max_queued` bounds the events handed over but not yet committed. With `fanout`, each
    new event's outbox entries are committed with it (see `Store.insert_requests`), and
    `on_stored` is called after each commit that stored a new event.
    """

    def __init__(  # noqa: PLR0913 - the store, its three bounds, and three hooks
        self,
        store: Store,
        *,
        max_batch: int = 1000,
        max_wait: float = 0.0,
        max_queued: int = 10_000,
        on_commit: CommitHook | None = None,
        fanout: Fanout | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.fanout = fanout
        self.on_stored = on_stored
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queued = max_queued
        self.on_commit = on_commit
        self.queued = 0  # events handed over and not yet settled; changed on the loop thread only
        self.last_error: DatabaseError | None = None  # of the latest commit or probe
        self._queue: queue.SimpleQueue[_Submission | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="eventctl-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit everything already handed over, then stop. Blocks until done."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    async def write(self, records: Sequence[Incoming]) -> set[str]:
        """Store `records` in one transaction; return the event ids that were new.

        Raises Overloaded when too many events wait already, DatabaseError when the commit
        failed, and IdempotencyConflict when an event id of `records` is stored with other
        content; in each case nothing of `records` was stored or acknowledged.
        """
        if self._closed:
            raise Overloaded("the server is shutting down")
        if self.queued and self.queued + len(records) > self.max_queued:
            raise Overloaded(f"{self.queued} events are waiting to be committed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[str]] = loop.create_future()
        self.queued += len(records)
        self._queue.put(_Submission(records, loop, future))
        try:
            return await future
        finally:
            self.queued -= len(records)

    async def probe(self) -> None:
        """Check the write path with a write that stores nothing (see `Store.probe`), in turn
        with the commits; raise DatabaseError if it fails. Updates `last_error`."""
        if self._closed:
            raise Overloaded("the server is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[str]] = loop.create_future()
        self._queue.put(_Submission((), loop, future, probe=True))
        await future

    def _take(self, first: _Submission) -> tuple[list[_Submission], bool]:
        """The first submission plus what else is waiting, up to the bounds; and whether to stop."""
        batch = [first]
        size = len(first.records)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                if self.max_wait > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Submission)
            batch.append(item)
            size += len(item.records)
        return batch, False

    def _run(self) -> None:
        stopping = False
        try:
            try:
                self.store.connect_writer()
            except DatabaseError as exc:
                log.error("%s", exc)
                self.last_error = exc
            while not stopping:
                item = self._queue.get()
                if item is _STOP:
                    break
                assert isinstance(item, _Submission)
                batch, stopping = self._take(item)
                try:
                    self._commit(batch)
                except Exception:
                    # A bug must not leave handlers waiting forever: refuse, and go on.
                    log.exception("the writer failed on a batch of %d requests", len(batch))
                    failure = DatabaseError("events not stored: internal error in the writer")
                    for sub in batch:
                        sub.error = failure
                    self._wake(batch)
        finally:
            self.store.close()

    def _commit(self, batch: list[_Submission]) -> None:
        probes = [sub for sub in batch if sub.probe]
        if len(probes) < len(batch):
            self._store([sub for sub in batch if not sub.probe])
        if probes:
            try:
                self.store.probe()
            except DatabaseError as exc:
                self.last_error = exc
                for sub in probes:
                    sub.error = exc
            else:
                self.last_error = None
            self._wake(probes)

    def _store(self, batch: list[_Submission]) -> None:
        started = time.perf_counter()
        size = sum(len(sub.records) for sub in batch)
        try:
            results = self.store.insert_requests([sub.records for sub in batch], self.fanout)
        except DatabaseError as exc:
            self.last_error = exc
            if self.on_commit:
                self.on_commit(size, 0, time.perf_counter() - started, self.queued, True)
            if len(batch) > 1 and not isinstance(exc, DatabaseUnreachable):
                log.warning("a commit of %d events failed (%s); retrying each request", size, exc)
                self._store_each(batch)
                return
            log.error("%s", exc)
            for sub in batch:
                sub.error = exc
        else:
            self.last_error = None
            new = 0
            for sub, result in zip(batch, results, strict=True):
                if isinstance(result, IdempotencyConflict):
                    sub.error = result
                else:
                    sub.stored = result
                    new += len(result)
            if self.on_commit:
                self.on_commit(size, new, time.perf_counter() - started, self.queued, False)
            if new and self.on_stored:
                self.on_stored()
        self._wake(batch)

    def _store_each(self, batch: list[_Submission]) -> None:
        """Store each request of a failed batch alone, until one finds the database
        unreachable: the rest get its error, as each would wait as long again for its own."""
        for position, sub in enumerate(batch):
            self._store([sub])
            rest = batch[position + 1 :]
            if rest and isinstance(sub.error, DatabaseUnreachable):
                for other in rest:
                    other.error = sub.error
                self._wake(rest)
                return

    def _wake(self, batch: list[_Submission]) -> None:
        loop = batch[0].loop
        by_loop: dict[asyncio.AbstractEventLoop, list[_Submission]] = {loop: batch}
        if any(sub.loop is not loop for sub in batch):  # a writer used from several event loops
            by_loop = {}
            for sub in batch:
                by_loop.setdefault(sub.loop, []).append(sub)
        for loop, subs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, subs)
            except RuntimeError:
                log.warning("a caller's event loop closed before its commit was acknowledged")


def _settle(submissions: list[_Submission]) -> None:
    for sub in submissions:
        if sub.future.done():
            continue
        if sub.error is not None:
            sub.future.set_exception(sub.error)
        else:
            sub.future.set_result(sub.stored)
