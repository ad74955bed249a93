"""Corrupt bytes are never served: a flipped byte in a cached chunk (live, after a restart) or
in a peer transfer is caught by the block checksums, the chunk is dropped and the read is
answered from another copy or a refill, byte for byte."""

from __future__ import annotations

import os
import random
import shutil

import aiohttp
import pytest
from aiohttp import web

from aioproxy import AioProxy
from conftest import metric
from p2pcache.objects import ObjectInfo
from worker.server import Worker

CHUNK = 256 << 10
SIZE = 12 * CHUNK + 4321


def put(s3_client, bucket: str, key: str) -> bytes:
    body = random.Random(key).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


async def read_everywhere(http: aiohttp.ClientSession, workers, bucket: str, key: str, body: bytes) -> None:
    """Whole reads, streamed ranges and small ranges (the one-shot path), through every worker."""
    for w in workers:
        url = f"{w.url}/{bucket}/{key}"
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == body, w.id
        for a, b in ((CHUNK - 10, 3 * CHUNK), (5 * CHUNK + 7, 5 * CHUNK + 1000), (0, SIZE)):
            async with http.get(url, headers={"Range": f"bytes={a}-{b - 1}"}) as resp:
                assert resp.status == 206 and await resp.read() == body[a:b], (w.id, a, b)


def flip(worker: Worker, name: str, at: int) -> None:
    """Flip one byte of a chunk's data on disk; the file keeps its size."""
    with open(worker.store.path(name), "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x20]))


def chunk_held_by(worker: Worker, info: ObjectInfo, skip: int = 0):
    held = [c for c in (info.chunk(i, CHUNK) for i in range(info.size // CHUNK + 1)) if c.name in worker.store]
    return held[skip]


async def info_of(s3_client, bucket: str, key: str) -> ObjectInfo:
    head = s3_client.head_object(Bucket=bucket, Key=key)
    return ObjectInfo(bucket, key, head["ETag"], head["ContentLength"])


async def test_a_flipped_byte_in_a_cached_chunk_is_never_served(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    info = await info_of(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)  # every chunk cached
        owner = cluster.workers[0]
        small, big = chunk_held_by(owner, info, 0), chunk_held_by(owner, info, 1)
        flip(owner, small.name, 100)  # in the first block: the small-range path reads it
        flip(owner, big.name, CHUNK // 2 + 5)  # mid-chunk: found while streaming
        s3_before = s3.get_bytes
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert await metric(http, owner.url, "p2pcache_corrupt_chunks_total") == 2
        # Each was refilled once, from S3 (its only copy was the bad one), and is good again.
        assert s3.get_bytes - s3_before == small.length + big.length
        assert small.name in owner.store and big.name in owner.store
        s3_before = s3.get_bytes
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert s3.get_bytes == s3_before


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_flipped_byte_at_an_owner_costs_a_reader_elsewhere_that_chunk_once(cluster_factory, s3, s3_client,
                                                                                   bucket, serve_processes):
    """Read through another worker, the owner's answer goes on from the refill (as its coordinator's
    always did). Before, a serving process cut its answer at the bad block: the reader took the
    owner for dead and read the owner's other chunks from S3 (9 chunks for 1)."""
    cluster = await cluster_factory(3, chunk_size=CHUNK, serve_processes=serve_processes)
    body = put(s3_client, bucket, "m.bin")
    info = await info_of(s3_client, bucket, "m.bin")
    owner, reader = cluster.workers[1], cluster.workers[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{reader.url}/{bucket}/m.bin") as resp:
            assert resp.status == 200 and await resp.read() == body
        bad = chunk_held_by(owner, info)
        flip(owner, bad.name, CHUNK // 2 + 5)
        s3_before = s3.get_bytes
        async with http.get(f"{reader.url}/{bucket}/m.bin") as resp:
            assert resp.status == 200 and await resp.read() == body
        assert s3.get_bytes - s3_before == bad.length
        assert await metric(http, owner.url, "p2pcache_corrupt_chunks_total") == 1
        assert await metric(http, reader.url, "p2pcache_peer_failures_total") == 0
        assert bad.name in owner.store


async def test_a_chunk_file_swapped_for_another_chunks_file_is_never_served(cluster_factory, s3, s3_client, bucket):
    """Its sums and trailer are whole, but they are another chunk's: the trailer's identity
    must be the one the file's name stands for, or its bytes would be served as the wrong chunk."""
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    info = await info_of(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        owner = cluster.workers[0]
        first, second = chunk_held_by(owner, info, 0), chunk_held_by(owner, info, 1)
        assert first.length == second.length == CHUNK
        await owner.stop()
        os.replace(shutil.copy(owner.store.path(first.name), f"{owner.store.path(second.name)}.x"),
                   owner.store.path(second.name))
        owner = await cluster.restart(owner)  # the startup scan finds a well-formed file
        await cluster.wait_converged()
        s3_before = s3.get_bytes
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert await metric(http, owner.url, "p2pcache_corrupt_chunks_total") == 1
        assert s3.get_bytes - s3_before <= second.length  # refilled once (from S3 or the other copy)
        assert second.name in owner.store


async def test_a_chunk_file_removed_or_cut_short_under_a_worker_is_refilled_once(
        cluster_factory, s3, s3_client, bucket):
    """Not a failing disk: the copy is gone or short. It is dropped and refilled once, the disk
    stays healthy, and the next reads come from the cache, not from S3 every time."""
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    info = await info_of(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        await cluster.workers[0].stop()
        worker = await cluster.restart(cluster.workers[0])  # no chunk file is open
        await cluster.wait_converged()
        gone, cut = chunk_held_by(worker, info, 2), chunk_held_by(worker, info, 3)
        s3_before = s3.get_bytes
        os.unlink(worker.store.path(gone.name))  # removed while nothing has it open
        async with http.get(f"{worker.url}/{bucket}/m.bin") as resp:
            assert await resp.read() == body  # now `cut` is open
        with open(worker.store.path(cut.name), "r+b") as f:
            f.truncate(CHUNK // 2)  # under the open file
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert s3.get_bytes - s3_before == gone.length + cut.length
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") == 2
        assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == 0
        async with http.get(f"{worker.url}/_p2p/ready") as resp:
            assert "degraded" not in await resp.json()
        s3_before = s3.get_bytes
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        assert s3.get_bytes == s3_before


async def test_a_flipped_byte_is_caught_after_a_restart(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    body = put(s3_client, bucket, "m.bin")
    info = await info_of(s3_client, bucket, "m.bin")
    async with aiohttp.ClientSession() as http:
        await read_everywhere(http, cluster.workers, bucket, "m.bin", body)
        old = cluster.workers[0]
        await old.stop()
        for i in (0, 5, 12):
            flip(old, info.chunk(i, CHUNK).name, 7 if i == 12 else CHUNK - 1)
        worker = Worker(old.config)  # the scan only reads the trailers: it keeps the files
        await worker.start()
        cluster.workers.append(worker)
        await cluster.wait_converged()
        assert len(worker.store) == 13
        await read_everywhere(http, [worker], bucket, "m.bin", body)
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") == 3


class Flipper(AioProxy):
    """A proxy in front of a worker that flips one byte of every /_p2p/chunk body past its sums."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target, self.flipped = target, 0

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(request.method, self.target + request.rel_url.path_qs,
                                         headers=headers, data=await request.read()) as up:
            data = bytearray(await up.read())
            if request.path == "/_p2p/chunk" and up.status == 206 and len(data) > 1000:
                data[int(up.headers.get("X-P2P-Sums", 0)) + 999] ^= 0x01
                self.flipped += 1
            drop = {"content-length", "transfer-encoding", "content-encoding", "connection"}
            return web.Response(status=up.status, body=bytes(data),
                                headers={k: v for k, v in up.headers.items() if k.lower() not in drop})


async def test_a_corrupted_peer_transfer_is_never_served(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    honest = cluster.workers[0]
    body = put(s3_client, bucket, "m.bin")
    flipper = await Flipper("").start()
    try:
        behind = await cluster.add_worker(advertise=flipper.url)  # its peers reach it through the proxy
        host, port = behind.address
        flipper.target = f"http://{host}:{port}"
        await cluster.wait_converged()
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.get(f"{honest.url}/{bucket}/m.bin") as resp:
                    assert resp.status == 200 and await resp.read() == body
            assert flipper.flipped > 0
            assert await metric(http, honest.url, "p2pcache_corrupt_transfers_total") == flipper.flipped
    finally:
        await flipper.stop()
