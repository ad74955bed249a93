"""What boto3 reads through a worker is what it reads from S3: stored headers, metadata,
`response-*` overrides, parts of multipart uploads, field by field."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import boto3
import pytest
import yarl
from botocore.config import Config
from botocore.exceptions import ClientError

CHUNK = (1 << 20) + 3  # part boundaries (5 MiB + 7, ...) fall inside chunks
MIB5 = 5 << 20  # moto, like S3, wants every part but the last to be at least 5 MiB
PARTS = [MIB5 + 7, MIB5 + 13, 1000]
STORED = dict(CacheControl="max-age=3600, must-revalidate", Expires="Wed, 21 Oct 2026 07:28:00 GMT",
              ContentDisposition='attachment; filename="weights.bin"', ContentLanguage="de-CH",
              ContentEncoding="identity", ContentType="application/x-safetensors")
METADATA = {"model": "llama", "shard": "00001-of-00004", "mixed-case": "Value With Spaces"}
OVERRIDES = dict(ResponseContentType="text/plain", ResponseCacheControl="no-store",
                 ResponseContentDisposition="inline", ResponseContentEncoding="gzip",
                 ResponseContentLanguage="fr", ResponseExpires="Thu, 01 Jan 2026 00:00:00 GMT")


def cache_client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def fields(resp: dict) -> dict:
    """Everything boto3 parsed, but the body, the per-request metadata and checksums (which
    moto sends for the whole object on every GET and the cache never sends)."""
    return {k: v for k, v in resp.items() if k not in ("ResponseMetadata", "Body") and not k.startswith("Checksum")}


def error(fn, **kw) -> tuple[str, int]:
    with pytest.raises(ClientError) as info:
        fn(**kw)
    return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def objects(s3_client, bucket):
    """A single-part object with every stored header, one with UTF-8 metadata, an empty one,
    and a three-part multipart upload with metadata."""
    rnd = random.Random(12)
    out = {"plain": rnd.randbytes(3 * CHUNK + 5), "empty": b""}
    s3_client.put_object(Bucket=bucket, Key="plain", Body=out["plain"], Metadata=METADATA,
                         StorageClass="STANDARD_IA", ServerSideEncryption="AES256", **STORED)
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")

    def utf8_metadata(params, **_):  # as s3-tests does: boto3 refuses non-ASCII metadata itself
        params["headers"]["x-amz-meta-greeting"] = "Grüezi ✓"
    s3_client.meta.events.register("before-call.s3.PutObject", utf8_metadata, unique_id="utf8-meta")
    try:
        out["utf8"] = rnd.randbytes(1000)
        s3_client.put_object(Bucket=bucket, Key="utf8", Body=out["utf8"])
    finally:
        s3_client.meta.events.unregister("before-call.s3.PutObject", unique_id="utf8-meta")

    parts = [rnd.randbytes(n) for n in PARTS]
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key="multi", Metadata=METADATA, **STORED)
    done = [{"PartNumber": i, "ETag": s3_client.upload_part(Bucket=bucket, Key="multi", PartNumber=i, Body=p,
                                                            UploadId=upload["UploadId"])["ETag"]}
            for i, p in enumerate(parts, 1)]
    s3_client.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": done})
    out["multi"], out["parts"] = b"".join(parts), parts
    return out


async def test_get_and_head_carry_every_stored_header_and_metadata(cluster_factory, objects, bucket, s3_client):
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    cache = cache_client(cluster.workers[0].url)

    def check():
        for key in ("plain", "utf8", "multi", "empty"):
            for kw in ({}, {"Range": "bytes=10-2000000"}, {"Range": "bytes=-7"}):
                if key == "empty" and kw:
                    continue
                got, want = cache.get_object(Bucket=bucket, Key=key, **kw), s3_client.get_object(Bucket=bucket, Key=key, **kw)
                assert got["Body"].read() == want["Body"].read()
                assert fields(got) == fields(want), (key, kw)
            assert fields(cache.head_object(Bucket=bucket, Key=key)) == fields(s3_client.head_object(Bucket=bucket, Key=key))
        plain = cache.head_object(Bucket=bucket, Key="plain")
        assert plain["Metadata"] == METADATA and plain["StorageClass"] == "STANDARD_IA"
        assert plain["ServerSideEncryption"] == "AES256" and plain["ExpiresString"] == STORED["Expires"]
        assert {k: plain[k] for k in STORED if k != "Expires"} == {k: v for k, v in STORED.items() if k != "Expires"}
        assert cache.head_object(Bucket=bucket, Key="multi")["Metadata"] == METADATA
        # The UTF-8 value arrives as the same bytes (boto3 decodes header bytes as latin-1).
        assert cache.head_object(Bucket=bucket, Key="utf8")["Metadata"] == {
            "greeting": "Grüezi ✓".encode().decode("latin-1")}

    await asyncio.to_thread(check)


async def test_response_overrides_as_s3_applies_them(cluster_factory, objects, bucket, s3_client):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    cache = cache_client(cluster.workers[0].url)

    def check():
        for kw in ({}, {"Range": "bytes=100-199"}):
            got = cache.get_object(Bucket=bucket, Key="plain", **OVERRIDES, **kw)
            want = s3_client.get_object(Bucket=bucket, Key="plain", **OVERRIDES, **kw)
            assert got["Body"].read() == want["Body"].read()
            assert fields(got) == fields(want)
            assert (got["ContentType"], got["CacheControl"], got["ContentLanguage"]) == ("text/plain", "no-store", "fr")
            assert got["Metadata"] == METADATA  # the rest stays as stored
        # HeadObject takes the same parameters at S3 (moto ignores them on HEAD).
        head = cache.head_object(Bucket=bucket, Key="plain", ResponseContentType="text/plain",
                                 ResponseContentDisposition="inline")
        assert (head["ContentType"], head["ContentDisposition"]) == ("text/plain", "inline")
        assert head["CacheControl"] == STORED["CacheControl"]
        # A value a header cannot hold (it would end the header): S3's 400, not the 500 aiohttp's refusal made.
        for call in (cache.get_object, cache.head_object):
            with pytest.raises(ClientError) as refused:
                call(Bucket=bucket, Key="plain", ResponseContentDisposition='attachment; filename="a\r\nb"')
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    await asyncio.to_thread(check)
    # S3 honours them only on signed requests; an anonymous one gets its 400.
    url = f"{cluster.workers[0].url}/{bucket}/plain?response-content-type=text/plain"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 400 and "<Code>InvalidRequest</Code>" in await resp.text()
        assert "anonymous" in resp.headers["X-P2P-Reason"]
    # Values no header can carry: a control character aiohttp refuses to write (it was a 500
    # and a traceback) and bytes that are not UTF-8 (sent as U+FFFD with a 200): S3's 400.
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/s3/aws4_request, "
                               "SignedHeaders=host, Signature=00"}
    base = f"{cluster.workers[0].url}/{bucket}/plain"
    async with aiohttp.ClientSession() as http:
        for query in ("response-content-type=text%2Fplain%01", "response-content-disposition=a%1Fb",
                      "response-expires=x%7F", "response-cache-control=%0B", "response-content-language=%FF",
                      "response-content-encoding=gzip%C3"):
            for method in ("GET", "HEAD"):
                async with http.request(method, yarl.URL(f"{base}?{query}", encoded=True), headers=signed) as resp:
                    assert (resp.status, resp.headers.get("X-P2P-Error")) == (400, "InvalidArgument"), (method, query)
        async with http.get(yarl.URL(f"{base}?response-content-type=a%09b%EF%BF%BD", encoded=True),
                            headers=signed) as resp:  # a tab, and U+FFFD sent as UTF-8
            assert resp.status == 200 and (b"Content-Type", "a\tb\ufffd".encode()) in resp.raw_headers


async def test_metadata_no_answer_can_carry_is_the_origins_502_not_a_500(cluster_factory, bucket, s3_client):
    """An S3-compatible store (moto here) may keep a control character in user metadata or the
    content type: the worker cannot pass it on (aiohttp refuses to write it: it was a 500 and a
    traceback), and dropping it would be a silent change of the object's headers."""
    cluster = await cluster_factory(1)
    s3_client.put_object(Bucket=bucket, Key="ctl-meta", Body=b"abc", Metadata={"note": "a\x01b"})
    s3_client.put_object(Bucket=bucket, Key="ctl-type", Body=b"abc", ContentType="text/pl\x7fain")
    async with aiohttp.ClientSession() as http:
        for key in ("ctl-meta", "ctl-type"):
            for method in ("GET", "HEAD"):
                async with http.request(method, f"{cluster.workers[0].url}/{bucket}/{key}") as resp:
                    assert (resp.status, resp.headers.get("X-P2P-Error")) == (502, "OriginError"), (key, method)
                    assert "control character" in resp.headers["X-P2P-Reason"], (key, method)


async def test_part_number_on_a_multipart_upload(cluster_factory, objects, bucket, s3_client, s3):
    cluster = await cluster_factory(2, chunk_size=CHUNK)
    cache = cache_client(cluster.workers[0].url)
    size, parts = len(objects["multi"]), objects["parts"]

    def check():
        whole = s3_client.head_object(Bucket=bucket, Key="multi")
        start = 0
        for n, part in enumerate(parts, 1):
            want_range = f"bytes {start}-{start + len(part) - 1}/{size}"
            moto_part = s3_client.head_object(Bucket=bucket, Key="multi", PartNumber=n)
            for got in (cache.head_object(Bucket=bucket, Key="multi", PartNumber=n),
                        cache.get_object(Bucket=bucket, Key="multi", PartNumber=n)):
                if "Body" in got:
                    assert got["Body"].read() == part
                assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
                assert (got["ContentLength"], got["PartsCount"]) == (moto_part["ContentLength"], moto_part["PartsCount"])
                assert got["ContentRange"] == want_range
                # As S3 answers (moto's part HEAD sends the part's ETag and no stored headers):
                # the object's ETag, metadata and stored headers.
                rest = {k: v for k, v in fields(got).items() if k not in ("ContentLength", "ContentRange", "PartsCount")}
                assert rest == {k: v for k, v in fields(whole).items() if k != "ContentLength"}
            start += len(part)
        assert error(cache.get_object, Bucket=bucket, Key="multi", PartNumber=4) == ("InvalidPartNumber", 416)
        assert error(cache.head_object, Bucket=bucket, Key="multi", PartNumber=4)[1] == 416
        assert error(cache.get_object, Bucket=bucket, Key="multi", PartNumber=1, Range="bytes=0-9") == ("InvalidRequest", 400)

    await asyncio.to_thread(check)
    # The parts were served from the object's chunks: reading the whole object now costs S3 nothing.
    before = s3.get_bytes
    assert await asyncio.to_thread(lambda: cache.get_object(Bucket=bucket, Key="multi")["Body"].read()) == objects["multi"]
    assert s3.get_bytes == before


async def test_part_number_on_single_part_objects_matches_s3(cluster_factory, objects, bucket, s3_client):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    cache = cache_client(cluster.workers[0].url)

    def check():
        for fn in ("get_object", "head_object"):
            got = getattr(cache, fn)(Bucket=bucket, Key="plain", PartNumber=1)
            want = getattr(s3_client, fn)(Bucket=bucket, Key="plain", PartNumber=1)
            assert got["ResponseMetadata"]["HTTPStatusCode"] == want["ResponseMetadata"]["HTTPStatusCode"] == 206
            assert fields(got) == fields(want)
            assert "PartsCount" not in got
            if "Body" in got:
                assert got["Body"].read() == want["Body"].read() == objects["plain"]
            # moto answers 416 without S3's XML body; S3's code is InvalidPartNumber.
            assert error(getattr(s3_client, fn), Bucket=bucket, Key="plain", PartNumber=2)[1] == 416
        assert error(cache.get_object, Bucket=bucket, Key="plain", PartNumber=2) == ("InvalidPartNumber", 416)
        assert error(cache.head_object, Bucket=bucket, Key="plain", PartNumber=2)[1] == 416
        empty = cache.get_object(Bucket=bucket, Key="empty", PartNumber=1)
        assert empty["Body"].read() == b"" and empty["ContentLength"] == 0

    await asyncio.to_thread(check)


async def test_malformed_part_numbers_get_s3s_400_before_any_s3_request(cluster_factory, objects, bucket, s3):
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    base = f"{cluster.workers[0].url}/{bucket}/multi"
    heads = s3.head_requests
    async with aiohttp.ClientSession() as http:
        for value in ("0", "10001", "abc", "-1", "1.5", ""):
            async with http.get(base, params={"partNumber": value}) as resp:
                body = await resp.text()
                assert resp.status == 400 and "<Code>InvalidArgument</Code>" in body, value
                assert "<ArgumentName>partNumber</ArgumentName>" in body
        async with http.head(base, params={"partNumber": "2"}, headers={"Range": "bytes=0-1"}) as resp:
            assert resp.status == 400 and resp.headers["X-P2P-Error"] == "InvalidRequest"
    assert s3.head_requests == heads
