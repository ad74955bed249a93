"""The identity generation: the coordinator bumps it when a HEAD finds another version, and a
serving process stops using the identities it asked for before (the cluster's side of it:
tests/test_consistency.py)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import until
from p2pcache.errors import NotFound, Unavailable
from p2pcache.objects import ObjectInfo
from worker.generation import Generation
from worker.objects import MISSING, ObjectCache, changed
from worker.reads import Reads


def test_a_serving_process_sees_every_bump_and_cannot_make_one(tmp_path):
    path = str(tmp_path / "generation")
    counter = Generation(path, create=True)
    mine = Generation(path)
    assert counter.value == mine.value == 0
    counter.bump()
    counter.bump()
    assert mine.value == 2
    with pytest.raises(TypeError):  # mapped read-only
        mine.bump()
    with pytest.raises(FileExistsError):  # never another coordinator's counter
        Generation(path, create=True)
    mine.close()
    counter.close()


def info(etag: str, size: int = 10, last_modified: str = "Mon, 01 Jan 2024 00:00:00 GMT", **kw) -> ObjectInfo:
    return ObjectInfo("b", "k", etag, size, last_modified, **kw)


def test_another_version_is_a_change_a_first_sight_is_not():
    one, gone = info('"1"'), MISSING["NoSuchKey"]
    assert not changed(None, one) and not changed(None, gone)
    assert not changed(one, info('"1"'))
    assert not changed(one, info('"1"', headers=(("x-amz-restore", 'ongoing-request="false"'),)))
    assert changed(one, info('"2"'))
    assert changed(one, info('"1"', size=11))
    assert changed(one, info('"1"', last_modified="Tue, 02 Jan 2024 00:00:00 GMT"))  # metadata rewritten
    assert changed(one, gone) and changed(gone, one)
    assert not changed(gone, MISSING["NoSuchBucket"])


class Origin:
    """S3's HEAD: `answer`, an identity or an error."""

    def __init__(self, answer) -> None:
        self.answer = answer

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        await asyncio.sleep(0)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_the_object_cache_calls_on_change_before_answering_with_another_version():
    origin, changes = Origin(info('"1"')), []
    objects = ObjectCache(origin, ttl=60, on_change=lambda bucket, key: changes.append((bucket, key)))

    async def head(answer) -> ObjectInfo | NotFound:
        origin.answer = answer
        try:
            return await objects.get("b", "k", max_age=0)
        except NotFound as exc:
            return exc

    assert (await head(info('"1"'))).etag == '"1"' and changes == []  # a first sight
    assert (await head(info('"1"'))).etag == '"1"' and changes == []
    assert (await head(info('"2"'))).etag == '"2"' and changes == [("b", "k")]  # told before it returned
    assert isinstance(await head(NotFound("deleted")), NotFound) and len(changes) == 2
    deleted = await head(NotFound("deleted"))
    assert (type(deleted), str(deleted), deleted.code) == (NotFound, "no such object: s3://b/k", "NoSuchKey")
    assert len(changes) == 2
    assert objects._cache.peek(("b", "k")) is MISSING["NoSuchKey"]  # not the error, its traceback, botocore's
    assert (await head(info('"3"'))).etag == '"3"' and len(changes) == 3  # created again
    with pytest.raises(Unavailable):
        await head(Unavailable("S3 is down"))
    assert (await head(info('"3"'))).etag == '"3"' and len(changes) == 3
    objects.invalidate("b", "k")  # a peer named another version: what S3 says is still compared
    assert (await head(info('"4"'))).etag == '"4"' and len(changes) == 4
    await objects.close()


class Coordinator:
    """The coordinator's object route: the identity it knows when asked, given when `gates` open."""

    def __init__(self) -> None:
        self.etag, self.asked, self.gates = '"1"', 0, []

    async def get_json(self, path: str, params: dict[str, str]) -> dict:
        self.asked += 1
        etag, gate = self.etag, asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return {"etag": etag, "size": 10, "last_modified": "", "content_type": "binary/octet-stream",
                "headers": [], "chunk_size": 4}


class PeerReads:
    async def seen(self, ring) -> None:
        pass


async def test_a_serving_process_asks_again_after_a_bump_and_joins_no_lookup_begun_before(tmp_path):
    counter = Generation(str(tmp_path / "generation"), create=True)
    coordinator = Coordinator()
    reads = Reads(None, coordinator, PeerReads(), None, None, None, frozenset(), None, 30.0,
                  Generation(str(tmp_path / "generation")))

    async def etag(key: str) -> str:
        """The identity's ETag a read of `key` uses (asking the coordinator if it must)."""
        asked = coordinator.asked
        task = asyncio.ensure_future(reads._object("b", key, False))
        await until(lambda: task.done() or coordinator.asked > asked)
        for gate in coordinator.gates:
            gate.set()
        return (await asyncio.wait_for(task, 5))[0].etag

    assert await etag("k") == '"1"'
    coordinator.etag = '"2"'
    assert await etag("k") == '"1"' and coordinator.asked == 1  # within half the TTL
    counter.bump()  # the coordinator learned of "2"
    assert reads._cached("b", "k") is None
    assert await etag("k") == '"2"' and coordinator.asked == 2
    assert reads._cached("b", "k")[0].etag == '"2"'

    # A lookup answered before a bump and landing after it: its read may use it (it began
    # first); a read that begins after the bump asks again, and the older answer is not kept.
    coordinator.gates.clear()
    before = asyncio.ensure_future(reads._object("b", "other", False))
    await until(lambda: len(coordinator.gates) == 1)
    coordinator.etag = '"3"'
    counter.bump()
    after = asyncio.ensure_future(reads._object("b", "other", False))
    await until(lambda: len(coordinator.gates) == 2)  # not joined: a lookup of its own
    coordinator.gates[1].set()
    assert (await asyncio.wait_for(after, 5))[0].etag == '"3"'
    coordinator.gates[0].set()
    assert (await asyncio.wait_for(before, 5))[0].etag == '"2"'
    assert reads._cached("b", "other") is None  # landed last, asked in the older generation: not used
    await reads.close()
    counter.close()
