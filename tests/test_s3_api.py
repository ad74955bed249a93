"""S3 SDKs pointed at a worker (endpoint_url) get what they get from S3 itself."""

from __future__ import annotations

import asyncio
import random
import subprocess

import boto3
import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import CHUNK

KEYS = ["models/a/config.json", "models/a/weights-00001.bin", "models/a/weights-00002.bin",
        "models/b/weights.bin", "models/b/sub dir/x+y.bin", "readme.txt"]
BIG = 5 * CHUNK + 17


@pytest.fixture
def data(s3_client, bucket):
    rnd = random.Random(11)
    out = {key: rnd.randbytes(BIG if "weights" in key else 1000) for key in KEYS}
    for key, body in out.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")
    return out


def cache_client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def same_object(a: dict, b: dict) -> None:
    for field in ("ContentLength", "ContentRange", "ETag", "LastModified", "ContentType", "AcceptRanges"):
        assert a.get(field) == b.get(field), field


async def test_boto3_get_and_head_match_s3(cluster, data, bucket, s3_client):
    cache = cache_client(cluster.workers[0].url)
    key = "models/a/weights-00001.bin"

    def compare():
        for rng in (None, "bytes=0-99", f"bytes={CHUNK - 5}-{CHUNK + 5}", "bytes=-100", f"bytes={3 * CHUNK}-"):
            kw = {"Range": rng} if rng else {}
            want, got = s3_client.get_object(Bucket=bucket, Key=key, **kw), cache.get_object(Bucket=bucket, Key=key, **kw)
            assert got["Body"].read() == want["Body"].read()
            same_object(got, want)
            assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        same_object(cache.head_object(Bucket=bucket, Key=key), s3_client.head_object(Bucket=bucket, Key=key))

    await asyncio.to_thread(compare)


async def test_boto3_listings_match_s3_with_prefix_delimiter_and_pagination(cluster, data, bucket, s3_client):
    cache = cache_client(cluster.workers[1].url)

    def pages(client, **kw):
        return [p for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kw)]

    def essentials(pages_):
        return [([(o["Key"], o["Size"], o["ETag"], o["LastModified"]) for o in p.get("Contents", [])],
                 [c["Prefix"] for c in p.get("CommonPrefixes", [])], p["KeyCount"], p["IsTruncated"])
                for p in pages_]

    def compare():
        for kw in ({}, {"Prefix": "models/"}, {"Prefix": "models/", "Delimiter": "/"},
                   {"PaginationConfig": {"PageSize": 2}}, {"Prefix": "models/b/sub dir/"}):
            got, want = essentials(pages(cache, **kw)), essentials(pages(s3_client, **kw))
            assert got == want, kw
        assert len(pages(cache, PaginationConfig={"PageSize": 2})) == 3  # it really paginated
        v1 = cache.list_objects(Bucket=bucket, Prefix="models/a/", MaxKeys=2)
        assert [o["Key"] for o in v1["Contents"]] == KEYS[:2] and v1["IsTruncated"]
        names = [b["Name"] for b in cache.list_buckets()["Buckets"]]
        assert bucket in names
        cache.head_bucket(Bucket=bucket)

    await asyncio.to_thread(compare)


async def test_boto3_download_file_uses_parallel_ranges_and_gets_the_same_bytes(cluster, data, bucket, tmp_path):
    from boto3.s3.transfer import TransferConfig

    cache = cache_client(cluster.workers[2].url)
    key = "models/a/weights-00002.bin"
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=4)
    await asyncio.to_thread(cache.download_file, bucket, key, str(tmp_path / "w"), Config=config)
    assert (tmp_path / "w").read_bytes() == data[key]


async def test_s3_error_codes_through_the_cache(cluster_factory, data, bucket):
    cluster = await cluster_factory(1, allowed_buckets=frozenset({bucket}))
    cache = cache_client(cluster.workers[0].url)

    def code(fn, **kw):
        with pytest.raises(ClientError) as info:
            fn(**kw)
        return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]

    def check():
        assert code(cache.get_object, Bucket=bucket, Key="missing") == ("NoSuchKey", 404)
        assert code(cache.get_object, Bucket=bucket, Key="readme.txt", Range="bytes=5000-") == ("InvalidRange", 416)
        assert code(cache.get_object, Bucket="not-allowed", Key="k") == ("AccessDenied", 403)
        assert code(cache.put_object, Bucket=bucket, Key="k", Body=b"x") == ("NotImplemented", 405)
        assert code(cache.delete_object, Bucket=bucket, Key="readme.txt") == ("NotImplemented", 405)
        assert [b["Name"] for b in cache.list_buckets()["Buckets"]] == [bucket]  # only the allowed
        assert code(cache.list_objects_v2, Bucket="not-allowed") == ("AccessDenied", 403)
        etag = cache.head_object(Bucket=bucket, Key="readme.txt")["ETag"]
        assert code(cache.get_object, Bucket=bucket, Key="readme.txt", IfMatch='"nope"') == ("PreconditionFailed", 412)
        assert code(cache.get_object, Bucket=bucket, Key="readme.txt", IfNoneMatch=etag) == ("304", 304)
        assert cache.get_object(Bucket=bucket, Key="readme.txt", IfMatch=etag)["Body"].read() == data["readme.txt"]

    await asyncio.to_thread(check)


async def test_missing_bucket_is_nosuchbucket(cluster):
    cache = cache_client(cluster.workers[0].url)

    def check():
        with pytest.raises(ClientError) as info:
            cache.get_object(Bucket="no-such-bucket-anywhere", Key="k")
        assert info.value.response["Error"]["Code"] == "NoSuchBucket"
        with pytest.raises(ClientError) as info:
            cache.list_objects_v2(Bucket="no-such-bucket-anywhere")
        assert info.value.response["Error"]["Code"] == "NoSuchBucket"

    await asyncio.to_thread(check)


async def test_ranges_of_an_empty_object_are_answered_as_s3_answers_them(cluster, bucket, s3_client):
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    cache = cache_client(cluster.workers[0].url)

    def answer(client, rng):
        try:
            got = client.get_object(Bucket=bucket, Key="empty", Range=rng)
            return got["ResponseMetadata"]["HTTPStatusCode"], got["Body"].read()
        except ClientError as exc:
            return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]

    def check():
        for rng in ("bytes=-1", "bytes=-5000", "bytes=0-", "bytes=0-0", "bytes=5-9", "bytes=-0", "bytes=x"):
            assert answer(cache, rng) == answer(s3_client, rng), rng
        assert answer(cache, "bytes=-1") == (200, b"")  # a tail reader's first read of a file

    await asyncio.to_thread(check)


async def test_an_invalid_bucket_name_is_invalidbucketname(cluster):
    # boto3 refuses such names before sending: ask over plain HTTP, as curl would.
    async with cluster.session.get(f"{cluster.workers[0].url}/bad_bucket!/k") as resp:
        assert resp.status == 400
        assert "<Code>InvalidBucketName</Code>" in await resp.text()


async def test_aiobotocore_reads_through_the_cache(cluster, data, bucket):
    key = "models/b/weights.bin"
    async with get_session().create_client("s3", endpoint_url=cluster.workers[0].url,
                                           region_name="us-east-1") as client:
        resp = await client.get_object(Bucket=bucket, Key=key, Range="bytes=-1000")
        async with resp["Body"] as body:
            assert await body.read() == data[key][-1000:]
        assert resp["ContentRange"] == f"bytes {BIG - 1000}-{BIG - 1}/{BIG}"
        head = await client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == BIG


async def test_s3fs_open_seek_read_ls_cat(cluster, data, bucket):
    import s3fs

    def check():
        fs = s3fs.S3FileSystem(anon=False, client_kwargs={"endpoint_url": cluster.workers[1].url,
                                                          "region_name": "us-east-1"},
                               skip_instance_cache=True, use_listings_cache=False)
        key = "models/a/weights-00001.bin"
        with fs.open(f"{bucket}/{key}", "rb", block_size=CHUNK // 2) as f:
            rnd = random.Random(3)
            for _ in range(10):
                pos, n = rnd.randrange(BIG), rnd.randrange(1, 2 * CHUNK)
                f.seek(pos)
                assert f.read(n) == data[key][pos:pos + n]
        assert sorted(fs.ls(f"{bucket}/models/a", detail=False)) == [f"{bucket}/{k}" for k in KEYS[:3]]
        assert fs.cat(f"{bucket}/readme.txt") == data["readme.txt"]
        assert fs.info(f"{bucket}/{key}")["size"] == BIG

    await asyncio.to_thread(check)


async def test_curl_range_and_head(cluster, data, bucket):
    url = f"{cluster.workers[0].url}/{bucket}/models/b/weights.bin"
    body = await asyncio.to_thread(subprocess.run, ["curl", "-sf", "-r", f"{CHUNK - 10}-{CHUNK + 9}", url],
                                   capture_output=True, check=True, timeout=30)
    assert body.stdout == data["models/b/weights.bin"][CHUNK - 10:CHUNK + 10]
    head = await asyncio.to_thread(subprocess.run, ["curl", "-sfI", url], capture_output=True, text=True,
                                   check=True, timeout=30)
    assert f"content-length: {BIG}" in head.stdout.lower() and "accept-ranges: bytes" in head.stdout.lower()
