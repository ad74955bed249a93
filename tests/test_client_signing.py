"""The loader client signs with a reader key: real workers with --client-keys check it."""

from __future__ import annotations

import asyncio
import os
import random
import sys

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import CHUNK
from p2pcache import Client, SyncClient
from p2pcache.errors import AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch
from p2pcache.fs import P2PCacheFileSystem
from p2pcache.signer import Signer, signer_from
from worker.readers import client_keys_arg

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEY = "signed reads/ünïcødé +%&=.bin"


@pytest.fixture
def keys_file(tmp_path, bucket):
    path = tmp_path / "client-keys"
    path.write_text(f"reader {SECRET}\nelsewhere elsewhere-secret other-bucket-a\n")
    return path


@pytest.fixture
def body(s3_client, bucket):
    data = random.Random(31).randbytes(4 * CHUNK + 77)
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=data)
    return data


@pytest.fixture
async def closed_cluster(cluster_factory, keys_file):
    return await cluster_factory(2, client_keys=client_keys_arg(str(keys_file)))


@pytest.mark.parametrize("path, query", [("/b/k", ""), ("/b/dir%20x/%C3%BC%2B.bin", ""),
                                         ("/b", "list-type=2&prefix=a%2Fb%20c&delimiter=%2F")])
def test_the_signature_is_botocores(path, query):
    now = 1_700_000_000.0
    mine = Signer("AKID", SECRET, "eu-west-1", clock=lambda: now).sign("GET", "127.0.0.1:7071", path, query)
    request = AWSRequest("GET", f"http://127.0.0.1:7071{path}" + (f"?{query}" if query else ""),
                         headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD", "X-Amz-Date": mine["x-amz-date"]})
    request.context["timestamp"] = mine["x-amz-date"]  # botocore's add_auth would take its own clock
    auth = S3SigV4Auth(Credentials("AKID", SECRET), "s3", "eu-west-1")
    assert auth.signed_headers(auth.headers_to_sign(request)) == "host;x-amz-content-sha256;x-amz-date"
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    assert mine["Authorization"] == ("AWS4-HMAC-SHA256 Credential=AKID/20231114/eu-west-1/s3/aws4_request, "
                                     f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={expected}")
    assert mine["x-amz-date"] == "20231114T221320Z" and mine["Host"] == "127.0.0.1:7071"


def test_credentials_come_from_the_environment_only_when_asked():
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-north-1"}
    assert signer_from(None, None, None, None, env) is None
    signer = signer_from(None, None, None, "env", env)
    assert (signer.access_key, signer.region) == ("id", "eu-north-1") and "s" not in repr(signer).split("(")[1]
    assert signer_from("x", "y", None, None, env).region == "us-east-1"
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        signer_from(None, None, None, "env", {})
    with pytest.raises(ValueError, match="both"):
        signer_from("x", None, None, None, env)
    with pytest.raises(ValueError, match="credentials="):
        signer_from(None, None, None, "profile", env)


async def test_a_client_with_the_right_key_reads_the_right_bytes(closed_cluster, body, bucket, tmp_path):
    async with Client(closed_cluster.master.url, access_key="reader", secret_key=SECRET) as client:
        assert await client.read(bucket, KEY) == body
        assert await client.read(bucket, KEY, CHUNK - 5, 2 * CHUNK + 5) == body[CHUNK - 5:2 * CHUNK + 5]
        await client.download(bucket, KEY, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body
        objects, prefixes = await client.list(bucket, "signed reads/", "/")
        assert [o["Key"] for o in objects] == [KEY] and prefixes == []

    def sync_read() -> bytes:
        with SyncClient(closed_cluster.master.url, access_key="reader", secret_key=SECRET) as client:
            with client.open(bucket, KEY) as f:
                f.seek(3 * CHUNK)
                return f.read()

    assert await asyncio.to_thread(sync_read) == body[3 * CHUNK:]


@pytest.mark.parametrize("options, error, code", [
    ({}, AccessDenied, "AccessDenied"),
    ({"access_key": "reader", "secret_key": "wrong"}, SignatureDoesNotMatch, "SignatureDoesNotMatch"),
    ({"access_key": "nobody", "secret_key": SECRET}, InvalidAccessKeyId, "InvalidAccessKeyId"),
    ({"access_key": "elsewhere", "secret_key": "elsewhere-secret"}, AccessDenied, "AccessDenied"),
])
async def test_a_wrong_or_missing_key_gets_s3s_error(closed_cluster, body, bucket, options, error, code):
    async with Client(closed_cluster.master.url, **options) as client:
        with pytest.raises(error) as info:
            await client.read(bucket, KEY)
        assert info.value.code == code


async def test_the_environment_signs_p2pcache_get_and_fsspec(closed_cluster, body, bucket, tmp_path, monkeypatch):
    env = {"AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-west-2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url, master = f"s3://{bucket}/{KEY}", ["--master", closed_cluster.master.url]

    async def get(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "p2pcache", "get", url, *args, *master,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode()

    assert await get("-o", str(tmp_path / "env"), "--credentials", "env") == (0, "")
    assert (tmp_path / "env").read_bytes() == body
    code, err = await get("-o", str(tmp_path / "unsigned"))  # the environment alone signs nothing
    assert code == 1 and err.startswith("p2pcache get: access denied (AccessDenied)") and err.count("\n") == 1
    code, err = await get("-o", str(tmp_path / "bad"), "--access-key", "reader", "--secret-key", "nope")
    assert code == 1 and "SignatureDoesNotMatch" in err and "nope" not in err

    def read_fsspec() -> bytes:
        fs = P2PCacheFileSystem(closed_cluster.master.url, credentials="env", skip_instance_cache=True)
        try:
            with fs.open(f"{bucket}/{KEY}") as f:
                f.seek(CHUNK + 1)
                return f.read(CHUNK)
        finally:
            fs.close()

    assert await asyncio.to_thread(read_fsspec) == body[CHUNK + 1:2 * CHUNK + 1]


async def test_p2pcache_sync_signs_with_the_same_flags_as_get(closed_cluster, body, s3_client, bucket, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="signed reads/config.json", Body=b"{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PCACHE_", "AWS_"))}
    url = f"s3://{bucket}/signed reads/"

    async def sync(out: str, *args: str, **extra_env: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pcache", "sync", url, str(tmp_path / out), *args,
            "--master", closed_cluster.master.url, env=env | extra_env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode()

    expected = {KEY.removeprefix("signed reads/"): body, "config.json": b"{}"}
    for out, args, extra_env in (("flags", ["--access-key", "reader"], {"P2PCACHE_SECRET_KEY": SECRET}),
                                 ("env", ["--credentials", "env"],
                                  {"AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": SECRET})):
        code, err = await sync(out, *args, **extra_env)
        assert code == 0, err
        assert {p.name: p.read_bytes() for p in (tmp_path / out).iterdir() if not p.name.startswith(".")} == expected
    code, err = await sync("unsigned")
    assert (code, err) == (1, f"p2pcache sync: access denied (AccessDenied): s3://{bucket}: Access Denied\n")
    code, err = await sync("bad", "--access-key", "reader", "--secret-key", "nope")
    assert code == 1 and err.startswith("p2pcache sync: access denied (SignatureDoesNotMatch)") and "nope" not in err
    assert err.count("\n") == 1 and not (tmp_path / "unsigned").exists() and not (tmp_path / "bad").exists()
    code, err = await sync("half", "--access-key", "reader")  # the flags a user gives, named
    assert (code, err) == (2, "p2pcache sync: a reader key needs both --access-key and --secret-key (or "
                              "P2PCACHE_ACCESS_KEY and P2PCACHE_SECRET_KEY)\n")
