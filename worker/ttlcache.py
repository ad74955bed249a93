"""A bounded cache of values fetched at most once per key per TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Hashable

from p2pcache.singleflight import SingleFlight

__all__ = ["TTLCache"]


class TTLCache:
    """`get(key, fetch)`: the cached value while fresh, else one `fetch()` shared by all
    callers. The least recently stored entries go first past `max_entries`."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 1024) -> None:
        self._ttl, self._clock, self._max = ttl, clock, max_entries
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._flights = SingleFlight()

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return await self._flights.do(key, lambda: self._fetch(key, fetch))

    def invalidate(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    async def close(self) -> None:
        await self._flights.close()

    async def _fetch(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        value = await fetch()
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return value
