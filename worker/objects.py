"""Object identities (ETag, size, stored headers) from S3 HEADs, cached for a short TTL."""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from p2pcache.errors import NotFound
from p2pcache.objects import ObjectInfo
from p2pcache.origin import S3Origin, not_found

from .ttlcache import TTLCache

__all__ = ["ObjectCache", "changed"]


class Missing(str):
    """A missing object as remembered: S3's code alone (`NoSuchKey`, `NoSuchBucket`), one shared
    string per code. The NotFound itself held its traceback and botocore's error (17-34 KiB), so
    a client asking for names that do not exist grew a worker by that much per name."""


MISSING = {code: Missing(code) for code in ("NoSuchKey", "NoSuchBucket")}


class ObjectCache:
    """One HEAD per object per TTL; a missing object is remembered as missing (`Missing`).

    A HEAD that finds another version than the one remembered (or none, or one
    where none was) calls `on_change(bucket, key)` before any caller gets its
    answer: the serving processes must drop their older copies first
    (worker/generation.py). Every version a HEAD finds is given to `on_version` (awaited
    too): what the worker holds of other versions is stale, a first sight after a restart
    included."""

    def __init__(self, origin: S3Origin, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000, on_change: Callable[[str, str], None] = lambda bucket, key: None,
                 on_version: Callable[[ObjectInfo], Awaitable[None]] | None = None) -> None:
        self._origin = origin
        self._cache = TTLCache(ttl, clock, max_entries)
        self._on_change, self._on_version = on_change, on_version

    async def get(self, bucket: str, key: str, max_age: float | None = None) -> ObjectInfo:
        """The identity from a HEAD sent less than `min(ttl, max_age)` seconds ago (0: after this call)."""
        result = await self._cache.get((bucket, key), lambda: self._head(bucket, key), max_age)
        if isinstance(result, Missing):
            raise not_found(bucket, key, result)
        return result

    def peek(self, bucket: str, key: str) -> ObjectInfo | None:
        """The version the last HEAD found, however old; None if it found none or there was none."""
        found = self._cache.peek((bucket, key))
        return found if isinstance(found, ObjectInfo) else None

    def invalidate(self, bucket: str, key: str) -> None:
        """Ask S3 at the next `get` (what it answers is still compared with what was remembered)."""
        self._cache.invalidate((bucket, key))

    async def _head(self, bucket: str, key: str) -> ObjectInfo | Missing:
        try:
            found: ObjectInfo | Missing = await self._origin.head(bucket, key)
        except NotFound as exc:
            found = MISSING.get(exc.code) or Missing(exc.code)
        # Here, inside the fetch: its callers resume only after this returns.
        if changed(self._cache.peek((bucket, key)), found):
            self._on_change(bucket, key)
        if self._on_version is not None and isinstance(found, ObjectInfo):
            await self._on_version(found)
        return found

    async def close(self) -> None:
        await self._cache.close()


def changed(before: ObjectInfo | Missing | None, now: ObjectInfo | Missing) -> bool:
    """Whether a HEAD's answer `now` is another version than the one remembered, `before`.

    None: nothing remembered, a first sight (or an entry pushed out past `max_entries`: the
    serving processes' copies of it then last out their half TTL). The version is the ETag, size
    and Last-Modified (a metadata rewrite keeps the ETag, not the date); the other stored
    headers (x-amz-restore, ...) change without a new version."""
    if before is None:
        return False
    if isinstance(before, Missing) or isinstance(now, Missing):
        return isinstance(before, Missing) != isinstance(now, Missing)
    return (before.etag, before.size, before.last_modified) != (now.etag, now.size, now.last_modified)
