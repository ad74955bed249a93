"""Range reads through a real 3-worker cluster match S3 byte for byte, with S3's headers."""

from __future__ import annotations

import random

import aiohttp
import pytest

from conftest import CHUNK

SIZES = {"empty": 0, "one": 1, "small": 1000, "exact": 2 * CHUNK, "multi": 5 * CHUNK + 123}


@pytest.fixture
def objects(s3_client, bucket):
    rnd = random.Random(7)
    data = {name: rnd.randbytes(size) for name, size in SIZES.items()}
    for name, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=f"dir/{name}.bin", Body=body,
                             ContentType="application/x-test")
    return data


def cases(size: int) -> list[tuple[str | None, int, int]]:
    """(Range header, expected start, expected stop) for an object of `size` bytes."""
    out = [(None, 0, size)]
    if size == 0:
        return out
    out += [(f"bytes=0-{size - 1}", 0, size), (f"bytes={size - 1}-", size - 1, size),
            ("bytes=-1", size - 1, size), (f"bytes=-{size + 10}", 0, size),
            (f"bytes=0-{size + 100}", 0, size), ("bytes=0-0", 0, 1)]
    if size > CHUNK:
        out += [(f"bytes={CHUNK - 1}-{CHUNK}", CHUNK - 1, CHUNK + 1),  # crosses a boundary
                (f"bytes={CHUNK}-{2 * CHUNK - 1}", CHUNK, 2 * CHUNK),  # exactly one chunk
                (f"bytes={CHUNK // 2}-", CHUNK // 2, size), (f"bytes=-{CHUNK + 7}", size - CHUNK - 7, size)]
    rnd = random.Random(size)
    for _ in range(6):
        a = rnd.randrange(size)
        b = rnd.randrange(a, size)
        out.append((f"bytes={a}-{b}", a, b + 1))
    return out


async def test_every_worker_serves_every_range_byte_identical(cluster, objects, bucket, s3_client):
    async with aiohttp.ClientSession() as http:
        for name, body in objects.items():
            key = f"dir/{name}.bin"
            head = s3_client.head_object(Bucket=bucket, Key=key)
            for worker in cluster.workers:
                for header, start, stop in cases(len(body)):
                    headers = {"Range": header} if header else {}
                    async with http.get(f"{worker.url}/{bucket}/{key}", headers=headers) as resp:
                        got = await resp.read()
                        assert got == body[start:stop], (name, worker.id, header)
                        assert resp.status == (206 if header else 200)
                        assert resp.headers["Content-Length"] == str(stop - start)
                        assert resp.headers["ETag"] == head["ETag"]
                        assert resp.headers["Accept-Ranges"] == "bytes"
                        assert resp.headers["Content-Type"] == "application/x-test"
                        assert resp.headers["Last-Modified"] == head["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
                        if header:
                            assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(body)}"
                        else:
                            assert "Content-Range" not in resp.headers


async def test_bytes_and_headers_match_a_direct_s3_ranged_get(cluster, objects, bucket, s3_client):
    key = "dir/multi.bin"
    async with aiohttp.ClientSession() as http:
        for header in ("bytes=100-300000", "bytes=-5000", f"bytes={3 * CHUNK}-"):
            direct = s3_client.get_object(Bucket=bucket, Key=key, Range=header)
            async with http.get(f"{cluster.workers[1].url}/{bucket}/{key}", headers={"Range": header}) as resp:
                assert await resp.read() == direct["Body"].read()
                assert resp.headers["Content-Range"] == direct["ContentRange"]
                assert int(resp.headers["Content-Length"]) == direct["ContentLength"]


async def test_head_returns_headers_without_a_body(cluster, objects, bucket):
    url = f"{cluster.workers[0].url}/{bucket}/dir/multi.bin"
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(SIZES["multi"])
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert await resp.read() == b""
        async with http.head(url, headers={"Range": "bytes=10-19"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 10-19/{SIZES['multi']}"
            assert resp.headers["Content-Length"] == "10"


@pytest.mark.parametrize("path", ["dir/nope.bin", "nested/missing/key"])
async def test_missing_key_is_404_with_s3_error_body(cluster, bucket, path):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/{bucket}/{path}") as resp:
            assert resp.status == 404
            body = await resp.text()
            assert "<Code>NoSuchKey</Code>" in body and path in body
            assert resp.headers["x-amz-request-id"]


async def test_missing_bucket_is_404(cluster):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/no-such-bucket-here/key") as resp:
            assert resp.status == 404
            assert "NoSuch" in await resp.text()


@pytest.mark.parametrize("name,header", [
    ("small", "bytes=1000-"), ("small", "bytes=5000-6000"), ("small", "bytes=-0"),
    ("one", "bytes=1-1"), ("empty", "bytes=0-"), ("empty", "bytes=0-0"),  # a suffix of it is all of it: 200
])
async def test_unsatisfiable_range_is_416_with_the_size(cluster, objects, bucket, s3_client, name, header):
    size = SIZES[name]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[2].url}/{bucket}/dir/{name}.bin", headers={"Range": header}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{size}"
            assert "<Code>InvalidRange</Code>" in await resp.text()


@pytest.mark.parametrize("header", [
    "bytes=abc", "bytes=5-3", "items=0-10", "bytes=0-1,4-5", "bytes=-", "bytes 0-10", "bytes=1-2-3",
])
async def test_malformed_range_is_ignored_like_s3(cluster, objects, bucket, header):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/{bucket}/dir/small.bin", headers={"Range": header}) as resp:
            assert resp.status == 200
            assert "Content-Range" not in resp.headers
            assert await resp.read() == objects["small"]
