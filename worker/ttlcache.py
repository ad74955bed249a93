"""A bounded cache of values fetched at most once per key per TTL, never older than a caller allows."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Hashable

__all__ = ["TTLCache"]

_MISSING = object()


class TTLCache:
    """`get(key, fetch, max_age)`: a value whose fetch started less than `min(ttl, max_age)`
    seconds ago, else one `fetch()` shared by all callers that can use it.

    A value's age counts from when its fetch *started*: an answer from the origin
    is at least that recent. A caller joins a fetch in flight only if it started
    recently enough for it; with a TTL (or `max_age`) of 0 that means after the
    caller arrived, so a reader never gets an answer to a question asked before
    its request, and the callers arriving during one fetch share the next one.
    Fetches run as tasks owned by the cache: a caller that is cancelled stops
    waiting, the fetch goes on for the others. The least recently stored entries
    go first past `max_entries`, or past `max_bytes` of values as `size` weighs
    them; a value heavier than `max_bytes` alone is not kept. An expired entry is
    kept for `peek` (to tell what changed), unless `drop_expired`: then it is
    dropped when it expires (a timer of the running loop: the clock is in seconds).
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 1024, *, max_bytes: float = math.inf,
                 size: Callable[[Any], int] = lambda value: 0, drop_expired: bool = False) -> None:
        self._ttl, self._clock, self._max = ttl, clock, max_entries
        self._max_bytes, self._size, self._drop_expired = max_bytes, size, drop_expired
        # (fetch start, value, its size), in the order stored
        self._entries: OrderedDict[Hashable, tuple[float, Any, int]] = OrderedDict()
        self._flights: dict[Hashable, tuple[float, asyncio.Task]] = {}
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None  # drop_expired: when the first entry expires

    @property
    def bytes(self) -> int:
        """What the stored values weigh, as `size` says."""
        return self._bytes

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[Any]],
                  max_age: float | None = None) -> Any:
        age = self._ttl if max_age is None else min(self._ttl, max_age)
        oldest = self._clock() - age  # a value is fresh if its fetch started after this
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > oldest:
                return entry[1]
            flight = self._flights.get(key)
            if flight is None:
                flight = self._start(key, fetch)  # started after this caller arrived: always fresh
                return await asyncio.shield(flight[1])
            started, task = flight
            if started > oldest:
                return await asyncio.shield(task)
            await asyncio.wait([task])  # asked too early for this caller: wait for the next one

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The stored value, however old, without fetching."""
        entry = self._entries.get(key, _MISSING)
        return default if entry is _MISSING else entry[1]

    def invalidate(self, key: Hashable) -> None:
        """Expire the value: the next `get` fetches again (`peek` still sees it, to tell what
        changed, unless `drop_expired`); a fetch in flight is not stored when it lands."""
        entry = self._entries.get(key)
        if entry is not None and self._drop_expired:
            self._drop(key)
        elif entry is not None:
            self._entries[key] = (-math.inf, *entry[1:])
        self._flights.pop(key, None)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [task for _, task in self._flights.values()]
        self._flights.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> tuple[float, asyncio.Task]:
        flight = (self._clock(), asyncio.ensure_future(fetch()))
        self._flights[key] = flight
        flight[1].add_done_callback(lambda _: self._landed(key, flight))
        return flight

    def _landed(self, key: Hashable, flight: tuple[float, asyncio.Task]) -> None:
        started, task = flight
        error = None if task.cancelled() else task.exception()  # retrieved: waiters got it
        if self._flights.get(key) is not flight:
            return  # invalidated while in flight
        del self._flights[key]
        if task.cancelled() or error is not None:
            return
        value = task.result()
        size = self._size(value)
        if key in self._entries:
            self._drop(key)  # superseded, whether or not the new value is kept
        if size <= self._max_bytes:
            self._entries[key] = (started, value, size)
            self._bytes += size
        while len(self._entries) > self._max or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))
        if self._drop_expired:
            self._expire()

    def _drop(self, key: Hashable) -> None:
        self._bytes -= self._entries.pop(key)[2]

    def _expire(self) -> None:
        """Drop the expired entries from the first stored on, and be called again when the
        first one left expires. An entry may wait behind one stored before it that started
        later, but that one started before the entry was stored: every entry is gone at most
        `ttl` after it was stored."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._entries:
            key, (started, _, _) = next(iter(self._entries.items()))
            left = started + self._ttl - self._clock()
            if left > 0:
                if left < math.inf:
                    self._timer = asyncio.get_running_loop().call_later(left, self._expire)
                return
            self._drop(key)
