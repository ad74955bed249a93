"""Object identities (ETag, size, stored headers) from S3 HEADs, cached for a short TTL."""

from __future__ import annotations

import time
from typing import Callable

from p2pcache.errors import NotFound
from p2pcache.objects import ObjectInfo
from p2pcache.origin import S3Origin

from .ttlcache import TTLCache

__all__ = ["ObjectCache"]


class ObjectCache:
    """One HEAD per object per TTL; a missing object is remembered as missing."""

    def __init__(self, origin: S3Origin, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000) -> None:
        self._origin = origin
        self._cache = TTLCache(ttl, clock, max_entries)

    async def get(self, bucket: str, key: str, max_age: float | None = None) -> ObjectInfo:
        """The identity from a HEAD sent less than `min(ttl, max_age)` seconds ago (0: after this call)."""
        result = await self._cache.get((bucket, key), lambda: self._head(bucket, key), max_age)
        if isinstance(result, NotFound):
            raise NotFound(str(result), code=result.code)
        return result

    def invalidate(self, bucket: str, key: str) -> None:
        self._cache.invalidate((bucket, key))

    async def _head(self, bucket: str, key: str) -> ObjectInfo | NotFound:
        try:
            return await self._origin.head(bucket, key)
        except NotFound as exc:
            return exc

    async def close(self) -> None:
        await self._cache.close()
