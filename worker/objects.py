"""Object identities (ETag, size) from S3 HEADs, cached for a short TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from p2pcache.errors import NotFound
from p2pcache.objects import ObjectInfo
from p2pcache.origin import S3Origin
from p2pcache.singleflight import SingleFlight

__all__ = ["ObjectCache"]


class ObjectCache:
    """One HEAD per object per TTL; a missing object is remembered as missing."""

    def __init__(self, origin: S3Origin, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000) -> None:
        self._origin = origin
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, ObjectInfo | NotFound]] = OrderedDict()
        self._heads = SingleFlight()

    async def get(self, bucket: str, key: str) -> ObjectInfo:
        entry = self._entries.get((bucket, key))
        if entry is None or entry[0] <= self._clock():
            entry = await self._heads.do((bucket, key), lambda: self._head(bucket, key))
        if isinstance(entry[1], NotFound):
            raise NotFound(str(entry[1]), code=entry[1].code)
        return entry[1]

    def invalidate(self, bucket: str, key: str) -> None:
        self._entries.pop((bucket, key), None)

    async def _head(self, bucket: str, key: str) -> tuple[float, ObjectInfo | NotFound]:
        try:
            result: ObjectInfo | NotFound = await self._origin.head(bucket, key)
        except NotFound as exc:
            result = exc
        entry = (self._clock() + self._ttl, result)
        self._entries[(bucket, key)] = entry
        self._entries.move_to_end((bucket, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return entry

    async def close(self) -> None:
        await self._heads.close()
