"""Part boundaries from the origin's part HEADs, for the ways S3 servers answer them.

moto (the S3 server of the other tests) sends only a part's length and compares
If-Match with the part's own ETag; AWS sends Content-Range and compares it with
the object's. AWS cannot run here, so this origin answers as AWS documents.
"""

from __future__ import annotations

import pytest

from p2pcache.errors import BadRequest, InvalidArgument, InvalidPartNumber, ObjectChanged
from p2pcache.objects import ObjectInfo
from p2pcache.origin import PartHead
from worker.parts import Parts, PartSpan, parse_part_number

PARTS = [100, 100, 7]


class Origin:
    def __init__(self, parts=PARTS, etag='"abc-3"', content_range=True, per_part_etag=False) -> None:
        self.parts, self.etag, self.content_range, self.per_part_etag = parts, etag, content_range, per_part_etag
        self.calls: list[tuple] = []
        self.change_after_part = None  # the ETag the object has after the next part HEAD

    async def head_part(self, bucket, key, n, etag) -> PartHead:
        self.calls.append(("part", n, etag))
        if etag is not None and (self.per_part_etag or etag != self.etag):
            raise ObjectChanged("412")
        if n > len(self.parts):
            raise InvalidPartNumber(n, 0)
        if self.change_after_part:
            self.etag = self.change_after_part
        start, size = sum(self.parts[:n - 1]), sum(self.parts)
        return PartHead(self.parts[n - 1], start if self.content_range else None,
                        size if self.content_range else None, len(self.parts) if len(self.parts) > 1 else None)

    async def head(self, bucket, key) -> ObjectInfo:
        self.calls.append(("head",))
        return ObjectInfo(bucket, key, self.etag, sum(self.parts))


def info(origin: Origin) -> ObjectInfo:
    return ObjectInfo("b", "k", origin.etag, sum(origin.parts))


async def test_content_range_answers_take_one_pinned_head_per_part():
    origin = Origin()
    parts = Parts(origin)
    assert await parts.span(info(origin), 3) == PartSpan(200, 207, 3)
    assert origin.calls == [("part", 1, '"abc-3"'), ("part", 3, '"abc-3"')]
    assert await parts.span(info(origin), 1) == PartSpan(0, 100, 3)
    assert await parts.span(info(origin), 3) == PartSpan(200, 207, 3)
    assert len(origin.calls) == 2  # a version's parts are asked for once
    with pytest.raises(InvalidPartNumber) as exc:
        await parts.span(info(origin), 4)
    assert (exc.value.status, exc.value.details) == (416, {"PartNumberRequested": "4", "ActualPartCount": "3"})
    await parts.close()


async def test_length_only_answers_add_up_the_parts_before():
    origin = Origin(content_range=False)
    parts = Parts(origin)
    assert await parts.span(info(origin), 3) == PartSpan(200, 207, 3)
    assert [c[1] for c in origin.calls] == [1, 3, 2]
    assert await parts.span(info(origin), 2) == PartSpan(100, 200, 3) and len(origin.calls) == 3
    await parts.close()


async def test_a_single_part_object_has_part_1_only():
    origin = Origin(parts=[50], etag='"plain"')
    parts = Parts(origin)
    assert await parts.span(info(origin), 1) == PartSpan(0, 50, None)
    with pytest.raises(InvalidPartNumber):
        await parts.span(info(origin), 2)
    assert await parts.span(ObjectInfo("b", "empty", '"e"', 0), 1) == PartSpan(0, 0, None)
    await parts.close()


async def test_a_changed_object_is_never_cut_at_another_versions_parts():
    origin = Origin()
    stale = info(origin)
    origin.etag, origin.parts = '"new-3"', [100, 50, 7]
    parts = Parts(origin)
    with pytest.raises(ObjectChanged):
        await parts.span(stale, 2)
    # A server that compares If-Match per part: the object's ETag is read again after the HEAD.
    origin = Origin(per_part_etag=True, content_range=False)
    parts = Parts(origin)
    assert await parts.span(info(origin), 2) == PartSpan(100, 200, 3)
    stale, origin.change_after_part = info(origin), '"new-3"'
    origin.parts = [100, 50, 7]
    with pytest.raises(ObjectChanged):
        await parts.span(ObjectInfo("b", "other", stale.etag, stale.size), 1)
    # A Content-Range for an object of another size is another version too.
    origin = Origin()
    with pytest.raises(ObjectChanged):
        await Parts(origin).span(ObjectInfo("b", "k", origin.etag, 999), 1)


def test_part_number_parsing_is_s3s():
    assert parse_part_number({}, True) is None
    assert parse_part_number({"partNumber": "10000"}, False) == 10000
    assert parse_part_number({"partNumber": "0007"}, False) == 7
    for bad in ("0", "10001", "", "x", "-1", "1e3", "٣", "9" * 5000):  # 5,000 digits: no int() (a 500)
        with pytest.raises(InvalidArgument):
            parse_part_number({"partNumber": bad}, False)
    with pytest.raises(BadRequest) as exc:
        parse_part_number({"partNumber": "2"}, True)
    assert exc.value.code == "InvalidRequest" and "Range" in exc.value.message
