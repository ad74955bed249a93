"""Input that cannot hurt: the peer route's parameters, versionId, dates, huge numbers, control characters."""

from __future__ import annotations

import asyncio
import logging
import random
import xml.etree.ElementTree as ET
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime

import aiohttp
import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import CHUNK, SECRET, botocore_subresources, metric
from rawhttp import exchange, request_bytes
from test_cluster_auth import files, signed

HUGE = "9" * 4400  # past Python's 4300-digit int() limit, within aiohttp's 8190-byte header limit


def _forms(moment) -> list[str]:
    """One instant in RFC 9110's three date forms: IMF-fixdate, RFC 850, asctime."""
    return [format_datetime(moment, usegmt=True), moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
            moment.strftime("%a %b ") + f"{moment.day:>2}" + moment.strftime(" %H:%M:%S %Y")]


async def test_the_peer_route_refuses_chunks_this_cluster_could_not_hold(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(1, allowed_buckets=frozenset({bucket}))
    (worker,) = cluster.workers
    body = random.Random(7).randbytes(2 * CHUNK + 100)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    s3_client.create_bucket(Bucket=f"{bucket}-other")
    s3_client.put_object(Bucket=f"{bucket}-other", Key="m.bin", Body=body)
    etag = s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"]
    good = {"bucket": bucket, "key": "m.bin", "etag": etag, "size": str(len(body)),
            "chunk_size": str(CHUNK), "index": "2"}
    url = f"{worker.url}/_p2p/chunk"
    tampered = [
        ({"bucket": f"{bucket}-other"}, {}, 403, "AccessDenied"),  # outside --allowed-buckets
        ({"chunk_size": "1"}, {}, 400, "InvalidRequest"),  # 1-byte chunks: an inode and a GET each
        ({"chunk_size": str(2 * CHUNK)}, {}, 400, "InvalidRequest"),
        ({"chunk_size": HUGE}, {}, 400, "InvalidRequest"),
        ({"index": "3"}, {}, 400, "InvalidRequest"),
        ({"index": "-1"}, {}, 400, "InvalidRequest"),
        ({"etag": etag.strip('"')}, {}, 400, "InvalidRequest"),
        ({"etag": '"a\r\nb"'}, {}, 400, "InvalidRequest"),
        ({"etag": '"' + "a" * 300 + '"'}, {}, 400, "InvalidRequest"),
        ({"size": str(len(body) + 1)}, {}, 400, "InvalidRequest"),  # not the object's size
        ({"size": str(len(body) - 1)}, {}, 400, "InvalidRequest"),
        ({"size": str(1 << 60)}, {}, 400, "InvalidRequest"),
        ({"key": "k" * 1025}, {}, 400, "InvalidRequest"),
        ({"key": "missing.bin"}, {}, 404, "NoSuchKey"),
        ({"etag": '"0123456789abcdef0123456789abcdef"'}, {}, 502, "ObjectChanged"),  # not the current version
        ({}, {"X-P2P-Hop": "7"}, 400, "InvalidRequest"),
        ({}, {"X-P2P-Hop": HUGE}, 400, "InvalidRequest"),
        ({}, {"Range": f"bytes={HUGE}-"}, 416, "InvalidRange"),
        ({}, {"Range": "bytes=a-b"}, 400, "InvalidRequest"),
    ]
    gets = s3.get_requests
    async with aiohttp.ClientSession() as http:
        for change, headers, status, code in tampered:
            params = good | change
            async with http.get(url, params=params,
                                headers=signed(SECRET, "GET", url, params, to=worker.id, sent=headers) | headers) as resp:
                assert (resp.status, resp.headers.get("X-P2P-Error")) == (status, code), (change, headers)
        assert s3.get_requests == gets and files(worker.store.root) == []  # nothing fetched, nothing written
        assert await metric(http, worker.url, "p2pcache_origin_requests_total") == 0
        for headers in ({}, {"Range": f"bytes=0-{HUGE}"}):  # the untampered request: served
            async with http.get(url, params=good,
                                headers=signed(SECRET, "GET", url, good, to=worker.id, sent=headers) | headers) as resp:
                sums = int(resp.headers["X-P2P-Sums"])  # the blocks' checksums come first
                assert resp.status == 206 and (await resp.read())[sums:] == body[2 * CHUNK:]


async def test_version_ids_and_sub_resources_get_501_never_the_current_version(cluster, s3, bucket):
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = client.put_object(Bucket=bucket, Key="m.bin", Body=b"version one")["VersionId"]
    v2 = client.put_object(Bucket=bucket, Key="m.bin", Body=b"version two!")["VersionId"]
    assert v1 != v2
    worker = cluster.workers[0]
    through = boto3.client("s3", endpoint_url=worker.url, region_name="us-east-1")
    for call in (through.get_object, through.head_object):  # in a thread: the worker runs on this loop
        with pytest.raises(ClientError) as info:
            await asyncio.to_thread(call, Bucket=bucket, Key="m.bin", VersionId=v1)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
        if call is through.get_object:
            assert info.value.response["Error"]["Code"] == "NotImplemented"
    current = await asyncio.to_thread(through.get_object, Bucket=bucket, Key="m.bin")
    assert current["Body"].read() == b"version two!"
    subresources = botocore_subresources()[1]
    assert {"restore", "select", "torrent", "acl"} <= subresources  # (?restore and ?select got the bytes)
    async with aiohttp.ClientSession() as http:
        for query in (f"versionId={v2}", "uploadId=u", "select&select-type=2", *sorted(subresources)):
            for method in ("GET", "HEAD"):
                async with http.request(method, f"{worker.url}/{bucket}/m.bin?{query}") as resp:
                    assert resp.status == 501 and b"version two!" not in await resp.read(), (method, query)


async def test_conditional_dates_in_all_three_http_forms(cluster, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=b"0123456789")
    modified = parsedate_to_datetime(
        s3_client.head_object(Bucket=bucket, Key="m.bin")["ResponseMetadata"]["HTTPHeaders"]["last-modified"])
    url = f"{cluster.workers[0].url}/{bucket}/m.bin"
    later, earlier = modified + timedelta(days=1), modified - timedelta(days=1)
    cases = [("If-Modified-Since", later, 304), ("If-Modified-Since", earlier, 200),
             ("If-Unmodified-Since", earlier, 412), ("If-Unmodified-Since", later, 200)]
    async with aiohttp.ClientSession() as http:
        for header, moment, status in cases:
            for text in _forms(moment):
                async with http.get(url, headers={header: text}) as resp:
                    assert resp.status == status, (header, text)
        for junk in ("Sun, 06 Nov 99999 08:49:37 GMT", "Mon, 31 Feb 2020 00:00:00 GMT", "yesterday", "x" * 500):
            async with http.get(url, headers={"If-Modified-Since": junk, "If-Unmodified-Since": junk}) as resp:
                assert resp.status == 200  # an unparseable date is ignored


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_list_header_on_several_lines_means_the_lines_joined(cluster_factory, s3_client, bucket,
                                                                     serve_processes):
    """If-Match, If-None-Match and Cache-Control split over several lines are read whole (RFC 9110
    5.3), by the coordinator and by serving processes: the first line alone made a 412 of an
    If-Match that names the object, a 200 of an If-None-Match that does, a stale answer of a
    no-cache."""
    cluster = await cluster_factory(1, serve_processes=serve_processes, meta_ttl=60)
    etag = s3_client.put_object(Bucket=bucket, Key="m.bin", Body=b"version one")["ETag"]
    url = f"{cluster.workers[0].url}/{bucket}/m.bin"
    async with aiohttp.ClientSession() as http:
        for headers, status in (([("If-Match", '"x"'), ("If-Match", etag)], 200),
                                ([("If-Match", '"x"'), ("If-Match", '"y"')], 412),
                                ([("If-None-Match", '"x"'), ("If-None-Match", etag)], 304),
                                ([("If-None-Match", '"x"'), ("If-None-Match", '"y"')], 200)):
            for _ in range(2):  # the second time with the identity cached, where serving processes answer
                async with http.get(url, headers=headers) as resp:
                    assert resp.status == status, headers
                    if status != 412:
                        assert await resp.read() == (b"version one" if status == 200 else b"")
        s3_client.put_object(Bucket=bucket, Key="m.bin", Body=b"version two")  # within the 60 s --meta-ttl
        async with http.get(url, headers=[("Cache-Control", "max-age=60"), ("Cache-Control", "no-cache")]) as resp:
            assert await resp.read() == b"version two"


async def test_ranges_with_huge_numbers(cluster, s3_client, bucket):
    body = bytes(range(256)) * 40
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = f"{cluster.workers[0].url}/{bucket}/m.bin"
    async with aiohttp.ClientSession() as http:
        for rng, status, want in ((f"bytes=0-{HUGE}", 206, body), (f"bytes=-{HUGE}", 206, body),
                                  (f"bytes={HUGE}-", 416, None), (f"bytes={HUGE}-{HUGE[:3000]}", 200, body),
                                  (f"bytes=5-{'0' * 4400}7", 206, body[5:8])):
            async with http.get(url, headers={"Range": rng}) as resp:
                assert resp.status == status, rng[:40]
                if want is not None:
                    assert await resp.read() == want


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_path_names_one_object_or_is_refused(cluster_factory, s3_client, bucket, serve_processes):
    """The key is decoded from the path as sent: `%FF` is no UTF-8, not the key "%FF" (which is
    `%25FF`, another object); `//b/k` and `/b%2Fk` name no bucket, not the listing or b/k; a
    raw `#` is refused, not taken for a fragment (`/b/k#frag` read k). Answered the same by
    serving processes (their fast path and aiohttp's) as by the coordinator."""
    cluster = await cluster_factory(1, serve_processes=serve_processes)
    url = cluster.workers[0].url
    s3_client.put_object(Bucket=bucket, Key="uni/%FF.bin", Body=b"the key with a percent sign")
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"k's bytes")
    for _ in range(2):  # the second time with the objects known to every process
        literal = await exchange(url, request_bytes("GET", f"/{bucket}/uni/%25FF.bin"))
        assert literal.status == 200 and literal.body == b"the key with a percent sign"
        for target, code in ((f"/{bucket}/uni/%FF.bin", "InvalidRequest"),
                             (f"/{bucket}/uni/%C3%28.bin", "InvalidRequest"),
                             (f"//{bucket}/k", "InvalidBucketName"), (f"/{bucket}%2Fk", "InvalidBucketName"),
                             (f"/{bucket}/k#frag", "InvalidURI"), (f"/{bucket}/k#", "InvalidURI"),
                             (f"/{bucket}/k?x=1#frag", "InvalidURI")):
            for method in ("GET", "HEAD"):
                reply = await exchange(url, request_bytes(method, target), head=method == "HEAD")
                assert reply.status == 400, (method, target, reply.status, reply.body[:200])
                if method == "GET":
                    assert ET.fromstring(reply.body).findtext("Code") == code, target
        assert (await exchange(url, request_bytes("GET", f"/{bucket}/k"))).body == b"k's bytes"
        s3_client.put_object(Bucket=bucket, Key="k#frag", Body=b"k#frag's bytes")
        assert (await exchange(url, request_bytes("GET", f"/{bucket}/k%23frag"))).body == b"k#frag's bytes"


@pytest.mark.parametrize("key", ["a%0Db", "a%00b", "a%0Ab%0D%0AX-Injected:%20yes", "%C3%A9%E2%80%8F", "a%FFb"])
async def test_control_characters_in_keys_never_reach_a_header(cluster, bucket, key):
    worker = cluster.workers[0]
    for method in ("GET", "HEAD"):
        reply = await exchange(worker.url, request_bytes(method, f"/{bucket}/{key}"), head=method == "HEAD")
        assert reply.status in (400, 404)
        assert all(32 <= b < 127 for b in reply.raw_head.replace(b"\r\n", b"")), reply.raw_head
        assert "x-injected" not in reply.headers
        if method == "GET":
            ET.fromstring(reply.body)  # still well-formed XML for SDKs


async def test_a_reason_is_escaped_once_whichever_process_answers(cluster_factory, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    for _ in range(6):  # new connections: both processes answer some
        reply = await exchange(cluster.workers[0].url, request_bytes("GET", f"/{bucket}/a%00b%C3%A9"))
        assert reply.status == 404
        assert reply.headers["x-p2p-reason"].endswith("a\\x00b\\xe9"), reply.headers["x-p2p-reason"]


async def test_malformed_requests_are_answered_and_logged_once_per_client_without_a_traceback(cluster_factory,
                                                                                              caplog):
    # One process per worker: its log records are this process's, where caplog sees them (serving
    # processes answer the same way: tests/test_fastpath.py).
    cluster = await cluster_factory(1, serve_processes=1)
    caplog.set_level(logging.INFO)  # at DEBUG, aiohttp logs some with a traceback: opted into
    garbage = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
               b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"]
    for url in (cluster.workers[0].url, cluster.master.url):
        for data in garbage * 3:
            reply = await exchange(url, data)
            assert reply.status == 400
    for name in ("p2pcache.worker.http", "p2pcache.master.http"):
        lines = [r for r in caplog.records if r.name == name]
        assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.WARNING
        assert "malformed request from 127.0.0.1" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    async with aiohttp.ClientSession() as http:  # and both still serve
        async with http.get(f"{cluster.master.url}/health") as resp:
            assert resp.status == 200
        async with http.get(f"{cluster.workers[0].url}/_p2p/ready") as resp:
            assert resp.status == 200
