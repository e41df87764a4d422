"""Group commit: one thread owns the write connection and commits what is waiting together.

Handlers hand over their records and wait; the writer takes everything queued (up to a
bound), inserts it in one transaction, commits, and only then wakes each waiting handler.
Each event is durable before it is acknowledged, at the cost of one commit per batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from eventctl.errors import DatabaseError, EventctlError
from eventctl.store import Incoming, Store

log = logging.getLogger("eventctl.writer")


class Overloaded(EventctlError):
    """The writer's queue is full; the caller should retry later."""


@dataclass(eq=False, slots=True)
class _Submission:
    records: Sequence[Incoming]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[set[str]]
    stored: set[str] = field(default_factory=set)
    error: DatabaseError | None = None


_STOP = object()


def _settle(submissions: list[_Submission]) -> None:
    for sub in submissions:
        if sub.future.done():
            continue
        if sub.error is not None:
            sub.future.set_exception(sub.error)
        else:
            sub.future.set_result(sub.stored)


class Writer:
    """Owns the store's write path. Start it, `await write(...)` from any handler, stop it."""

    def __init__(self, store: Store, *, max_batch: int = 1000, max_queue: int = 10_000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.Queue[_Submission | object] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eventctl-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit everything already handed over, then stop. Blocks until done."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def depth(self) -> int:
        return self._queue.qsize()

    async def write(self, records: Sequence[Incoming]) -> set[str]:
        """Store `records` in one transaction; return the event ids that were new.

        Raises Overloaded when the queue is full and DatabaseError when the commit failed;
        in both cases nothing of `records` was acknowledged.
        """
        if self._closed:
            raise Overloaded("the server is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[str]] = loop.create_future()
        try:
            self._queue.put_nowait(_Submission(records, loop, future))
        except queue.Full:
            raise Overloaded("the write queue is full") from None
        return await future

    def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                item = self._queue.get()
                if item is _STOP:
                    break
                assert isinstance(item, _Submission)
                batch = [item]
                size = len(item.records)
                while size < self.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    assert isinstance(item, _Submission)
                    batch.append(item)
                    size += len(item.records)
                self._commit(batch)
        finally:
            self.store.close()

    def _commit(self, batch: list[_Submission]) -> None:
        try:
            new = self.store.insert([r for sub in batch for r in sub.records])
        except DatabaseError as exc:
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); committing one by one", len(batch), exc)
                for sub in batch:
                    self._commit([sub])
                return
            log.error("%s", exc)
            batch[0].error = exc
        else:
            for sub in batch:
                sub.stored = {r.event_id for r in sub.records} & new
                new -= sub.stored
        by_loop: dict[asyncio.AbstractEventLoop, list[_Submission]] = {}
        for sub in batch:
            by_loop.setdefault(sub.loop, []).append(sub)
        for loop, subs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, subs)
            except RuntimeError:
                log.warning("a caller's event loop closed before its commit was acknowledged")
