"""A virtual clock for asyncio code that takes `clock` and `sleep`: no test really waits."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class VirtualClock:
    """Time moves only when every task is waiting on `sleep`: then it jumps to the next wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._order), future))
        await future

    async def run(self, awaitable: Awaitable[T], *, limit: float = 1e6) -> T:
        """Drive `awaitable` to completion, advancing time whenever everything is asleep."""
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            for _ in range(100):
                await asyncio.sleep(0)
                if task.done():
                    break
            if task.done():
                break
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                raise AssertionError("deadlock: nothing is sleeping and the task is not done")
            wake, _, future = heapq.heappop(self._sleepers)
            if wake > limit:
                raise AssertionError(f"virtual time ran past {limit}")
            self.now = max(self.now, wake)
            future.set_result(None)
        return task.result()
