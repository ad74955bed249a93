"""Once cluster-wide: many cold readers on every worker, each chunk read from S3 once."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from conftest import CHUNK, metric, wait_for
from p2pcache.objects import ObjectInfo
from p2pcache.ranges import chunk_count


async def test_32_concurrent_cold_readers_fetch_each_chunk_from_s3_once(cluster, s3, s3_client, bucket):
    size = 9 * CHUNK + 4321
    body = random.Random(1).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="model.bin", Body=body)
    before = s3.get_bytes

    async def reader(i: int, http: aiohttp.ClientSession) -> None:
        worker = cluster.workers[i % 3]
        if i % 2:  # half read it whole, half in random ranges across chunk boundaries
            async with http.get(f"{worker.url}/{bucket}/model.bin") as resp:
                assert resp.status == 200 and await resp.read() == body
            return
        rnd = random.Random(i)
        for _ in range(4):
            a = rnd.randrange(size)
            b = min(size - 1, a + rnd.randrange(3 * CHUNK))
            async with http.get(f"{worker.url}/{bucket}/model.bin", headers={"Range": f"bytes={a}-{b}"}) as resp:
                assert resp.status == 206 and await resp.read() == body[a:b + 1]

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(reader(i, http) for i in range(32)))
        origin = [await metric(http, w.url, "p2pcache_origin_bytes_total") for w in cluster.workers]
        peer = [await metric(http, w.url, "p2pcache_peer_bytes_total") for w in cluster.workers]
        peer_served = [await metric(http, w.url, "p2pcache_peer_bytes_served_total") for w in cluster.workers]
        failures = [await metric(http, w.url, "p2pcache_peer_failures_total") for w in cluster.workers]

    # Counted by the S3 server itself: every byte of the object once, never more.
    assert s3.get_bytes - before == size, f"origin bytes {origin}, peer failures {failures}"
    # And the workers agree: each chunk was filled by its owner and is held there only (readers
    # through other workers streamed it from the owner: received as sent, none copied).
    etag = s3_client.head_object(Bucket=bucket, Key="model.bin")["ETag"]
    info, placement = ObjectInfo(bucket, "model.bin", etag, size), cluster.workers[0].placement
    owned = {w.id: 0 for w in cluster.workers}
    for i in range(chunk_count(size, CHUNK)):
        c = info.chunk(i, CHUNK)
        owned[placement.owner(c).id] += c.length
    assert origin == [owned[w.id] for w in cluster.workers]
    for i in range(chunk_count(size, CHUNK)):
        c = info.chunk(i, CHUNK)
        assert [w.id for w in cluster.workers if c.name in w.store] == [placement.owner(c).id]
    assert sum(peer) == sum(peer_served) > 0
    for w in cluster.workers:  # every reader's pins and streams were released
        await wait_for(lambda: w.chunks.budget.streams == 0 and not w.store._pins, what="streams to close")


async def test_warm_reads_do_not_touch_s3(cluster, s3, s3_client, bucket):
    body = random.Random(2).randbytes(3 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="warm.bin", Body=body)
    async with aiohttp.ClientSession() as http:
        url = f"{cluster.workers[0].url}/{bucket}/warm.bin"
        async with http.get(url) as resp:
            assert await resp.read() == body
        before_bytes, before_requests = s3.get_bytes, s3.get_requests
        for worker in cluster.workers:
            for _ in range(3):
                async with http.get(f"{worker.url}/{bucket}/warm.bin", headers={"Range": "bytes=1000-"}) as resp:
                    assert await resp.read() == body[1000:]
    assert (s3.get_bytes, s3.get_requests) == (before_bytes, before_requests)


async def test_with_two_replicas_followers_copy_from_primaries_not_from_s3(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(3, replicas=2)
    size = 12 * CHUNK
    body = random.Random(9).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="r.bin", Body=body)
    before = s3.get_bytes
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            await asyncio.gather(*(_read_all(http, f"{w.url}/{bucket}/r.bin", body) for w in cluster.workers))
        peer = [await metric(http, w.url, "p2pcache_peer_bytes_total") for w in cluster.workers]
    assert s3.get_bytes - before == size  # still once from S3
    assert sum(peer) > 0  # followers filled from their primaries
    assert sum(w.store.used for w in cluster.workers) > size  # and now hold second copies


async def _read_all(http: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == body
