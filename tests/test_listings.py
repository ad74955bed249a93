"""Listings through a worker are S3's, byte for byte: URL encoding, echoes, pagination, S3's 400s."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import boto3
import pytest
import yarl
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.handlers import set_list_objects_encoding_type_url

from conftest import SECRET, botocore_subresources, metric, wait_for
from p2pcache import Client
from p2pcache.admin_client import preload

# Spaces, '+', '%', a newline, a carriage return, a tab, XML's specials, unicode.
KEYS = ["a b/one", "a b/two", "a+b/plus", "pct%41/x", "line\nbreak", "cr\rkey", "tab\tkey", "amp&<>/q",
        "ünï/çödé", "日本/語", "plain/key"]


def client(url: str, auto_encoding: bool = True):
    """boto3, keeping raw bodies; without `auto_encoding` it asks for no encoding-type unless told."""
    c = boto3.client("s3", endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    if not auto_encoding:
        for op in ("ListObjects", "ListObjectsV2"):
            c.meta.events.unregister(f"before-parameter-build.s3.{op}", set_list_objects_encoding_type_url)
    raw = []
    c.meta.events.register("before-parse.s3.*", lambda response_dict, **_: raw.append(response_dict["body"]))
    c.raw = raw  # the bodies as they came over the wire, last one last
    return c


@pytest.fixture
def keys(s3_client, bucket):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for key in KEYS:
        if "\n" in key:  # moto's HTTP routing cannot take a newline in a key: store it directly
            s3_backends[DEFAULT_ACCOUNT_ID]["global"].put_object(bucket, key, b"x")
        else:
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    return KEYS


def pages(c, op: str, **kw) -> list[tuple[dict, bytes]]:
    out = []
    for page in c.get_paginator(op).paginate(**kw):
        page.pop("ResponseMetadata")
        out.append((page, c.raw[-1]))
    return out


async def test_url_encoded_listings_are_s3s_bytes(cluster, keys, bucket, s3):
    direct, cache = client(s3.url), client(cluster.workers[0].url)
    plain = [client(s3.url, auto_encoding=False), client(cluster.workers[0].url, auto_encoding=False)]

    def check():
        for op, kw in [("list_objects_v2", {}), ("list_objects_v2", {"Delimiter": "/"}),
                       ("list_objects_v2", {"Prefix": "a b/", "Delimiter": "/"}),
                       ("list_objects_v2", {"Prefix": "a", "StartAfter": "a b/one"}),
                       ("list_objects_v2", {"PaginationConfig": {"PageSize": 3}}),
                       ("list_objects", {"Prefix": "a b/", "Delimiter": "/"}),
                       ("list_objects", {"Delimiter": "/", "PaginationConfig": {"PageSize": 2}})]:
            for extra, (d, c) in (({}, (direct, cache)), ({"EncodingType": "url"}, (direct, cache)), ({}, plain)):
                got, want = pages(c, op, Bucket=bucket, **kw, **extra), pages(d, op, Bucket=bucket, **kw, **extra)
                assert [g for g, _ in got] == [w for w, _ in want], (op, kw, extra)
                assert [r for _, r in got] == [r for _, r in want], (op, kw, extra)
        listed = [o["Key"] for p, _ in pages(cache, "list_objects_v2", Bucket=bucket) for o in p["Contents"]]
        assert sorted(listed) == sorted(KEYS)  # botocore asked for (and decoded) URL encoding itself
        body = pages(cache, "list_objects_v2", Bucket=bucket, Delimiter="/", EncodingType="url")[0][1]
        assert b"<Prefix>a%20b/</Prefix>" in body and b"<Prefix>a%2Bb/</Prefix>" in body
        assert b"<Prefix>pct%2541/</Prefix>" in body and b"line%0Abreak" in body
        v1 = pages(cache, "list_objects", Bucket=bucket, Prefix="a b/", EncodingType="url")[0][1]
        assert b"<Prefix>a b/</Prefix>" in v1  # v1 echoes the prefix as given
        unencoded = pages(plain[1], "list_objects_v2", Bucket=bucket, Delimiter="/")[0][1]
        assert b"<Prefix>a+b/</Prefix>" in unencoded and b"<EncodingType>" not in unencoded

    await asyncio.to_thread(check)


async def test_s3s_own_400s_pass_through(cluster, keys, bucket, s3_client, s3):
    cache = client(cluster.workers[0].url)

    def code(c, **kw):
        with pytest.raises(ClientError) as info:
            c.list_objects_v2(Bucket=bucket, **kw)
        return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]

    def check():
        assert code(cache, ContinuationToken="") == code(s3_client, ContinuationToken="") == ("InvalidArgument", 400)

    await asyncio.to_thread(check)
    async with aiohttp.ClientSession() as http:
        for value, name in (("abc", "max-keys"), ("-1", "maxKeys"), ("1.5", "max-keys"), ("99999999999", "maxKeys"),
                            ("9" * 4400, "maxKeys"), ("-" + "9" * 4400, "maxKeys")):  # past int()'s 4300 digits
            async with http.get(f"{cluster.workers[0].url}/{bucket}", params={"list-type": "2", "max-keys": value}) as resp:
                body = await resp.text()
                assert resp.status == 400 and "<Code>InvalidArgument</Code>" in body, value
                assert f"<ArgumentName>{name}</ArgumentName><ArgumentValue>{value}</ArgumentValue>" in body
        async with http.get(f"{cluster.workers[0].url}/{bucket}", params={"max-keys": "2"}) as resp:
            assert resp.status == 200 and (await resp.text()).count("<Contents>") == 2
        # A prefix that is not UTF-8 was listed as U+FFFD, a prefix nobody asked for.
        url = f"{cluster.workers[0].url}/{bucket}"
        for query, name in (("list-type=2&prefix=%FF", "prefix"), ("delimiter=%C3%28", "delimiter"),
                            ("list-type=2&start-after=a%80", "start-after")):
            async with http.get(yarl.URL(f"{url}?{query}", encoded=True)) as resp:
                body = await resp.text()
                assert resp.status == 400 and "<Code>InvalidArgument</Code>" in body, query
                assert f"<ArgumentName>{name}</ArgumentName>" in body, body
        async with http.get(yarl.URL(f"{url}?list-type=2&prefix=%C3%BC", encoded=True)) as resp:
            assert resp.status == 200 and "<Prefix>ü</Prefix>" in await resp.text()


async def test_list_buckets_paginates_with_max_buckets(cluster, s3_client):
    tag = f"lb{os.getpid()}-"
    names = [f"{tag}{c}" for c in "dbeac"]
    for name in names:
        s3_client.create_bucket(Bucket=name)
    cache = client(cluster.workers[0].url)

    def check():
        everything = cache.list_buckets()
        assert [b["Name"] for b in everything["Buckets"]] == sorted(b["Name"] for b in s3_client.list_buckets()["Buckets"])
        assert everything["Owner"] == s3_client.list_buckets()["Owner"] and "ContinuationToken" not in everything
        got = pages(cache, "list_buckets", Prefix=tag, PaginationConfig={"PageSize": 2})
        assert [[b["Name"] for b in p["Buckets"]] for p, _ in got] == [names_[i:i + 2] for i in (0, 2, 4)
                                                                        for names_ in [sorted(names)]]
        assert all(p["Prefix"] == tag for p, _ in got)
        assert [b["Name"] for b in cache.list_buckets(Prefix=tag)["Buckets"]] == \
            sorted(b["Name"] for b in s3_client.list_buckets(Prefix=tag)["Buckets"])
        for kw in ({"ContinuationToken": ""}, {"ContinuationToken": "%%%"}):
            with pytest.raises(ClientError) as info:
                cache.list_buckets(**kw)
            assert info.value.response["Error"]["Code"] == "InvalidArgument"

    await asyncio.to_thread(check)
    async with aiohttp.ClientSession() as http:
        for value in ("0", "10001", "x", "9" * 4400):
            async with http.get(f"{cluster.workers[0].url}/", params={"max-buckets": value}) as resp:
                assert resp.status == 400 and resp.headers["X-P2P-Error"] == "InvalidArgument", value


@pytest.fixture
async def no_encoding_s3(s3):
    """An S3-compatible server that ignores `encoding-type`: a proxy to moto that drops it."""
    async def forward(request: web.BaseRequest) -> web.Response:
        query = [(k, v) for k, v in request.query.items() if k != "encoding-type"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with session.request(request.method, yarl.URL(s3.url + request.path).with_query(query),
                                   headers=headers, data=await request.read()) as resp:
            body = await resp.read()
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            return web.Response(status=resp.status, headers=keep, body=body)

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        runner = web.ServerRunner(web.Server(forward), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        await runner.cleanup()


async def test_a_listing_the_origin_did_not_encode_is_not_decoded(cluster_factory, no_encoding_s3, bucket, s3_client):
    for key in ("a+b/plus", "a b/space", "pct%2B/x"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    cluster = await cluster_factory(1, s3_endpoint=no_encoding_s3)
    direct, cache = client(no_encoding_s3), client(cluster.workers[0].url)

    def check():
        for kw in ({}, {"EncodingType": "url"}):
            got, want = pages(cache, "list_objects_v2", Bucket=bucket, Delimiter="/", **kw), \
                pages(direct, "list_objects_v2", Bucket=bucket, Delimiter="/", **kw)
            assert got == want
            assert [p["Prefix"] for p in got[0][0]["CommonPrefixes"]] == ["a b/", "a+b/", "pct%2B/"]

    await asyncio.to_thread(check)


async def test_a_buckets_location_and_region_are_s3s_and_its_other_sub_resources_are_refused(
        cluster, bucket, s3_client):
    """GetBucketLocation and HeadBucket's region answer as S3 does (SDKs look for them); any
    other sub-resource of a bucket (versions, policy, acl, ...) is a 501, never a listing in
    its place. A HEAD of an object and a GET of an empty one carry a request id too."""
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    west = f"{bucket}-w"[:63]
    s3_client.create_bucket(Bucket=west, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    cache = client(cluster.workers[1].url)

    def code(fn, **kw) -> tuple[str, int]:
        with pytest.raises(ClientError) as info:
            fn(**kw)
        return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]

    def check():
        for name in (bucket, west):
            assert cache.get_bucket_location(Bucket=name)["LocationConstraint"] == \
                s3_client.get_bucket_location(Bucket=name)["LocationConstraint"]
            region = cache.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"]
            assert region == ("eu-west-1" if name == west else "us-east-1")
        assert code(cache.list_object_versions, Bucket=bucket) == ("NotImplemented", 501)
        assert code(cache.get_bucket_policy, Bucket=bucket) == ("NotImplemented", 501)
        assert code(cache.get_bucket_acl, Bucket=bucket) == ("NotImplemented", 501)
        assert code(cache.get_bucket_tagging, Bucket=bucket) == ("NotImplemented", 501)
        assert code(cache.list_multipart_uploads, Bucket=bucket) == ("NotImplemented", 501)
        assert cache.list_objects_v2(Bucket=bucket)["KeyCount"] == 1  # the listing itself still answers
        for resp in (cache.head_object(Bucket=bucket, Key="empty"), cache.get_object(Bucket=bucket, Key="empty")):
            assert resp["ResponseMetadata"]["RequestId"]

    await asyncio.to_thread(check)
    names = botocore_subresources()[0]
    assert {"delete", "storageClass", "defaultObjectAcl", "versions", "acl"} <= names  # (?delete was a listing)
    async with aiohttp.ClientSession() as http:
        for name in sorted(names):
            async with http.get(f"{cluster.workers[1].url}/{bucket}?{name}") as resp:
                body = await resp.text()
                assert resp.status == 501 and "<Code>NotImplemented</Code>" in body, name
                assert "ListBucketResult" not in body
            async with http.head(f"{cluster.workers[1].url}/{bucket}?{name}") as resp:  # not a HeadBucket's 200
                assert (resp.status, resp.headers.get("X-P2P-Error")) == (501, "NotImplemented"), name
        async with http.head(f"{cluster.workers[1].url}/{bucket}") as resp:
            assert resp.status == 200


# Keys XML 1.0 cannot carry (S3 writes them as they are unless asked to encode) and a carriage
# return, which an XML parser reads as a newline.
ODD_KEYS = ["odd/ctl\x01key", "odd/vt\x0bkey", "odd/cr\rkey", "odd/cr\nkey", "odd/plain"]


async def test_keys_xml_cannot_carry_are_listed_as_s3_wrote_them_and_read_back_exactly(cluster, bucket, s3_client,
                                                                                     s3):
    """An unencoded listing is S3's bytes, not an origin failure: before, each was a 502 counted
    by the breaker, which then refused every read that needed S3. The loader client, fsspec and
    preload ask for URL encoding and get every key exactly."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for key in ODD_KEYS:  # moto's HTTP routing cannot take a newline in a key: store them directly
        s3_backends[DEFAULT_ACCOUNT_ID]["global"].put_object(bucket, key, key.encode())
    s3_client.put_object(Bucket=bucket, Key="later.bin", Body=b"later")
    async with aiohttp.ClientSession() as http:
        for _ in range(10):  # more than the breaker's threshold of failures
            for query in ("list-type=2", "list-type=2&prefix=%00", "list-type=2&delimiter=%01", "prefix=odd/"):
                answers = []
                for url in (s3.url, cluster.workers[0].url):
                    async with http.get(f"{url}/{bucket}?{query}") as resp:
                        answers.append((resp.status, await resp.read()))
                assert answers[0] == answers[1] and answers[0][0] == 200, query
        async with http.get(f"{cluster.workers[0].url}/{bucket}/later.bin") as resp:
            assert resp.status == 200 and await resp.read() == b"later"
    async with Client(cluster.master.url) as client:
        objects, _ = await client.list(bucket, "odd/")
        assert sorted(o["Key"] for o in objects) == sorted(ODD_KEYS)
        for key in ODD_KEYS[:3]:  # (moto cannot route a GET of a key with a newline)
            assert await client.read(bucket, key) == key.encode()
    job = await preload(cluster.master.url, [f"s3://{bucket}/{key}" for key in ODD_KEYS[:3]], secret=SECRET)
    assert (job["state"], job["objects_total"], job["chunks_failed"]) == ("done", 3, 0), job


async def test_the_listing_cache_is_bounded_in_bytes_and_drops_what_expired(cluster_factory, fault_proxy, bucket):
    """Listing pages are cached up to a bound in bytes, and dropped when they expire: 256 pages
    of long keys held 780 MiB, kept past --meta-ttl. A page bigger than the bound is not kept."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for i in range(200):  # keys of 1,000 bytes: a page of n keys is over n KB
        s3_backends[DEFAULT_ACCOUNT_ID]["global"].put_object(bucket, f"{i:03d}" + "k" * 997, b"x")
    bound = 200 << 10
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, meta_ttl=60, listing_cache_bytes=bound)
    worker = cluster.workers[0]
    async with aiohttp.ClientSession() as http:
        async def listed(url: str, max_keys: int) -> tuple[int, int]:
            """The page's size, and how many requests S3 got for it."""
            before = fault_proxy.requests
            async with http.get(f"{url}/{bucket}?list-type=2&max-keys={max_keys}") as resp:
                assert resp.status == 200
                return len(await resp.read()), fault_proxy.requests - before

        first, asked = await listed(worker.url, 50)
        assert first > 50_000 and asked == 1 and await listed(worker.url, 50) == (first, 0)  # cached
        for n in range(49, 29, -1):  # distinct pages, 20 of them: five times the bound
            await listed(worker.url, n)
            assert 0 < await metric(http, worker.url, "p2pcache_listing_cache_bytes") <= bound
        assert await listed(worker.url, 50) == (first, 1)  # pushed out by the later ones
        size, _ = await listed(worker.url, 200)
        assert size > bound and await listed(worker.url, 200) == (size, 1)  # never kept
        assert 0 < await metric(http, worker.url, "p2pcache_listing_cache_bytes") <= bound

        brief = await cluster.add_worker(meta_ttl=0.5)
        assert (await listed(brief.url, 50))[1] == 1
        assert await metric(http, brief.url, "p2pcache_listing_cache_bytes") > 0

        async def dropped() -> bool:
            return await metric(http, brief.url, "p2pcache_listing_cache_bytes") == 0

        await wait_for(dropped, what="the expired page dropped")
