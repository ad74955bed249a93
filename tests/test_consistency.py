"""The consistency contract of the README: what a read through the cache may lag behind S3, and by how much."""

from __future__ import annotations

import asyncio
import contextlib
import random

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import CHUNK, metric, wait_for

TTL = 5.0  # the default --meta-ttl


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache_client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def read(c, bucket: str, key: str, **kw) -> tuple[bytes, str]:
    resp = c.get_object(Bucket=bucket, Key=key, **kw)
    return resp["Body"].read(), resp["ETag"]


def status(fn, **kw) -> tuple[str, int]:
    with pytest.raises(ClientError) as info:
        fn(**kw)
    return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]


async def test_with_meta_ttl_0_overwrites_and_deletes_show_at_once(cluster_factory, bucket, s3_client, s3):
    cluster = await cluster_factory(2, meta_ttl=0)
    cache = cache_client(cluster.workers[0].url)
    v1, v2 = b"1" * (3 * CHUNK + 1), b"2" * (2 * CHUNK + 7)

    def check():
        s3_client.put_object(Bucket=bucket, Key="k", Body=v1)
        assert read(cache, bucket, "k")[0] == v1
        etag2 = s3_client.put_object(Bucket=bucket, Key="k", Body=v2)["ETag"]
        assert read(cache, bucket, "k") == (v2, etag2)
        assert cache.head_object(Bucket=bucket, Key="k")["ContentLength"] == len(v2)
        assert [o["Key"] for o in cache.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
        s3_client.delete_object(Bucket=bucket, Key="k")
        assert status(cache.get_object, Bucket=bucket, Key="k") == ("NoSuchKey", 404)
        assert status(cache.head_object, Bucket=bucket, Key="k")[1] == 404
        assert "Contents" not in cache.list_objects_v2(Bucket=bucket)
        s3_client.put_object(Bucket=bucket, Key="k", Body=v1)  # back again, at once
        assert read(cache, bucket, "k")[0] == v1
        assert bucket in [b["Name"] for b in cache.list_buckets()["Buckets"]]
        s3_client.delete_object(Bucket=bucket, Key="k")
        s3_client.delete_bucket(Bucket=bucket)
        assert bucket not in [b["Name"] for b in cache.list_buckets()["Buckets"]]
        assert status(cache.get_object, Bucket=bucket, Key="k") == ("NoSuchBucket", 404)
        s3_client.create_bucket(Bucket=bucket)

    await asyncio.to_thread(check)


async def test_with_meta_ttl_0_every_read_asks_s3_once(cluster_factory, bucket, s3_client, s3):
    cluster = await cluster_factory(1, meta_ttl=0)
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    url = f"{cluster.workers[0].url}/{bucket}/k"
    heads = s3.head_requests
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            async with http.get(url, headers={"Range": f"bytes={i}-{i + 9}"}) as resp:
                assert resp.status == 206
            async with http.head(url) as resp:
                assert resp.status == 200
    assert s3.head_requests - heads == 10


async def test_default_ttl_serves_the_old_version_at_most_ttl_seconds(cluster_factory, bucket, s3_client, s3):
    clock = Clock()
    cluster = await cluster_factory(1, clock=clock)  # one worker: every chunk it read stays local
    assert cluster.workers[0].config.meta_ttl == TTL
    cache = cache_client(cluster.workers[0].url)
    v1, v2 = b"1" * (2 * CHUNK), b"2" * (2 * CHUNK)

    def check():
        etag1 = s3_client.put_object(Bucket=bucket, Key="k", Body=v1)["ETag"]
        heads = s3.head_requests
        for _ in range(3):
            assert read(cache, bucket, "k") == (v1, etag1)
        assert s3.head_requests - heads == 1  # one HEAD per TTL
        etag2 = s3_client.put_object(Bucket=bucket, Key="k", Body=v2)["ETag"]
        clock.now += TTL - 0.1  # within the bound: the old version, whole, never a mix
        assert read(cache, bucket, "k") == (v1, etag1)
        assert cache.head_object(Bucket=bucket, Key="k")["ETag"] == etag1
        clock.now += 0.1  # the bound: the version S3 has now
        assert read(cache, bucket, "k") == (v2, etag2)

        s3_client.delete_object(Bucket=bucket, Key="k")
        clock.now += TTL - 0.1
        assert read(cache, bucket, "k") == (v2, etag2)  # its chunks are still here
        clock.now += 0.1
        assert status(cache.get_object, Bucket=bucket, Key="k") == ("NoSuchKey", 404)

    await asyncio.to_thread(check)


async def test_a_reader_can_ask_for_the_newest_version(cluster_factory, bucket, s3_client):
    clock = Clock()
    cluster = await cluster_factory(1, clock=clock)
    cache = cache_client(cluster.workers[0].url)
    url = f"{cluster.workers[0].url}/{bucket}"

    def overwrite(key: str) -> str:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"old")
        assert read(cache, bucket, key)[0] == b"old"
        return s3_client.put_object(Bucket=bucket, Key=key, Body=b"new!")["ETag"]

    def check():
        # If-Match with the new ETag: the cache looks again rather than answer 412.
        etag = overwrite("a")
        assert read(cache, bucket, "a", IfMatch=etag) == (b"new!", etag)
        overwrite("b")
        assert read(cache, bucket, "b")[0] == b"old"  # within the TTL, as documented
        return overwrite("c")

    etag_c = await asyncio.to_thread(check)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/b", headers={"Cache-Control": "no-cache"}) as resp:
            assert await resp.read() == b"new!"
        async with http.get(f"{url}/c", headers={"Cache-Control": "max-age=0"}) as resp:
            assert (await resp.read(), resp.headers["ETag"]) == (b"new!", etag_c)
        s3_client.delete_object(Bucket=bucket, Key="c")
        async with http.head(f"{url}/c", headers={"Cache-Control": "no-cache"}) as resp:
            assert resp.status == 404
        async with http.get(url, params={"list-type": "2"}, headers={"Cache-Control": "no-cache"}) as resp:
            assert "<Key>c</Key>" not in await resp.text()



async def test_an_object_remembered_missing_is_found_by_no_cache_and_if_match(cluster_factory, bucket, s3_client):
    """Every worker remembers the key as missing; then it is created. A reader's no-cache (or
    If-Match with the new ETag) makes its worker ask S3, and the chunks' owners, which still
    remember "missing", must look again too rather than answer 404 for an object just seen."""
    cluster = await cluster_factory(3)
    caches = [cache_client(w.url) for w in cluster.workers]
    body = b"x" * (2 * CHUNK + 5)  # three chunks: most are owned by another worker than the reader's

    def forget_then_create(key: str) -> str:
        for cache in caches:
            assert status(cache.get_object, Bucket=bucket, Key=key) == ("NoSuchKey", 404)
        return s3_client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]

    etag = await asyncio.to_thread(forget_then_create, "by-etag")
    for cache in caches:
        assert await asyncio.to_thread(read, cache, bucket, "by-etag", IfMatch=etag) == (body, etag)
    etag = await asyncio.to_thread(forget_then_create, "no-cache")
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:
            async with http.get(f"{w.url}/{bucket}/no-cache", headers={"Cache-Control": "no-cache"}) as resp:
                assert (resp.status, resp.headers.get("ETag"), await resp.read()) == (200, etag, body)


async def _answered_by(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """How many requests each serving process answered itself, not passed to the coordinator (by process index)."""
    async with http.get(f"{url}/_p2p/metrics") as resp:
        text = await resp.text()
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("p2pcache_process_requests_total{")}


async def _get(http: aiohttp.ClientSession, url: str, headers=None) -> tuple[int, bytes]:
    """The status and body; of an error, its S3 code (the body has the request's id)."""
    async with http.get(url, headers=headers or {}) as resp:
        body = await resp.read()
        return resp.status, body if resp.status < 300 else body.partition(b"<Code>")[2].partition(b"<")[0]


async def _cached_by_every_process(http: aiohttp.ClientSession, worker_url: str, url: str, body: bytes) -> None:
    """Read `url` on new connections until both serving processes have answered it from their
    chunk files: each then holds the object's identity (for half the long --meta-ttl)."""
    assert await _get(http, url) == (200, body)  # the coordinator fills its chunks
    await _until_both_answered(http, worker_url, lambda: [_get(http, url) for _ in range(16)], [(200, body)] * 16)


async def _everyone_sees(http: aiohttp.ClientSession, worker_url: str, url: str, want: tuple[int, bytes]) -> None:
    """Reads on new connections, whole and ranged (the fast path's), each of which must see
    `want`, until both serving processes have answered some of them."""
    status, body = want
    ranged = (206, body[10:1010]) if status == 200 else want

    def reads() -> list:
        return [_get(http, url, {"Range": "bytes=10-1009"} if i % 2 else None) for i in range(24)]

    await _until_both_answered(http, worker_url, reads, [ranged if i % 2 else want for i in range(24)])


async def _until_both_answered(http: aiohttp.ClientSession, worker_url: str, reads, want: list) -> None:
    """Bursts of `reads()` (each answer as in `want`) until both serving processes have answered
    some: the kernel places connections (SO_REUSEPORT), sometimes a whole burst on one process."""
    base = await _answered_by(http, worker_url)

    async def both() -> bool:
        counts = await _answered_by(http, worker_url)
        return all(counts.get(p, 0) > base.get(p, 0) for p in ("0", "1"))

    for _ in range(10):
        got = await asyncio.gather(*reads())
        other = [(i, g[0]) for i, g in enumerate(got) if g != want[i]]
        assert not other, f"{len(other)} of {len(got)} reads answered another version: {other}"
        with contextlib.suppress(AssertionError):  # reports come every 0.2 s: else another burst
            await wait_for(both, timeout=1.0, what="both processes' answers")
            return
    raise AssertionError(f"one serving process answered every read: {await _answered_by(http, worker_url)}")


@pytest.mark.parametrize("change", ["overwrite", "delete"])
async def test_after_a_no_cache_read_no_serving_process_answers_the_older_version(cluster_factory, bucket,
                                                                                  s3_client, change):
    """Each answer may lag S3 by --meta-ttl, but not behind an answer already given: once a
    no-cache read has seen a new version (or none), every later read on any connection sees it,
    whichever serving process the kernel gives that connection to."""
    cluster = await cluster_factory(1, serve_processes=2, meta_ttl=60.0)  # the lag cannot run out here
    worker = cluster.workers[0]
    url = f"{worker.url}/{bucket}/k"
    v1, v2 = random.Random(1).randbytes(2 * CHUNK), random.Random(2).randbytes(2 * CHUNK + 7)
    s3_client.put_object(Bucket=bucket, Key="k", Body=v1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await _cached_by_every_process(http, worker.url, url, v1)
        if change == "overwrite":
            s3_client.put_object(Bucket=bucket, Key="k", Body=v2)
            want = (200, v2)
        else:
            s3_client.delete_object(Bucket=bucket, Key="k")
            want = (404, b"NoSuchKey")
        assert await _get(http, url, {"Cache-Control": "no-cache"}) == want
        await _everyone_sees(http, worker.url, url, want)
        assert await metric(http, worker.url, "p2pcache_object_changes_total") == 1  # the HEADs before found none


async def test_a_newer_version_learned_by_if_match_or_a_process_lookup_is_seen_by_every_process(
        cluster_factory, bucket, s3_client):
    """The coordinator learns of a new version from an If-Match naming it, or from a serving
    process's lookup of the version S3 has now (after a chunk's owner answered ObjectChanged):
    the other processes stop using the older one before that answer goes out."""
    cluster = await cluster_factory(1, serve_processes=2, meta_ttl=60.0)
    worker = cluster.workers[0]
    sock = f"{worker.procs._dir}/coordinator.sock"
    v1, v2 = random.Random(3).randbytes(2 * CHUNK), random.Random(4).randbytes(2 * CHUNK + 7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as local:
        for key in ("by-if-match", "by-lookup"):
            url = f"{worker.url}/{bucket}/{key}"
            s3_client.put_object(Bucket=bucket, Key=key, Body=v1)
            await _cached_by_every_process(http, worker.url, url, v1)
            etag = s3_client.put_object(Bucket=bucket, Key=key, Body=v2)["ETag"]
            if key == "by-if-match":
                assert await _get(http, url, {"If-Match": etag}) == (200, v2)
            else:  # what a serving process asks after ObjectChanged (worker/reads.py `_object`, fresh)
                params = {"bucket": bucket, "key": key, "max_age": "0"}
                async with local.get("http://coordinator/_p2p/local/object", params=params,
                                     headers={"X-P2P-Local": worker.procs._token}) as resp:
                    assert (resp.status, (await resp.json())["etag"]) == (200, etag)
            await _everyone_sees(http, worker.url, url, (200, v2))
