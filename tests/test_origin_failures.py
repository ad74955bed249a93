"""Origin failures become clear 5xx answers; a changed object is never mixed with the old."""

from __future__ import annotations

import random
import socket

import aiohttp
import pytest

from conftest import CHUNK
from p2pcache.objects import ObjectInfo


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_origin_is_503_with_a_reason(cluster_factory, tmp_path):
    cluster = await cluster_factory(1)
    await cluster.add_worker(s3_endpoint=f"http://127.0.0.1:{closed_port()}")
    await cluster.wait_converged()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[1].url}/any-bucket/some/key") as resp:
            assert resp.status == 503
            assert "origin unreachable" in resp.headers["X-P2P-Reason"]
            assert "<Code>ServiceUnavailable</Code>" in await resp.text()


async def test_a_bucket_outside_the_allowlist_is_403(cluster_factory, bucket):
    cluster = await cluster_factory(1, allowed_buckets=frozenset({"only-this-one"}))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/{bucket}/k") as resp:
            assert resp.status == 403
            assert "<Code>AccessDenied</Code>" in await resp.text()


async def test_a_changed_object_is_re_resolved_before_the_response_starts(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2, meta_ttl=3600)  # trust the cached ETag for the whole test
    old, new = (random.Random(i).randbytes(4 * CHUNK) for i in (5, 6))
    s3_client.put_object(Bucket=bucket, Key="o.bin", Body=old)
    url = f"{cluster.workers[0].url}/{bucket}/o.bin"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=0-9"}) as resp:
            assert await resp.read() == old[:10]
        s3_client.put_object(Bucket=bucket, Key="o.bin", Body=new)
        new_etag = s3_client.head_object(Bucket=bucket, Key="o.bin")["ETag"]
        # Chunk 2 is cold: S3 answers 412 to the old ETag, the worker re-HEADs and serves the new version.
        async with http.get(url, headers={"Range": f"bytes={2 * CHUNK}-{3 * CHUNK - 1}"}) as resp:
            assert resp.status == 206
            assert resp.headers["ETag"] == new_etag
            assert await resp.read() == new[2 * CHUNK:3 * CHUNK]


async def test_an_object_changing_mid_response_aborts_it_rather_than_mix_versions(
        cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, meta_ttl=3600, readahead=1)
    old, new = (random.Random(i).randbytes(4 * CHUNK) for i in (7, 8))
    s3_client.put_object(Bucket=bucket, Key="o.bin", Body=old)
    url = f"{cluster.workers[0].url}/{bucket}/o.bin"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": f"bytes=0-{CHUNK - 1}"}) as resp:
            assert await resp.read() == old[:CHUNK]  # chunk 0 of the old version is cached
        s3_client.put_object(Bucket=bucket, Key="o.bin", Body=new)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                assert resp.status == 200  # chunk 0 went out; chunk 1 hits 412 at S3
                await resp.read()
        async with http.get(url) as resp:  # the next read sees only the new version
            assert await resp.read() == new


async def test_no_cache_revalidates_and_a_412_names_the_current_version(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, meta_ttl=3600)
    s3_client.put_object(Bucket=bucket, Key="v.bin", Body=b"one")
    url = f"{cluster.workers[0].url}/{bucket}/v.bin"
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as resp:
            old = resp.headers["ETag"]
        s3_client.put_object(Bucket=bucket, Key="v.bin", Body=b"two!")
        new = s3_client.head_object(Bucket=bucket, Key="v.bin")["ETag"]
        async with http.head(url) as resp:
            assert resp.headers["ETag"] == old  # trusted for meta_ttl
        async with http.head(url, headers={"Cache-Control": "no-cache"}) as resp:
            assert resp.headers["ETag"] == new and resp.headers["Content-Length"] == "4"
        async with http.get(url, headers={"If-Match": old}) as resp:
            assert resp.status == 412
            assert resp.headers["ETag"] == new
            assert "<Code>PreconditionFailed</Code>" in await resp.text()


async def answer(http: aiohttp.ClientSession, url: str, rng: tuple[int, int] = (0, 10)):
    """(status, headers, body text) of a ranged read that fails."""
    async with http.get(url, headers={"Range": f"bytes={rng[0]}-{rng[1] - 1}"}) as resp:
        return resp.status, resp.headers, await resp.text()


async def test_a_connection_reset_by_s3_is_named_a_reset_not_a_failure_to_connect(
        cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_deadline=0.3, origin_breaker=0)
    s3_client.put_object(Bucket=bucket, Key="r.bin", Body=b"r" * 1000)
    fault_proxy.get_mode = "reset"  # the HEAD passes; every GET is reset once S3 has the request
    async with aiohttp.ClientSession() as http:
        status, headers, text = await answer(http, f"{cluster.workers[0].url}/{bucket}/r.bin")
    assert (status, headers["X-P2P-Origin"]) == (503, "unreachable")
    assert "connection reset by the origin" in headers["X-P2P-Reason"], headers["X-P2P-Reason"]
    assert "Could not connect" not in text and fault_proxy.injected["reset"] >= 2


async def test_500s_that_open_the_breaker_stay_a_502_origin_error_naming_them(
        cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_breaker=3, meta_ttl=3600)
    s3_client.put_object(Bucket=bucket, Key="e.bin", Body=b"e" * 1000)
    url = f"{cluster.workers[0].url}/{bucket}/e.bin"
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as resp:  # the ETag is known: only GETs will fail
            assert resp.status == 200
        fault_proxy.get_mode = "error"
        status, headers, text = await answer(http, url)  # 3 500s, then the breaker refuses the retry
        assert fault_proxy.gets == 3
        again = await answer(http, url, (100, 110))  # refused (or a probe that failed, then refused)
    for status, headers, text in ((status, headers, text), again):
        assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (502, "OriginError", "error")
        reason = headers["X-P2P-Reason"]
        assert "500 InternalError" in reason and "circuit breaker" in reason, reason
        assert int(headers["Retry-After"]) >= 1 and "<Code>OriginError</Code>" in text


async def test_throttling_of_a_head_names_slowdown(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_breaker=0)
    s3_client.put_object(Bucket=bucket, Key="h.bin", Body=b"h" * 1000)
    fault_proxy.mode = "slowdown"  # a HEAD's 503 has no body: no error code from S3
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await answer(http, f"{cluster.workers[0].url}/{bucket}/h.bin")
    reason = headers["X-P2P-Reason"]
    assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (503, "SlowDown", "throttled")
    assert "503 SlowDown" in reason and "503 503" not in reason, reason


async def test_a_partial_answer_without_content_range_says_so(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url)
    s3_client.put_object(Bucket=bucket, Key="n.bin", Body=b"n" * (2 * CHUNK))
    fault_proxy.script = ["norange"]  # the GET of chunk 1 gets its 206 without a Content-Range
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await answer(http, f"{cluster.workers[0].url}/{bucket}/n.bin", (CHUNK, CHUNK + 10))
    reason = headers["X-P2P-Reason"]
    assert (status, headers["X-P2P-Error"]) == (502, "OriginError")
    assert f"206 without a Content-Range to bytes={CHUNK}-{2 * CHUNK - 1}" in reason and "None" not in reason, reason


async def test_a_missing_key_is_404_when_the_cache_may_read_objects_but_not_head_the_bucket(
        cluster_factory, fault_proxy, s3_client, bucket):
    """A HEAD's 404 has no body to say whether the key or the bucket is missing, so a HeadBucket
    follows. A least-privilege role may not make it (403): the key's 404 stands. Before, the
    403 was the answer, a 502 that SDKs retried for seconds."""
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url)
    fault_proxy.by_request = lambda method, target: (
        "denied" if method == "HEAD" and "/" not in target.split("?")[0].strip("/") else None)
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "HEAD"):
            async with http.request(method, f"{cluster.workers[0].url}/{bucket}/no/such/key") as resp:
                assert (resp.status, resp.headers["X-P2P-Error"]) == (404, "NoSuchKey"), method
        assert fault_proxy.injected["denied"] > 0  # the HeadBucket was made, and refused


async def test_answers_botocore_cannot_parse_are_502s_and_the_owners_alone(
        cluster_factory, fault_proxy, s3_client, bucket):
    """A HEAD without an ETag or a Content-Length, a HEAD or a GET with a header botocore cannot
    parse: a 502 OriginError in one line, never a 500 with a traceback; and a worker that asked
    the chunk's owner passes the owner's error on rather than read the chunk from S3 itself."""
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url)
    heads = {"no-etag": {"ETag": None}, "no-length": {"Content-Length": None},
             "bad-date": {"Last-Modified": "garbage"}, "bad-count": {"x-amz-tagging-count": "zz"},
             "too-big": {"Content-Length": str(1 << 50)}}  # 1 PiB: no S3 store holds that
    async with aiohttp.ClientSession() as http:
        for key, headers in heads.items():
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"h" * 1000)
            fault_proxy.set_headers = headers
            fault_proxy.by_request = lambda method, target, key=key: (
                "headers" if method == "HEAD" and target.startswith(f"/{bucket}/{key}") else None)
            status, answered, _ = await answer(http, f"{cluster.workers[0].url}/{bucket}/{key}")
            assert (status, answered["X-P2P-Error"], answered["X-P2P-Origin"]) == (502, "OriginError", "error"), key
        assert answered["X-P2P-Reason"].endswith(f"holds {1 << 50} bytes, more than the 50 TiB any S3 store holds")
        fault_proxy.by_request = None
        body = random.Random(9).randbytes(1000)
        s3_client.put_object(Bucket=bucket, Key="g.bin", Body=body)
        etag = s3_client.head_object(Bucket=bucket, Key="g.bin")["ETag"]
        owner = cluster.workers[0].placement.owners(ObjectInfo(bucket, "g.bin", etag, 1000).chunk(0, CHUNK))[0]
        other = next(w for w in cluster.workers if w.id != owner.id)
        fault_proxy.set_headers, fault_proxy.get_mode = {"Last-Modified": "garbage"}, "headers"
        status, answered, text = await answer(http, f"{other.url}/{bucket}/g.bin")
    reason = answered["X-P2P-Reason"]
    assert (status, answered["X-P2P-Error"], answered["X-P2P-Origin"]) == (502, "OriginError", "error")
    assert "cannot be parsed" in reason and "garbage" in reason, reason
    assert fault_proxy.gets == 1  # at the owner only


async def test_a_429_from_s3_is_retried_and_answered_as_throttling(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_deadline=0.3, origin_breaker=0)
    body = random.Random(10).randbytes(2 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="t.bin", Body=body)
    url = f"{cluster.workers[0].url}/{bucket}/t.bin"
    fault_proxy.script = ["throttle"]
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=0-9"}) as resp:
            assert (resp.status, await resp.read()) == (206, body[:10])
        assert fault_proxy.gets == 2
        fault_proxy.get_mode = "throttle"
        status, headers, _ = await answer(http, url, (CHUNK, CHUNK + 10))
    assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (503, "SlowDown", "throttled")
    assert "429 TooManyRequests" in headers["X-P2P-Reason"] and fault_proxy.injected["throttle"] >= 3


async def test_a_part_head_that_fails_once_is_retried(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url)
    body = random.Random(11).randbytes(1000)
    s3_client.put_object(Bucket=bucket, Key="p.bin", Body=body)
    faults = ["slowdown"]
    fault_proxy.by_request = lambda method, target: (
        faults.pop() if faults and method == "HEAD" and "partNumber=" in target else None)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/{bucket}/p.bin?partNumber=1") as resp:
            assert (resp.status, await resp.read()) == (206, body)
    assert fault_proxy.injected == {"slowdown": 1}


async def test_bytes_past_an_s3_answers_end_are_retried_and_reported_in_one_short_line(
        cluster_factory, fault_proxy, s3_client, bucket):
    """Bytes after an answer on a kept-alive connection: aiohttp reads them as the next answer's
    status line, and botocore's error quoted them all (kilobytes of binary, in the answer's
    reason, its XML and the log). The fault hits answers that come in one segment: small ones."""
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_deadline=0.3, origin_breaker=0)
    bodies = {key: random.Random(key).randbytes(1000) for key in ("j1", "j2")}
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    url = f"{cluster.workers[0].url}/{bucket}/"
    fault_proxy.script = ["junk"]
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "j1") as resp:
            assert (resp.status, await resp.read()) == (200, bodies["j1"])
        assert (fault_proxy.gets, fault_proxy.injected["junk"]) == (2, 1)
        fault_proxy.get_mode = "junk"
        status, headers, text = await answer(http, url + "j2")
    reason = headers["X-P2P-Reason"]
    assert (status, headers["X-P2P-Origin"]) == (503, "unreachable")
    assert "Bad status line" in reason and len(reason) < 400, reason
    assert len(text) < 1000, len(text)
