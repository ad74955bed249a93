"""`partNumber` on GET and HEAD: where part N of an object version lies, learned from the origin once.

A part is served as the byte range it covers, from the same chunks as any other
range of the object: the cache never holds a second copy of a part's bytes.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Mapping, NamedTuple

from p2pcache.errors import BadRequest, InvalidArgument, InvalidPartNumber, ObjectChanged
from p2pcache.objects import ObjectInfo
from p2pcache.origin import PartHead, S3Origin

from .ttlcache import TTLCache

__all__ = ["Parts", "PartSpan", "parse_part_number", "MAX_PART"]

log = logging.getLogger("p2pcache.parts")
MAX_PART = 10_000
_DIGITS = re.compile(r"[0-9]+")
_MULTIPART_ETAG = re.compile(r'"?[^"]*-([0-9]+)"?')


def parse_part_number(query: Mapping[str, str], has_range: bool) -> int | None:
    """The part a request asks for, or None; S3's 400s for a malformed one or one with a Range."""
    raw = query.get("partNumber")
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or len(raw.lstrip("0")) > 5 or not 1 <= int(raw) <= MAX_PART:
        raise InvalidArgument("Part number must be an integer between 1 and 10000, inclusive",
                              "partNumber", raw)
    if has_range:
        raise BadRequest("Cannot specify both Range header and partNumber query parameter")
    return int(raw)


class PartSpan(NamedTuple):
    """Part bytes `[start, stop)` of the object; `count` is None for an object not uploaded in parts."""

    start: int
    stop: int
    count: int | None


class Parts:
    """Part boundaries by object version (bucket, key, ETag): one HEAD ?partNumber=N per part.

    A version's parts never change, so boundaries are kept until `max_entries`
    pushes them out. Every HEAD is pinned to the version with `If-Match`; an
    origin that compares `If-Match` with the part's own ETag (moto does) is
    detected once and then checked the other way: the object's ETag is read
    again after the part's HEAD.
    """

    def __init__(self, origin: S3Origin, max_entries: int = 100_000) -> None:
        self._origin = origin
        self._spans = TTLCache(math.inf, max_entries=max_entries)
        self._per_part_etags = False

    async def close(self) -> None:
        await self._spans.close()

    async def span(self, info: ObjectInfo, n: int) -> PartSpan:
        """Where part `n` of version `info` lies; InvalidPartNumber beyond the last part."""
        if info.size == 0:  # nothing to ask: one empty part
            if n != 1:
                raise InvalidPartNumber(n, 1)
            return PartSpan(0, 0, None)
        first = await self._span(info, 1)
        count = first.count or 1
        if n > count:
            raise InvalidPartNumber(n, count)
        return first if n == 1 else await self._span(info, n)

    async def _span(self, info: ObjectInfo, n: int) -> PartSpan:
        return await self._spans.get((info.bucket, info.key, info.etag, n), lambda: self._resolve(info, n))

    async def _resolve(self, info: ObjectInfo, n: int) -> PartSpan:
        head = await self._head(info, n)
        start = head.start
        if start is None:  # only the part's length: it starts where the part before it stops
            start = 0 if n == 1 else await self._stop_of(info, n - 1)
        span = PartSpan(start, start + head.length, head.count)
        first = self._spans.peek((info.bucket, info.key, info.etag, 1))
        if (head.total not in (None, info.size) or span.stop > info.size
                or (first is not None and n > 1 and first.count != head.count)
                or (head.count is not None and n == head.count and span.stop != info.size)):
            raise ObjectChanged(f"s3://{info.bucket}/{info.key}: part {n} {head} does not fit "
                                f"the {info.size} bytes of {info.etag}")
        return span

    async def _stop_of(self, info: ObjectInfo, n: int) -> int:
        """Where part `n` stops, resolving the parts before it in order (each HEAD once)."""
        k = n
        while k > 1 and self._spans.peek((info.bucket, info.key, info.etag, k)) is None:
            k -= 1
        for i in range(k, n + 1):
            span = await self._span(info, i)
        return span.stop

    async def _head(self, info: ObjectInfo, n: int) -> PartHead:
        if not self._per_part_etags:
            try:
                return await self._origin.head_part(info.bucket, info.key, n, info.etag)
            except ObjectChanged:
                if (await self._origin.head(info.bucket, info.key)).etag != info.etag:
                    raise
                self._per_part_etags = True
                log.info("the origin compares If-Match with a part's own ETag: "
                         "part HEADs are checked by reading the object's ETag again")
        head = await self._origin.head_part(info.bucket, info.key, n, None)
        # The object's ETag is the same after the part's HEAD as before it: that HEAD saw
        # this version, unless the object changed twice in between and back to an upload
        # with this same ETag (for a multipart ETag, the same parts).
        suffix = _MULTIPART_ETAG.fullmatch(info.etag)
        if (await self._origin.head(info.bucket, info.key)).etag != info.etag or (
                suffix is not None and head.count is not None and head.count != int(suffix.group(1))):
            raise ObjectChanged(f"s3://{info.bucket}/{info.key} changed while its parts were read")
        return head
