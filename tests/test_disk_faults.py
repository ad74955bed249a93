"""A failing or full cache disk: reads keep succeeding, served around the disk (uncached), and the
worker counts the failures and says it is degraded while still ready."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import logging
import random
import shutil
import time

import aiohttp
import pytest

from conftest import SECRET, metric
from p2pcache.admin_client import AdminClient
from p2pcache.errors import BadRequest
from p2pcache.service import Fatal
from worker import cachedir, server
from worker.server import Worker

CHUNK = 64 << 10
SIZE = 24 * CHUNK + 123  # 25 chunks: every worker owns some


def put(s3_client, bucket: str, key: str) -> bytes:
    body = random.Random(key).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


async def read_everywhere(http: aiohttp.ClientSession, workers, bucket: str, key: str, body: bytes) -> None:
    """Whole reads, streamed ranges and small ranges, through every worker, twice."""
    for _ in range(2):
        for w in workers:
            url = f"{w.url}/{bucket}/{key}"
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == body, w.id
            for a, b in ((CHUNK - 10, 3 * CHUNK), (5 * CHUNK + 7, 5 * CHUNK + 1000)):
                async with http.get(url, headers={"Range": f"bytes={a}-{b - 1}"}) as resp:
                    assert resp.status == 206 and await resp.read() == body[a:b], (w.id, a, b)


async def ready(http: aiohttp.ClientSession, worker) -> dict:
    async with http.get(f"{worker.url}/_p2p/ready") as resp:
        assert resp.status == 200  # degraded, but serving
        return await resp.json()


async def test_a_failing_cache_directory_is_read_around(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    bad = cluster.workers[0]
    tmp = bad.config.cache_dir / "tmp"
    shutil.rmtree(tmp)
    tmp.write_bytes(b"")  # every new chunk file now fails to open: ENOTDIR, from the kernel
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert await metric(http, bad.url, "p2pcache_store_errors_total") >= 1
        assert await metric(http, bad.url, "p2pcache_passthrough_bytes_total") > 0
        assert "Not a directory" in (await ready(http, bad))["degraded"]
        for w in cluster.workers[1:]:
            assert "degraded" not in await ready(http, w)
            assert await metric(http, w.url, "p2pcache_store_errors_total") == 0
    assert len(bad.store) == 0 and all(len(w.store) > 0 for w in cluster.workers[1:])


async def test_a_full_disk_is_read_around(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    full = await cluster.add_worker(min_free=1 << 60)  # its volume is below the free-space floor
    await cluster.wait_converged()
    body = put(s3_client, bucket, "m.bin")
    before = s3.get_bytes
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert await metric(http, full.url, "p2pcache_passthrough_bytes_total") > 0
        # Every byte S3 sent is counted as read from S3, those streamed around the disk too.
        origin = sum([await metric(http, w.url, "p2pcache_origin_bytes_total") for w in cluster.workers])
        assert origin == s3.get_bytes - before > 0
        degraded = (await ready(http, full))["degraded"]
        assert "free-space floor" in degraded and "disk failing" not in degraded, degraded
        assert await metric(http, full.url, "p2pcache_store_errors_total") == 0  # full, not failing
        for w in cluster.workers[:2]:  # its answers of bytes streamed from S3 say they come without sums
            assert await metric(http, w.url, "p2pcache_corrupt_transfers_total") == 0
            assert await metric(http, w.url, "p2pcache_peer_failures_total") == 0
    assert len(full.store) == 0


async def test_a_full_new_owner_does_not_leak_the_holders_answers_it_cannot_store(cluster_factory, s3, s3_client,
                                                                                 bucket, monkeypatch, request, caplog):
    """A worker joins with no room (its volume below the floor): it copies the chunks it now
    owns from their earlier holders, and its store refuses each before a byte is read. Each
    refused answer was left open, holding one of its pooled connections to that holder for
    good; with them all held (64 by default, 2 here), every request to that peer waited, and
    reads through it hung. It streams them around its disk instead, from those holders: S3
    sends nothing more."""
    caplog.set_level(logging.WARNING, "p2pcache.http")
    monkeypatch.setattr(server, "PEER_CONNECTIONS", 2)  # a read's two streams (--readahead 1) at most
    # A refused answer is kept alive by a reference cycle (the error's traceback): freed by the
    # cycle collector at some later time, or never while the error is held. Not collected here.
    gc.disable()
    request.addfinalizer(gc.enable)
    cluster = await cluster_factory(2, chunk_size=1 << 20)  # larger than what a connection buffers unread
    body = random.Random(7).randbytes(12 << 20)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for w in cluster.workers:  # warm at its owners
            async with http.get(f"{w.url}/{bucket}/m.bin") as resp:
                assert resp.status == 200 and await resp.read() == body
        full = await cluster.add_worker(min_free=1 << 60, readahead=1)
        await cluster.wait_converged()
        before = s3.get_bytes
        for _ in range(3):
            async with http.get(f"{full.url}/{bucket}/m.bin") as resp:
                assert resp.status == 200 and await resp.read() == body
        assert await metric(http, full.url, "p2pcache_passthrough_bytes_total") > 0
        assert s3.get_bytes == before  # what it cannot store comes from the earlier holders, not S3
    assert len(full.store) == 0
    # Each handoff it refused was a warning line (hundreds a second): one per code and 10 s now.
    refused = [r for r in caplog.records if r.name == "p2pcache.http" and "/_p2p/take" in r.getMessage()]
    assert len(refused) <= 1, len(refused)


async def test_a_worker_whose_cache_dir_is_unusable_starts_and_serves(cluster_factory, s3_client, bucket, tmp_path):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "tmp").write_bytes(b"")  # the next worker's cache dir cannot be indexed (ENOTDIR)
    broken = await cluster.add_worker()
    await cluster.wait_converged()
    body = put(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert str(tmp_path / "w1") in (await ready(http, broken))["degraded"]
        assert await metric(http, broken.url, "p2pcache_passthrough_bytes_total") > 0


async def test_a_worker_whose_cache_dir_is_a_file_does_not_start(cluster_factory, tmp_path):
    """A --cache-dir that is a file, or under one, is a configuration error, not a failing disk:
    the worker stops at start naming it. It started, said ready and joined the ring, never
    cached, and took no lock: two workers on one such path both started."""
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    file = tmp_path / "file"
    file.write_bytes(b"")
    for cache_dir, why in ((file, f"--cache-dir {file} is not a directory"),
                           (file / "cache", f"--cache-dir {file / 'cache'}: {file} is not a directory")):
        worker = Worker(dataclasses.replace(cluster.workers[0].config, worker_id="w1", port=0, cache_dir=cache_dir))
        with pytest.raises(Fatal) as stopped:
            await worker.start()
        await worker.stop()  # it had taken nothing
        assert str(stopped.value) == why
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0"]


async def test_chunk_files_that_cannot_be_read_are_read_around(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)  # every chunk cached
        old = cluster.workers[0]
        await old.stop()
        worker = Worker(old.config)  # a restart: no chunk file is open yet
        await worker.start()
        cluster.workers.append(worker)
        await cluster.wait_converged()
        files = [p for p in (old.config.cache_dir / "chunks").glob("*/*")]
        assert len(files) == len(worker.store) == 25
        for path in files:  # each fails when opened (its trailer cannot be read: EISDIR)
            path.unlink()
            path.mkdir()
        await read_everywhere(http, [worker], bucket, "m.bin", body)
        assert await metric(http, worker.url, "p2pcache_store_errors_total") >= 1
        assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") >= 2 * SIZE
        assert "cache disk failed" in (await ready(http, worker))["degraded"]


async def test_a_second_worker_on_a_cache_dir_in_use_does_not_start(cluster_factory):
    """Two workers on one dir would keep two indexes and capacities of the same files (and the
    second's scan would empty the first's tmp/): the second refuses to start, naming the holder."""
    cluster = await cluster_factory(1)
    first = cluster.workers[0]
    second = Worker(dataclasses.replace(first.config, port=0))
    with pytest.raises(Fatal, match=r"is in use by another worker \(pid \d+\)"):
        await second.start()
    await second.stop()  # it had taken nothing
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{first.url}/_p2p/ready") as resp:
            assert resp.status == 200 and "degraded" not in await resp.json()
    await first.stop()
    again = await cluster.restart(first)  # the lock went with the worker that held it
    assert again.running


async def test_a_cache_full_of_pinned_chunks_is_said_full_not_failing_and_caches_once_it_has_room(
        cluster_factory, s3_client, bucket):
    # Room for 4 chunk files and a half: 4 pinned chunks stay under the 90% a pin may keep.
    cluster = await cluster_factory(1, chunk_size=CHUNK, capacity=4 * (CHUNK + 512) + CHUNK // 2)
    worker = cluster.workers[0]
    for i in range(4):
        s3_client.put_object(Bucket=bucket, Key=f"pinned/{i}.bin", Body=bytes([i]) * CHUNK)
    others = {k: random.Random(k).randbytes(CHUNK) for k in ("a.bin", "b.bin")}
    for key, body in others.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    async with aiohttp.ClientSession() as http, AdminClient(cluster.master.url, SECRET) as admin:
        job = await admin.wait((await admin.preload([f"s3://{bucket}/pinned/"], pin=True))["id"])
        assert job["state"] == "done" and len(worker.store) == 4
        async with http.get(f"{worker.url}/{bucket}/a.bin") as resp:  # no room: served uncached
            assert resp.status == 200 and await resp.read() == others["a.bin"]
        assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == CHUNK
        degraded = (await ready(http, worker))["degraded"]
        assert "disk failing" not in degraded, degraded
        assert f"cache full: kept (pinned) chunks hold {worker.store.used} of its {worker.store.capacity} bytes" \
               in degraded and "unpin some" in degraded, degraded  # the pins fill it, not readers
        assert await metric(http, worker.url, "p2pcache_store_errors_total") == 0  # the disk is fine
        with pytest.raises(BadRequest, match="over its capacity") as refused:  # said before any fill
            await admin.preload([f"s3://{bucket}/a.bin"])
        assert refused.value.code == "PreloadTooLarge"
        passed = await metric(http, worker.url, "p2pcache_passthrough_bytes_total")
        await admin.unpin([f"s3://{bucket}/pinned/"])
        async with http.get(f"{worker.url}/{bucket}/b.bin") as resp:  # room again: cached at once
            assert resp.status == 200 and await resp.read() == others["b.bin"]
        assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == passed
        assert "degraded" not in await ready(http, worker)


def bytes_on_disk(cache_dir) -> int:
    return sum(p.stat().st_size for p in (cache_dir / "chunks").glob("*/*"))


async def test_chunks_on_a_cache_dir_unusable_at_start_are_indexed_when_the_disk_is_tried_again(
        cluster_factory, s3, s3_client, bucket):
    """A restart finds its cache dir unusable (here `tmp/` a file): its chunks cannot be indexed,
    reads go around the disk. When the disk is tried again (5 s later) and works, the store
    indexes what is on disk before it adds a chunk: those chunks are served, count against
    --capacity and are evicted to make room."""
    capacity = 10 * (CHUNK + 512)  # ten chunk files (data + trailer)
    cluster = await cluster_factory(1, chunk_size=CHUNK, capacity=capacity)
    bodies = {"old.bin": random.Random(1).randbytes(8 * CHUNK), "new.bin": random.Random(2).randbytes(2 * CHUNK)}
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    flood = put(s3_client, bucket, "flood.bin")  # 25 chunks, more than the cache holds
    old = cluster.workers[0]
    async with aiohttp.ClientSession() as http:
        async def read(worker, key: str, body: bytes) -> None:
            async with http.get(f"{worker.url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body

        await read(old, "old.bin", bodies["old.bin"])
        on_disk = set(old.store.names())
        assert len(on_disk) == 8
        await old.stop(leave=False)
        tmp = old.config.cache_dir / "tmp"
        shutil.rmtree(tmp)
        tmp.write_bytes(b"")
        skew = [0.0]
        worker = Worker(old.config, clock=lambda: time.monotonic() + skew[0])
        await worker.start()
        cluster.workers[0] = worker
        await cluster.wait_converged()
        assert len(worker.store) == 0 and "unusable" in (await ready(http, worker))["degraded"]
        tmp.unlink()  # the disk is back
        tmp.mkdir()
        skew[0] += 6  # past the disk's cooldown
        for _ in range(2):  # the first fill tries the disk; once it works, all are stored
            await read(worker, "new.bin", bodies["new.bin"])
        assert "degraded" not in await ready(http, worker)
        assert len(worker.store) == 10 and on_disk <= set(worker.store.names())
        before = s3.get_bytes
        await read(worker, "old.bin", bodies["old.bin"])
        assert s3.get_bytes == before  # from the disk
        await read(worker, "flood.bin", flood)
        assert worker.store.used <= capacity
        assert bytes_on_disk(worker.config.cache_dir) == worker.store.used  # no file the store forgot


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_small_cache_under_many_readers_serves_every_read_whole_with_one_s3_get_per_chunk_read(
        cluster_factory, s3, s3_client, bucket, serve_processes):
    """More objects than the cache holds, read by many readers at once under S3-FIFO, which
    puts each new chunk first in line for eviction: every read is whole and exact (a chunk
    filled for a read is that read's, or streamed to it uncached), never a 503 or a cut body,
    and S3 is asked at most once per chunk a read opens (a fill, or its pass-through)."""
    capacity = 16 * (CHUNK + 512)  # sixteen chunk files, fewer than the readers hold or wait for
    cluster = await cluster_factory(1, chunk_size=CHUNK, capacity=capacity, eviction="s3fifo",
                                    serve_processes=serve_processes)
    worker = cluster.workers[0]
    rng = random.Random(22)
    bodies = {f"o{i}": rng.randbytes(4 * CHUNK + rng.randrange(1, CHUNK)) for i in range(32)}  # 5 chunks each
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    keys = [rng.choice(list(bodies)) for _ in range(160)]
    outcomes: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        async def read(key: str) -> str:
            try:
                async with http.get(f"{worker.url}/{bucket}/{key}") as resp:
                    body = await resp.read()
            except aiohttp.ClientPayloadError as exc:  # cut after the headers
                examples.setdefault("cut", str(exc))
                return "cut"
            if resp.status != 200:
                examples.setdefault(f"HTTP {resp.status}", body[:300].decode(errors="replace"))
                return f"HTTP {resp.status}"
            return "ok" if body == bodies[key] else "wrong bytes"

        async def reader(mine: list[str]) -> None:
            for key in mine:
                outcomes[await read(key)] += 1

        gets = s3.get_requests
        await asyncio.gather(*(reader(keys[i::16]) for i in range(16)))
        assert outcomes == {"ok": len(keys)}, (outcomes, examples)
        # Each read opens each of its 5 chunks once, and an open asks S3 at most once: for the fill
        # it joins (shared with the other reads of that chunk) or for its bytes uncached.
        assert s3.get_requests - gets <= 5 * len(keys)
        assert worker.store.used <= capacity
        assert await metric(http, worker.url, "p2pcache_responses_aborted_total") == 0


@pytest.mark.parametrize("removed", ["tmp", ""], ids=["tmp", "cache-dir"])
async def test_a_cache_dir_removed_under_a_running_worker_is_made_again_and_caches(cluster_factory, s3, s3_client,
                                                                                    bucket, removed):
    """`tmp/` (a tmp cleaner) or the whole cache dir removed while the worker runs: the store makes
    them again at its next write, so new chunks are cached at once (not a failing disk)."""
    cluster = await cluster_factory(1, chunk_size=CHUNK, min_free=1)  # the floor looks at the dir's volume
    worker = cluster.workers[0]
    body = put(s3_client, bucket, "m.bin")
    shutil.rmtree(worker.config.cache_dir / removed)
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, [worker], bucket, "m.bin", body)
        assert len(worker.store) == 25 and (worker.config.cache_dir / "tmp").is_dir()
        before = s3.get_bytes
        await read_everywhere(http, [worker], bucket, "m.bin", body)
        assert s3.get_bytes == before  # from the disk
        assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == 0
        assert await metric(http, worker.url, "p2pcache_store_errors_total") == 0
        assert "degraded" not in await ready(http, worker)
    if not removed:  # the dir made again is this worker's as the first was: locked, with its id
        with pytest.raises(OSError, match="in use by another worker"):
            cachedir.lock(worker.config.cache_dir)
        assert cachedir.worker_id(worker.config.cache_dir) == worker.id


async def test_a_cache_dir_removed_and_taken_by_another_worker_is_not_shared(cluster_factory, s3, s3_client, bucket):
    """The cache dir removed, and made again and locked by another process before this worker's
    next write: the worker does not write into a dir another worker indexes. Its fills fail, its
    reads go around the disk, and why is said."""
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    worker = cluster.workers[0]
    body = put(s3_client, bucket, "m.bin")
    shutil.rmtree(worker.config.cache_dir)
    other = cachedir.lock(worker.config.cache_dir)
    try:
        async with aiohttp.ClientSession() as http:
            await read_everywhere(http, [worker], bucket, "m.bin", body)
            assert len(worker.store) == 0
            assert "in use by another worker" in (await ready(http, worker))["degraded"]
    finally:
        cachedir.unlock(other)


async def test_a_dangling_link_among_the_chunks_at_start_is_dropped_alone(cluster_factory, s3, s3_client, bucket):
    """The startup scan drops an entry it cannot look at (here links to nothing, one named as a chunk)
    and indexes the rest: the cache is not unusable for the worker's life because of one entry."""
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    old = cluster.workers[0]
    body = put(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, [old], bucket, "m.bin", body)
        await old.stop(leave=False)
        first = sorted((old.config.cache_dir / "chunks").glob("*/*"))[0]
        links = [first.with_name("zz-dangling"), first.with_name(first.name[:-1] + "9")]
        for link in links:
            link.symlink_to("/nonexistent")
        worker = await cluster.restart(old)
        await cluster.wait_converged()
        assert len(worker.store) == 25 and not any(link.is_symlink() for link in links)
        assert "degraded" not in await ready(http, worker)
        before = s3.get_bytes
        await read_everywhere(http, [worker], bucket, "m.bin", body)
        assert s3.get_bytes == before  # every chunk from the disk


async def test_a_preload_fill_a_full_owner_cannot_store_asks_no_one_for_its_bytes(cluster_factory, s3, s3_client,
                                                                                   bucket, caplog):
    """A preload fill wants the chunk stored, not its bytes (it opens it for 0 bytes). On an owner
    whose disk is full it streamed "around the disk": it asked the chunk's earlier holder for
    `Range: bytes=0--1`, got 400 malformed Range, and counted the holder as failed."""
    caplog.set_level(logging.WARNING)
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers[:1], bucket, "m.bin", body)  # held by its owners
        full = await cluster.add_worker(min_free=1 << 60)  # owns some of them now, and has no room
        await cluster.wait_converged()
        before = s3.get_bytes
        async with AdminClient(cluster.master.url, SECRET) as admin:
            job = await admin.wait((await admin.preload([f"s3://{bucket}/m.bin"]))["id"])
        assert job["state"] == "failed" and job["chunks_failed"] > 0, job  # full's chunks: not stored
        assert all(f"{full.id}: " in f and "was not stored" in f for f in job["failures"][1:]), job["failures"]
        assert await metric(http, full.url, "p2pcache_peer_failures_total") == 0
    assert s3.get_bytes == before and len(full.store) == 0
    assert not [r for r in caplog.records if "Range" in r.getMessage() or "earlier holder" in r.getMessage()]
