"""Hits, misses and peer bytes add up to the chunks and bytes of the reads, alone or with serving processes."""

from __future__ import annotations

import random

import aiohttp
import pytest

from conftest import CHUNK, wait_for
from p2pcache import blocksums
from p2pcache.objects import ObjectInfo
from p2pcache.ranges import chunk_count

NAMES = {"hits": "p2pcache_cache_hits_total", "misses": "p2pcache_cache_misses_total",
         "peer": "p2pcache_peer_bytes_total", "peer_served": "p2pcache_peer_bytes_served_total",
         "origin": "p2pcache_origin_bytes_total"}


async def _counts(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/_p2p/metrics") as resp:
        samples = dict(line.rsplit(" ", 1) for line in (await resp.text()).splitlines() if line[:1] != "#")
    return {short: float(samples[name]) for short, name in NAMES.items()}


async def _settle(http: aiohttp.ClientSession, workers, want: list[dict]) -> None:
    """Until the workers' counters are `want` (serving processes report a moment later)."""
    got = []

    async def equal() -> bool:
        got[:] = [await _counts(http, w.url) for w in workers]
        return got == want
    try:
        await wait_for(equal, timeout=10, what="the counters")
    except AssertionError:
        assert got == want  # says which differ
        raise


async def _get(http: aiohttp.ClientSession, url: str, rng: tuple[int, int] | None = None) -> bytes:
    async with http.get(url, headers={"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}) as resp:
        assert resp.status == (206 if rng else 200)
        return await resp.read()


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_reads_through_a_non_owner_count_hits_misses_and_peer_bytes(cluster_factory, s3_client, bucket,
                                                                          serve_processes):
    cluster = await cluster_factory(2, serve_processes=serve_processes)
    reader, other = cluster.workers
    size = 9 * CHUNK + 4321
    body = random.Random(20).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    info = ObjectInfo(bucket, "m.bin", s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"], size)
    chunks = [info.chunk(i, CHUNK) for i in range(chunk_count(size, CHUNK))]
    mine = [c for c in chunks if reader.placement.owner(c).id == reader.id]
    theirs = [c for c in chunks if c not in mine]
    assert mine and theirs
    n, mine_bytes, their_bytes = len(chunks), sum(c.length for c in mine), sum(c.length for c in theirs)
    url = f"{reader.url}/{bucket}/m.bin"
    zero = dict.fromkeys(NAMES, 0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, url) == body  # cold: every chunk a miss at the reader; the owner's a fill
        await _settle(http, [reader, other], [
            zero | {"misses": n, "peer": their_bytes, "origin": mine_bytes},
            zero | {"peer_served": their_bytes, "origin": their_bytes}])

        assert await _get(http, url) == body  # warm: its own chunks are hits, the owner's chunks misses
        await _settle(http, [reader, other], [
            zero | {"hits": len(mine), "misses": n + len(theirs), "peer": 2 * their_bytes, "origin": mine_bytes},
            zero | {"peer_served": 2 * their_bytes, "origin": their_bytes}])

        # Small ranges inside one chunk (the paths that send one piece): one hit, one miss, and
        # the whole blocks around the range sent and received (the receiver checks their sums).
        a, b = mine[0].start + 100, theirs[0].start + 200
        lo, hi = blocksums.aligned(200, 3000, theirs[0].length)
        block = hi - lo  # the blocks around bytes 200-3200 of the chunk
        assert await _get(http, url, (a, a + 1000)) == body[a:a + 1000]
        assert await _get(http, url, (b, b + 3000)) == body[b:b + 3000]
        await _settle(http, [reader, other], [
            zero | {"hits": len(mine) + 1, "misses": n + len(theirs) + 1, "peer": 2 * their_bytes + block,
                    "origin": mine_bytes},
            zero | {"peer_served": 2 * their_bytes + block, "origin": their_bytes}])


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_chunk_resumed_after_a_bad_block_is_counted_once(cluster_factory, s3_client, bucket, serve_processes):
    """A corrupt block mid-chunk: the read goes on from a refill (with serving processes, the
    coordinator reads the rest); the chunk stays the one hit it was when the read reached it."""
    cluster = await cluster_factory(1, serve_processes=serve_processes)
    worker = cluster.workers[0]
    size = 5 * CHUNK + 999
    body = random.Random(21).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="c.bin", Body=body)
    info = ObjectInfo(bucket, "c.bin", s3_client.head_object(Bucket=bucket, Key="c.bin")["ETag"], size)
    n, bad = chunk_count(size, CHUNK), info.chunk(2, CHUNK)
    url = f"{worker.url}/{bucket}/c.bin"
    zero = dict.fromkeys(NAMES, 0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, url) == body
        await _settle(http, [worker], [zero | {"misses": n, "origin": size}])
        with open(worker.store.path(bad.name), "r+b") as f:  # a block past the first: some bytes went out
            f.seek(100_000)
            byte = f.read(1)
            f.seek(100_000)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert await _get(http, url) == body
        await _settle(http, [worker], [zero | {"hits": n, "misses": n, "origin": size + bad.length}])
