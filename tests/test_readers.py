"""Reader keys (--client-keys): signed by botocore, curl and s3fs, checked by real workers (and their
serving processes)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from urllib.parse import quote, unquote_plus
from xml.etree import ElementTree

import aiohttp
import boto3
import pytest
import yarl
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import CHUNK, cli_env
from rawhttp import exchange
from worker.forward import passed_on, sigv4_signed_headers
from worker.readers import ClientKey, client_keys_arg, parse_client_keys

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
KEYS = ["plain.bin", "dir with spaces/ünïcødé ✓ 模型.bin", "odd/100% +?#&=!'()*~[];:@$,.bin", "big/weights.bin"]


@pytest.fixture
def data(s3_client, bucket):
    rnd = random.Random(9)
    out = {key: rnd.randbytes(5 * CHUNK + 17 if key.startswith("big/") else 3000) for key in KEYS}
    for key, body in out.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return out


@pytest.fixture
def keys_file(tmp_path, bucket):
    path = tmp_path / "client-keys"
    path.write_text(f"""
# reader keys: ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,bucket...]
reader     {SECRET}
limited    limited-secret    {bucket}          # this test's bucket only

elsewhere  elsewhere-secret  other-bucket-a,other-bucket-b
""")
    return path


class WallClock:
    """The worker's wall clock, shifted by `offset` seconds."""

    offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def s3(url: str, key_id: str = "reader", secret: str = SECRET, **config):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config))


def error(fn, **kw) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        fn(**kw)
    response = info.value.response
    return response["Error"]["Code"], response["Error"].get("Message", ""), response["ResponseMetadata"]["HTTPStatusCode"]


def xml_error(body: bytes) -> tuple[str, str]:
    root = ElementTree.fromstring(body)
    return root.findtext("Code"), root.findtext("Message")


async def test_the_right_key_reads_the_right_bytes_through_signed_headers(cluster_factory, data, bucket, keys_file):
    cluster = await cluster_factory(2, client_keys=client_keys_arg(str(keys_file)))
    url = cluster.workers[0].url  # chunks owned by w1 come over the (unsigned, internal) peer route

    def check():
        reader, limited = s3(url), s3(url, "limited", "limited-secret")
        for key, body in data.items():
            first, last = (CHUNK - 100, 3 * CHUNK + 99) if key.startswith("big/") else (10, 2010)
            got = reader.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")
            assert got["Body"].read() == body[first:last + 1], key
            assert got["ContentRange"] == f"bytes {first}-{last}/{len(body)}"
            assert limited.get_object(Bucket=bucket, Key=key)["Body"].read() == body
            assert reader.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)
        listed = reader.list_objects_v2(Bucket=bucket, Prefix="dir with spaces/ü")
        assert [o["Key"] for o in listed["Contents"]] == [KEYS[1]]
        pages = limited.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1})
        assert sorted(o["Key"] for page in pages for o in page["Contents"]) == sorted(KEYS)
        limited.head_bucket(Bucket=bucket)
        unsigned_payload = s3(url, s3={"payload_signing_enabled": False})  # x-amz-content-sha256: UNSIGNED-PAYLOAD
        assert unsigned_payload.get_object(Bucket=bucket, Key=KEYS[1], Range="bytes=-10")["Body"].read() == \
            data[KEYS[1]][-10:]
        assert bucket in [b["Name"] for b in reader.list_buckets()["Buckets"]]
        assert [b["Name"] for b in limited.list_buckets()["Buckets"]] == [bucket]  # only the key's buckets
        assert bucket not in [b["Name"] for b in s3(url, "elsewhere", "elsewhere-secret").list_buckets()["Buckets"]]

    await asyncio.to_thread(check)


async def test_wrong_secret_unknown_key_other_bucket_and_unsigned_requests_are_refused(
        cluster_factory, data, bucket, keys_file):
    cluster = await cluster_factory(1, client_keys=client_keys_arg(str(keys_file)))
    url = cluster.workers[0].url
    denied = ("AccessDenied", "Access Denied", 403)

    def check():
        key = KEYS[2]
        assert error(s3(url, secret=SECRET + "x").get_object, Bucket=bucket, Key=key) == (
            "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you "
            "provided. Check your key and signing method.", 403)
        assert error(s3(url, "nobody").get_object, Bucket=bucket, Key=key) == (
            "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403)
        elsewhere = s3(url, "elsewhere", "elsewhere-secret")
        assert error(elsewhere.get_object, Bucket=bucket, Key=key) == denied
        assert error(elsewhere.list_objects_v2, Bucket=bucket) == denied
        assert error(elsewhere.head_bucket, Bucket=bucket)[2] == 403
        assert error(s3(url, "limited", "limited-secret").get_object, Bucket="other-bucket-a", Key=key) == denied
        assert error(s3(url).put_object, Bucket=bucket, Key="new", Body=b"x")[0] == "NotImplemented"  # signed: 405

    await asyncio.to_thread(check)
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", f"/{bucket}/plain.bin"), ("GET", f"/{bucket}?list-type=2"), ("GET", "/"),
                             ("PUT", f"/{bucket}/new")):
            async with http.request(method, url + path) as resp:
                assert resp.status == 403 and xml_error(await resp.read()) == ("AccessDenied", "Access Denied")
        async with http.head(f"{url}/{bucket}/plain.bin") as resp:
            assert resp.status == 403 and resp.headers["X-P2P-Error"] == "AccessDenied"
        async with http.get(f"{url}/_p2p/health") as resp:  # internal routes are not S3 requests
            assert resp.status == 200
        bad_scope = (f"{url}/{bucket}/plain.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20240102T030405Z"
                     "&X-Amz-Credential=reader%2F20240102%2Fus-east-1%2Fs%0D%0A3%2Faws4_request&X-Amz-Expires=60"
                     "&X-Amz-SignedHeaders=host&X-Amz-Signature=00")
        async with http.get(yarl.URL(bad_scope, encoded=True)) as resp:  # a CR LF is never echoed into a header
            assert resp.status == 400 and xml_error(await resp.read())[0] == "AuthorizationQueryParametersError"
            assert 'incorrect service "s??3"' in resp.headers["X-P2P-Reason"]


async def test_presigned_urls_fetched_with_aiohttp_and_curl(cluster_factory, data, bucket, keys_file):
    cluster = await cluster_factory(2, client_keys=client_keys_arg(str(keys_file)))
    url = cluster.workers[1].url
    reader = s3(url)
    async with aiohttp.ClientSession() as http:
        for key, body in data.items():
            signed = reader.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)
            async with http.get(signed, headers={"Range": "bytes=100-"}) as resp:  # Range is not signed: S3 allows it
                assert resp.status == 206 and await resp.read() == body[100:], key
            got = await asyncio.to_thread(subprocess.run, ["curl", "-sf", "-r", "0-999", signed],
                                          capture_output=True, check=True, timeout=30)
            assert got.stdout == body[:1000]
        head = reader.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": KEYS[1]})
        got = await asyncio.to_thread(subprocess.run, ["curl", "-sfI", head], capture_output=True, text=True,
                                      check=True, timeout=30)
        assert f"content-length: {len(data[KEYS[1]])}" in got.stdout.lower()
        listing = reader.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket, "Prefix": "odd/"})
        async with http.get(listing) as resp:  # yarl sends `prefix=odd/`, botocore signed `odd%2F`: same query
            assert resp.status == 200
            root = ElementTree.fromstring(await resp.read())
            assert [unquote_plus(k.text) for k in root.iter(f"{S3_NS}Key")] == [KEYS[2]]  # encoding-type=url

        signed = reader.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "plain.bin"})
        async with http.get(signed.replace("/plain.bin?", "/big/weights.bin?")) as resp:
            assert resp.status == 403 and xml_error(await resp.read())[0] == "SignatureDoesNotMatch"
        async with http.get(signed.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601")) as resp:
            assert resp.status == 403 and xml_error(await resp.read())[0] == "SignatureDoesNotMatch"
        for _ in range(2):  # verified, then remembered: the second use checks the same things
            async with http.get(signed) as resp:
                assert resp.status == 200 and await resp.read() == data["plain.bin"]
            async with http.get(signed, headers={"x-amz-meta-x": "1"}) as resp:  # an x-amz header it did not sign
                assert resp.status == 403 and "not signed: x-amz-meta-x" in xml_error(await resp.read())[1]
            async with http.get(signed, headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"}) as resp:
                assert resp.status == 400 and xml_error(await resp.read())[0] == "InvalidArgument"
            async with http.head(signed) as resp:  # the method is signed
                assert resp.status == 403 and resp.headers["X-P2P-Error"] == "SignatureDoesNotMatch"
            async with http.get(signed, headers={"Host": "elsewhere.example"}) as resp:  # and the host
                assert resp.status == 403 and xml_error(await resp.read())[0] == "SignatureDoesNotMatch"
        v2 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="reader",
                          aws_secret_access_key=SECRET).generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "plain.bin"})
        async with http.get(v2) as resp:  # botocore presigns with Signature V2 unless told s3v4
            assert resp.status == 400 and xml_error(await resp.read())[0] == "InvalidRequest"


async def test_curl_aws_sigv4_an_independent_signer_reads_encoded_keys(cluster_factory, data, bucket, keys_file):
    cluster = await cluster_factory(1, client_keys=client_keys_arg(str(keys_file)))
    for key in KEYS[:3]:
        target = f"{cluster.workers[0].url}/{bucket}/{quote(key, safe='/~')}"
        for secret, ok in ((SECRET, True), ("wrong", False)):
            got = await asyncio.to_thread(subprocess.run, [
                "curl", "-s", "-r", "5-1004", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"reader:{secret}",
                target], capture_output=True, check=True, timeout=30)
            if ok:
                assert got.stdout == data[key][5:1005], key
            else:
                assert xml_error(got.stdout)[0] == "SignatureDoesNotMatch"


async def test_dot_segments_are_key_characters_and_never_reach_another_bucket(cluster_factory, data, bucket,
                                                                              keys_file, s3_client):
    other = f"{bucket[:50]}-other"
    s3_client.create_bucket(Bucket=other)
    s3_client.put_object(Bucket=other, Key="k", Body=b"not for the limited key")
    s3_client.put_object(Bucket=bucket, Key="x/../plain.bin", Body=b"a key with a dot segment")
    cluster = await cluster_factory(1, client_keys=client_keys_arg(str(keys_file)))
    url = cluster.workers[0].url
    limited = s3(url, "limited", "limited-secret")

    def check():
        assert limited.get_object(Bucket=bucket, Key="x/../plain.bin")["Body"].read() == b"a key with a dot segment"
        assert error(limited.get_object, Bucket=bucket, Key=f"../{other}/k")[0] == "NoSuchKey"  # taken literally
        assert error(limited.get_object, Bucket=other, Key="k")[0] == "AccessDenied"
        signed = limited.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"../{other}/k"})
        # curl without --path-as-is removes the dot segments: the signature no longer matches the path.
        normalised = subprocess.run(["curl", "-s", signed], capture_output=True, check=True, timeout=30).stdout
        as_is = subprocess.run(["curl", "-s", "--path-as-is", signed], capture_output=True, check=True, timeout=30)
        return xml_error(normalised), xml_error(as_is.stdout)

    normalised, as_is = await asyncio.to_thread(check)
    assert normalised[0] == "SignatureDoesNotMatch" and as_is[0] == "NoSuchKey"


async def test_expired_presigned_urls_and_skewed_clocks(cluster_factory, data, bucket, keys_file):
    clock = WallClock()
    cluster = await cluster_factory(1, client_keys=client_keys_arg(str(keys_file)), wall_clock=clock)
    url = cluster.workers[0].url
    reader = s3(url)
    short = reader.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "plain.bin"}, ExpiresIn=60)
    long = reader.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "plain.bin"}, ExpiresIn=7200)

    async def fetch(signed: str) -> tuple[int, tuple[str, str] | bytes]:
        async with aiohttp.ClientSession() as http, http.get(signed) as resp:
            body = await resp.read()
            return resp.status, body if resp.status == 200 else xml_error(body)

    def read():
        return reader.get_object(Bucket=bucket, Key="plain.bin")["Body"].read()

    assert await fetch(short) == (200, data["plain.bin"])  # verified, and remembered
    clock.offset = 14 * 60  # inside S3's 15 minutes
    assert await asyncio.to_thread(read) == data["plain.bin"]
    clock.offset = 3600
    assert await fetch(short) == (403, ("AccessDenied", "Request has expired"))
    assert await fetch(long) == (200, data["plain.bin"])  # a presigned URL is good until it expires
    assert await asyncio.to_thread(error, reader.get_object, Bucket=bucket, Key="plain.bin") == (
        "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", 403)
    clock.offset = -16 * 60  # the worker's clock behind the client's
    assert (await asyncio.to_thread(error, reader.list_buckets))[0] == "RequestTimeTooSkewed"


async def test_s3fs_with_the_key_reads_and_lists(cluster_factory, data, bucket, keys_file):
    import s3fs

    cluster = await cluster_factory(2, client_keys=client_keys_arg(str(keys_file)))

    def check():
        fs = s3fs.S3FileSystem(key="limited", secret="limited-secret", skip_instance_cache=True,
                               use_listings_cache=False,
                               client_kwargs={"endpoint_url": cluster.workers[0].url, "region_name": "us-east-1"})
        key, body = KEYS[3], data[KEYS[3]]
        with fs.open(f"{bucket}/{key}", "rb", block_size=CHUNK // 2) as f:
            rnd = random.Random(5)
            for _ in range(5):
                pos, n = rnd.randrange(len(body)), rnd.randrange(1, 2 * CHUNK)
                f.seek(pos)
                assert f.read(n) == body[pos:pos + n]
        assert fs.cat(f"{bucket}/{KEYS[1]}") == data[KEYS[1]]
        assert sorted(fs.ls(f"{bucket}/dir with spaces", detail=False)) == [f"{bucket}/{KEYS[1]}"]
        wrong = s3fs.S3FileSystem(key="limited", secret="nope", skip_instance_cache=True,
                                  client_kwargs={"endpoint_url": cluster.workers[0].url, "region_name": "us-east-1"})
        with pytest.raises(PermissionError):
            wrong.cat(f"{bucket}/{KEYS[0]}")

    await asyncio.to_thread(check)


def test_key_files_allow_comments_blank_lines_and_bucket_lists():
    keys = parse_client_keys("# header\n\n  a   s1  \nb s2 x,y.z # note\nc s3#not-a-comment\n")
    assert keys == (ClientKey("a", "s1"), ClientKey("b", "s2", frozenset({"x", "y.z"})),
                    ClientKey("c", "s3#not-a-comment"))
    assert keys[1].may_read("x") and not keys[1].may_read("w") and keys[0].may_read("anything")
    assert "s2" not in repr(keys[1])  # never the secret in a log line


@pytest.mark.parametrize(("text", "message"), [
    ("a s1\nb\n", "keys line 2: expected ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,bucket...], got 1 words"),
    ("# one\na topsecret b1 b2\n", "keys line 2: expected ACCESS_KEY_ID SECRET_ACCESS_KEY"),
    ("a s1\n\na s2\n", "keys line 3: access key id 'a' is already defined above"),
    ("a s1 good,bad_bucket\n", "keys line 1: invalid bucket list 'good,bad_bucket'"),
    ("a s1 ,\n", "keys line 1: invalid bucket list ','"),
    ("a/b s1\n", "keys line 1: invalid access key id"),
    ("ключ s1\n", "keys line 1: invalid access key id"),
    ("# nothing\n\n", "keys holds no keys"),
])
def test_malformed_key_files_name_the_line_and_never_the_secret(text, message):
    with pytest.raises(ValueError) as raised:
        parse_client_keys(text, "keys")
    assert message in str(raised.value)
    assert "topsecret" not in str(raised.value) and "s2" not in str(raised.value)


def test_a_malformed_key_file_stops_the_worker_at_startup(tmp_path):
    path = tmp_path / "keys"
    path.write_text("ok secret\nbroken\n")
    env = cli_env(P2PCACHE_CLIENT_KEYS=str(path))
    proc = subprocess.run([sys.executable, "-m", "p2pcache", "worker", "--master", "http://127.0.0.1:9",
                           "--cache-dir", str(tmp_path / "cache"), "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert f"argument --client-keys: {path} line 2: expected ACCESS_KEY_ID SECRET_ACCESS_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_signature_over_content_length_holds_through_serving_processes(
        cluster_factory, data, bucket, keys_file, processes):
    """A client may sign hop-by-hop headers such as `Content-Length: 0`: a serving process passes a
    cold read on to its coordinator with them as they came, so the signature checks out there too."""
    cluster = await cluster_factory(1, serve_processes=processes, client_keys=client_keys_arg(str(keys_file)))
    url = cluster.workers[0].url
    host = yarl.URL(url).raw_authority
    credentials = Credentials("reader", SECRET)
    signed = AWSRequest(method="GET", url=f"{url}/{bucket}/plain.bin",
                        headers={"Content-Length": "0", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(signed)
    assert "content-length;" in signed.headers["Authorization"]
    presigned = AWSRequest(method="GET", url=f"{url}/{bucket}/big/weights.bin", headers={"Content-Length": "0"})
    S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=60).add_auth(presigned)
    assert "X-Amz-SignedHeaders=content-length%3Bhost" in presigned.url
    for request, body in ((signed, data["plain.bin"]), (presigned, data["big/weights.bin"])):  # each a cold read
        target = yarl.URL(request.url, encoded=True).raw_path_qs
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
        reply = await exchange(url, ("\r\n".join(lines) + "\r\n\r\n").encode())
        assert (reply.status, reply.headers.get("x-p2p-error")) == (200, None), reply.headers.get("x-p2p-reason")
        assert reply.body == body


def test_a_serving_process_passes_on_the_hop_by_hop_headers_a_reader_signed_and_no_other():
    headers = [("Host", "w"), ("Content-Length", "0"), ("Connection", "close"), ("TE", "trailers"),
               ("Range", "bytes=0-9"), ("x-p2p-local", "forged"), ("X-P2P-Local", "forged")]
    local = {"X-P2P-Local": "token"}
    plain = [("Host", "w"), ("Range", "bytes=0-9")]
    assert passed_on(headers, None, "", local) == plain
    auth = "AWS4-HMAC-SHA256 Credential=r/20240101/us-east-1/s3/aws4_request, " \
           "SignedHeaders=content-length;host;x-amz-date, Signature=00"
    assert passed_on(headers, auth, "", local) == [("Host", "w"), ("Content-Length", "0"), ("Range", "bytes=0-9")]
    query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=connection%3Bhost%3Bte&X-Amz-Signature=00"
    assert passed_on(headers, None, query, local) == [("Host", "w"), ("Connection", "close"), ("TE", "trailers"),
                                                      ("Range", "bytes=0-9")]
    assert sigv4_signed_headers("AWS4-HMAC-SHA256 Credential=x, Signature=00", "") == frozenset()
