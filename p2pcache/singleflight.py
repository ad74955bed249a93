"""One in-flight call per key; later callers wait for the first one's result."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Hashable

__all__ = ["SingleFlight"]


class SingleFlight:
    """Runs each call as a task owned by this group, not by the caller.

    A caller that is cancelled (a client hung up) stops waiting, but the task
    goes on for the other waiters and to fill the cache. `close()` cancels and
    awaits every task still running, so none outlives its owner.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task] = {}
        self._waiters: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def waiting(self, key: Hashable) -> int:
        """Callers still waiting for `key`'s flight (none: nobody wants its result any more)."""
        return self._waiters.get(key, 0)

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[Any]]) -> Any:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._flights[key] = task
            task.add_done_callback(lambda t, key=key: self._done(key, t))
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]

    async def quiet(self, timeout: float) -> bool:
        """Until no flight runs, those that start meanwhile included (True), or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._flights:
            if (left := deadline - loop.time()) <= 0:
                return False
            await asyncio.wait(list(self._flights.values()), timeout=left)
        return True

    def _done(self, key: Hashable, task: asyncio.Task) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it; don't warn "never retrieved"

    async def close(self) -> None:
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
