"""Reads that meet an overwrite before a byte is out start over on the new version, with every
offset (the whole object, `-N`, `A-`) resolved against that version; after a byte is out they fail.
A file (fsspec's, `Client.open`'s) moves only to a version of its size.

Staging: the workers (or only the client) remember version 1 while S3 has version 2 of another
size, and no chunk is cached, so the first chunk read finds the change at S3 (If-Match: 412).
"""

from __future__ import annotations

import asyncio
import random

import fsspec
import pytest

from conftest import CHUNK, p2pcache_get
from p2pcache import Client
from p2pcache.errors import ObjectChanged, RangeNotSatisfiable
from p2pcache.fs import FileExpired
from p2pcache.objects import ObjectInfo, may_move

pytestmark = pytest.mark.usefixtures("fsspec_instances")

REMEMBER = 600.0  # a worker's --meta-ttl that outlasts any test: it keeps version 1 until told


def body(size: int, seed: int, tail: bytes = b"") -> bytes:
    return random.Random(seed).randbytes(size - len(tail)) + tail


async def overwritten(cluster, s3_client, bucket: str, key: str, v1: bytes, v2: bytes) -> None:
    """Version 1 put and HEAD through every worker (each remembers it), then version 2 put."""
    s3_client.put_object(Bucket=bucket, Key=key, Body=v1)
    for w in cluster.workers:
        async with cluster.session.head(f"{w.url}/{bucket}/{key}") as resp:
            assert resp.status == 200 and resp.content_length == len(v1)
    s3_client.put_object(Bucket=bucket, Key=key, Body=v2)


@pytest.mark.parametrize("sizes", [(3 * CHUNK + 5, 6 * CHUNK + 7), (6 * CHUNK + 7, 2 * CHUNK + 3)],
                         ids=["grown", "shrunk"])
async def test_p2pcache_get_that_starts_over_writes_all_of_the_new_version(
        cluster_factory, s3_client, bucket, tmp_path, sizes):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(sizes[0], 1), body(sizes[1], 2)
    master = ["--master", cluster.master.url]
    cases = [(["-o", str(tmp_path / "out")], v2), ([], v2), (["--range", "-8"], v2[-8:]),
             (["--range", f"{CHUNK}-"], v2[CHUNK:]), (["-o", str(tmp_path / "tail"), "--range", "-9"], v2[-9:])]
    for i, (args, want) in enumerate(cases):  # a key each: every get meets workers that know only v1
        await overwritten(cluster, s3_client, bucket, f"g{i}", v1, v2)
        code, out, err = await p2pcache_get(f"s3://{bucket}/g{i}", *args, *master)
        got = (tmp_path / args[1]).read_bytes() if args[:1] == ["-o"] else out
        assert (code, err, len(got)) == (0, "", len(want)) and got == want, args


async def test_client_reads_from_the_end_take_the_new_versions_end(cluster_factory, s3_client, bucket, tmp_path):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(3 * CHUNK, 3, b"FOOTER_1"), body(5 * CHUNK + 3, 4, b"FOOTER_2")
    async with Client(cluster.master.url) as client:
        reads = {
            "read -8": (lambda k: client.read(bucket, k, -8), v2[-8:]),
            "read 10..-8": (lambda k: client.read(bucket, k, 10, -8), v2[10:-8]),
            "read_into -8": (lambda k: _read_into(client, bucket, k, -8, 100), v2[-8:]),
            "stream all": (lambda k: _joined(client.stream(bucket, k)), v2),
            "stream -CHUNK-1": (lambda k: _joined(client.stream(bucket, k, -CHUNK - 1)), v2[-CHUNK - 1:]),
            "download all": (lambda k: _downloaded(client, bucket, k, tmp_path / k), v2),
        }
        for key, (read, want) in reads.items():
            await overwritten(cluster, s3_client, bucket, key, v1, v2)
            assert (await client.stat(bucket, key)).size == len(v1)  # the client remembers v1 too
            assert await read(key) == want, key


async def test_p2pcache_get_of_a_range_a_shrunk_version_does_not_hold_fails_as_a_fresh_get(
        cluster_factory, s3_client, bucket, tmp_path):
    """As S3 answers: 416 where the new version ends at or before A; what it holds of the rest."""
    cluster = await cluster_factory(1, meta_ttl=REMEMBER)
    v1, v2 = body(3 * CHUNK, 17), body(50, 18)
    master = ["--master", cluster.master.url]
    outside = f"is outside the object ({len(v2)} bytes)"
    (outputs := tmp_path / "out").mkdir()
    cases = [(["--range", "100-200", "-o", str(outputs / "a")], None), (["--range", f"{CHUNK}-"], None),
             (["--range", "50-", "-o", str(outputs / "b")], None),
             (["--range", "10-200", "-o", str(outputs / "c")], v2[10:]), (["--range", "40-"], v2[40:])]
    for i, (args, want) in enumerate(cases):
        await overwritten(cluster, s3_client, bucket, f"r{i}", v1, v2)
        code, out, err = await p2pcache_get(f"s3://{bucket}/r{i}", *args, *master)
        got = (outputs / args[3]).read_bytes() if "-o" in args and code == 0 else out
        if want is None:  # nothing written: no output file, no bytes on stdout
            assert (code, out, err) == (1, b"", f"p2pcache get: range {args[1]} {outside}\n"), args
            assert not list(outputs.iterdir()), args
        else:
            assert (code, err, got) == (0, "", want), args


async def test_client_reads_of_a_range_a_shrunk_version_does_not_hold_fail(cluster_factory, s3_client,
                                                                             bucket, tmp_path):
    cluster = await cluster_factory(1, meta_ttl=REMEMBER)
    v1, v2 = body(3 * CHUNK, 19), body(50, 20)
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)
    (outputs := tmp_path / "out").mkdir()
    async with Client(cluster.master.url) as client:
        refused = {
            "read": lambda k: client.read(bucket, k, 100, 201),
            "read to the end": lambda k: client.read(bucket, k, 50),
            "read_into": lambda k: _read_into(client, bucket, k, CHUNK, 10),
            "stream": lambda k: _joined(client.stream(bucket, k, 100, 201)),
            "download": lambda k: _downloaded(client, bucket, k, outputs / k, start=100, end=201),
        }
        for key, read in refused.items():
            await overwritten(cluster, s3_client, bucket, key, v1, v2)
            with pytest.raises(RangeNotSatisfiable) as info:
                await read(key)
            assert info.value.size == len(v2), key
        assert not list(outputs.iterdir())  # the download left nothing behind
        held = {  # a range the new end cuts short: what it holds
            "read part": (lambda k: client.read(bucket, k, 10, 201), v2[10:]),
            "download part": (lambda k: _downloaded(client, bucket, k, outputs / k, start=40), v2[40:]),
        }
        for key, (read, want) in held.items():
            await overwritten(cluster, s3_client, bucket, key, v1, v2)
            assert await read(key) == want, key
    await overwritten(cluster, s3_client, bucket, "fs", v1, v2)  # fsspec's callers get an OSError
    assert await asyncio.to_thread(fs.size, f"{bucket}/fs") == len(v1)
    with pytest.raises(OSError) as info:
        await asyncio.to_thread(fs.cat_file, f"{bucket}/fs", 100, 201)
    assert isinstance(info.value.__cause__, RangeNotSatisfiable)


async def _read_into(client: Client, bucket: str, key: str, start: int, size: int) -> bytes:
    buf = bytearray(size)
    return bytes(buf[:await client.read_into(bucket, key, buf, start)])


async def _joined(pieces) -> bytes:
    return b"".join([p async for p in pieces])


async def _downloaded(client: Client, bucket: str, key: str, path, start: int = 0,
                      end: int | None = None) -> bytes:
    await client.download(bucket, key, path, start=start, end=end)
    return path.read_bytes()


@pytest.mark.parametrize("sizes", [(3 * CHUNK, 5 * CHUNK), (5 * CHUNK, 3 * CHUNK + 7)], ids=["grown", "shrunk"])
async def test_fsspec_negative_offsets_are_the_new_versions_end(cluster_factory, s3_client, bucket, sizes):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(sizes[0], 5, b"FOOTER_1"), body(sizes[1], 6, b"FOOTER_2")
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)
    reads = {  # a Parquet reader's footer, and ranges that end before the end
        "tail": (lambda p: fs.cat_file(p, start=-8), v2[-8:]),
        "body": (lambda p: fs.cat_file(p, start=3, end=-8), v2[3:-8]),
        "ranges": (lambda p: fs.cat_ranges([p], [-(CHUNK + 8)], [None])[0], v2[-(CHUNK + 8):]),
    }
    for key, (read, want) in reads.items():
        await overwritten(cluster, s3_client, bucket, key, v1, v2)
        assert await asyncio.to_thread(fs.size, f"{bucket}/{key}") == len(v1)  # the client remembers v1
        assert await asyncio.to_thread(read, f"{bucket}/{key}") == want, key


async def test_fsspec_open_is_on_the_workers_version_not_the_clients(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, meta_ttl=0)  # the workers see each overwrite at once
    v1, v2 = body(3 * CHUNK, 7), body(4 * CHUNK + 1, 8)
    s3_client.put_object(Bucket=bucket, Key="m", Body=v1)
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)

    def scenario() -> None:
        assert fs.size(f"{bucket}/m") == len(v1)  # the client remembers v1 for its meta_ttl
        s3_client.put_object(Bucket=bucket, Key="m", Body=v2)
        with fs.open(f"{bucket}/m") as f:
            assert f.size == len(v2) and f.read() == v2

    await asyncio.to_thread(scenario)


async def test_fsspec_file_that_returned_nothing_moves_to_a_same_size_version(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(4 * CHUNK, 9), body(4 * CHUNK, 10)
    await overwritten(cluster, s3_client, bucket, "m", v1, v2)
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)

    def scenario() -> None:
        with fs.open(f"{bucket}/m", block_size=CHUNK) as f:  # opened on v1, the version the workers have
            f.seek(-10, 2)  # an offset from f.size: the same in v2
            assert f.read() == v2[-10:]
            f.seek(0)
            assert f.read() == v2

    await asyncio.to_thread(scenario)


async def test_fsspec_file_whose_version_changed_fails_with_an_oserror(cluster_factory, s3_client, bucket):
    """After a byte is out, or to another size (offsets from f.size would be wrong), it never moves."""
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(4 * CHUNK, 11), body(4 * CHUNK, 12)
    s3_client.put_object(Bucket=bucket, Key="cut", Body=v1)
    await overwritten(cluster, s3_client, bucket, "other", v1, v2[:-1])
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)

    def scenario() -> None:
        with fs.open(f"{bucket}/cut", block_size=CHUNK) as f:
            assert f.read(10) == v1[:10]
            s3_client.put_object(Bucket=bucket, Key="cut", Body=v2)  # same size
            f.seek(3 * CHUNK)  # a chunk not read yet: at S3 only v2 is left
            with pytest.raises(FileExpired) as cut:
                f.read(10)
        with fs.open(f"{bucket}/other") as f, pytest.raises(OSError) as other_size:
            f.read()
        for exc in (cut.value, other_size.value):  # what fsspec's callers catch, and what ours do
            assert isinstance(exc, OSError) and isinstance(exc, ObjectChanged) and "changed" in str(exc)

    await asyncio.to_thread(scenario)


async def test_fsspec_file_whose_object_was_deleted_fails_with_file_not_found(cluster_factory, s3_client, bucket):
    """Before or after it returned a byte: FileNotFoundError (an OSError), as cat_file and get_file
    raise, and s3fs."""
    cluster = await cluster_factory(1, meta_ttl=REMEMBER)  # the worker remembers the version deleted
    v1 = body(3 * CHUNK, 21)
    for key in ("fresh", "begun"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=v1)
    fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)

    def scenario() -> None:
        with fs.open(f"{bucket}/fresh", block_size=CHUNK) as fresh, \
                fs.open(f"{bucket}/begun", block_size=CHUNK) as begun:
            assert begun.read(10) == v1[:10]
            for key in ("fresh", "begun"):
                s3_client.delete_object(Bucket=bucket, Key=key)
            begun.seek(2 * CHUNK)  # a chunk not read yet: at S3 the object is gone
            for f in (fresh, begun):
                with pytest.raises(FileNotFoundError):
                    f.read(10)

    await asyncio.to_thread(scenario)


def test_a_file_may_move_only_before_a_byte_is_out_and_only_to_its_size():
    v1 = ObjectInfo("b", "k", '"1"', 100)
    same, longer, shorter = (ObjectInfo("b", "k", '"2"', size) for size in (100, 101, 99))
    assert may_move(v1, same, returned=False)
    assert not may_move(v1, same, returned=True)
    for other in (longer, shorter):
        assert not may_move(v1, other, returned=False) and not may_move(v1, other, returned=True)


async def test_client_file_that_returned_nothing_moves_to_a_same_size_version(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(4 * CHUNK + 5, 13), body(4 * CHUNK + 5, 14)
    await overwritten(cluster, s3_client, bucket, "m", v1, v2)
    async with Client(cluster.master.url) as client:  # prefetch: chunks of v1 in flight when it is found gone
        with await client.open(bucket, "m") as f, await client.open(bucket, "m") as g:  # on v1: the workers'
            assert f.info.etag == g.info.etag != (new := s3_client.head_object(Bucket=bucket, Key="m")["ETag"])
            assert await asyncio.to_thread(f.read) == v2  # all of it, every chunk of v2
            assert f.info.etag == new and f.tell() == len(v2)
            g.seek(-10, 2)  # an offset from the size: the same in v2
            assert await asyncio.to_thread(g.read) == v2[-10:]
            g.seek(0)
            assert await asyncio.to_thread(g.read) == v2


async def test_client_file_never_moves_after_a_byte_or_to_another_size(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, meta_ttl=REMEMBER)
    v1, v2 = body(4 * CHUNK, 15), body(4 * CHUNK, 16)
    s3_client.put_object(Bucket=bucket, Key="cut", Body=v1)
    await overwritten(cluster, s3_client, bucket, "other", v1, v2[:-1])
    async with Client(cluster.master.url, prefetch=0) as client:
        out, idle = await client.open(bucket, "cut"), await client.open(bucket, "cut")  # both on v1
        assert await asyncio.to_thread(out.read, 10) == v1[:10]
        s3_client.put_object(Bucket=bucket, Key="cut", Body=v2)  # same size
        out.seek(3 * CHUNK)  # a chunk not read yet: at S3 only v2 is left
        with pytest.raises(ObjectChanged):
            await asyncio.to_thread(out.read, 10)
        # The same change, for a file that returned nothing: it moves (its first chunk, cached of v1,
        # is read again of v2).
        assert await asyncio.to_thread(idle.read) == v2
        with await client.open(bucket, "other") as f:
            with pytest.raises(ObjectChanged):
                await asyncio.to_thread(f.read)
            assert f.size == len(v1) and f.tell() == 0
        out.close()
        idle.close()
