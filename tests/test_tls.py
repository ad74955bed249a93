"""A cluster over TLS: https:// master and workers with a self-signed certificate made here."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import sys

import aiohttp
import fsspec
import pytest

from certs import self_signed
from conftest import CHUNK, SECRET, cli_env, metric, wait_for
from master.config import MasterConfig
from master.server import Master
from p2pcache import Client
from p2pcache.errors import Unavailable
from worker.config import WorkerConfig
from worker.server import Worker


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    pem, key = self_signed("p2pcache test", ("localhost",))
    root = tmp_path_factory.mktemp("tls")
    (root / "cert.pem").write_text(pem)
    (root / "key.pem").write_text(key)
    return str(root / "cert.pem"), str(root / "key.pem")


async def test_a_cluster_over_tls_serves_and_verifies_certificates(s3, s3_client, bucket, tmp_path, cert, caplog):
    caplog.set_level(logging.WARNING)
    cert_file, key_file = cert
    body = random.Random(8).randbytes(6 * CHUNK + 11)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    master = Master(MasterConfig(chunk_size=CHUNK, cluster_secret=SECRET, tls_cert=cert_file, tls_key=key_file))
    await master.start()
    workers = []

    async def worker(i: int, ca: str) -> Worker:
        w = Worker(WorkerConfig(master_url=master.url, cache_dir=tmp_path / f"w{i}", worker_id=f"w{i}",
                                s3_endpoint=s3.url, min_free=0, capacity=1 << 30, heartbeat_interval=0.3,
                                cluster_secret=SECRET, tls_cert=cert_file, tls_key=key_file, tls_ca=ca))
        await w.start()
        workers.append(w)
        return w

    trusted = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=cert_file))
    try:
        assert master.url.startswith("https://")
        w0, w1 = await worker(0, cert_file), await worker(1, cert_file)
        await worker(2, "")  # trusts the system's CAs only: cannot talk to this master
        await wait_for(lambda: all(w.placement is not None and len(w.placement.workers) == 2 for w in (w0, w1)),
                       what="w0 and w1 to join over https")
        assert sorted(w.url.split(":")[0] for w in master.membership.ring.workers) == ["https", "https"]
        await wait_for(lambda: any("heartbeat failed" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED"
                                   in r.getMessage() for r in caplog.records), what="w2's heartbeat to fail")
        assert "w2" not in {w.id for w in master.membership.ring.workers}
        async with aiohttp.ClientSession(connector=trusted) as http:
            for w in (w0, w1):
                async with http.get(f"{w.url}/{bucket}/m.bin") as resp:
                    assert resp.status == 200 and await resp.read() == body
            # Each worker owns some chunks and served them to the other, over https.
            assert await metric(http, w0.url, "p2pcache_peer_bytes_served_total") > 0
            assert await metric(http, w1.url, "p2pcache_peer_bytes_served_total") > 0
            async with Client(master.url, session=http) as client:  # a loader reads over https too
                assert await client.read(bucket, "m.bin", CHUNK - 3, 3 * CHUNK) == body[CHUNK - 3:3 * CHUNK]
        async with aiohttp.ClientSession() as http:  # without the CA: the certificate is refused
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{w0.url}/_p2p/health")
    finally:
        for w in workers:
            await w.stop()
        await master.stop()


@pytest.fixture
async def tls_cluster(s3, tmp_path, cert):
    """A master and one worker over https, with the self-signed certificate: (master, worker)."""
    cert_file, key_file = cert
    master = Master(MasterConfig(chunk_size=CHUNK, cluster_secret=SECRET, tls_cert=cert_file, tls_key=key_file))
    await master.start()
    worker = Worker(WorkerConfig(master_url=master.url, cache_dir=tmp_path / "w0", worker_id="w0", s3_endpoint=s3.url,
                                 min_free=0, capacity=1 << 30, heartbeat_interval=0.3, cluster_secret=SECRET,
                                 tls_cert=cert_file, tls_key=key_file, tls_ca=cert_file))
    try:
        await worker.start()
        await wait_for(lambda: worker.placement is not None and worker.placement.workers, what="w0 to join")
        yield master, worker
    finally:
        await worker.stop()
        await master.stop()


async def test_get_and_sync_trust_the_ca_of_p2pcache_tls_ca(tls_cluster, s3_client, bucket, tmp_path, cert):
    cert_file, _ = cert
    master, _ = tls_cluster
    body = random.Random(9).randbytes(2 * CHUNK + 5)
    s3_client.put_object(Bucket=bucket, Key="d/m.bin", Body=body)
    env = cli_env(P2PCACHE_MASTER=master.url)

    async def run(*args: str, ca: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pcache", *args, env=env | ({"P2PCACHE_TLS_CA": ca} if ca else {}),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode()

    for args in (["get", f"s3://{bucket}/d/m.bin", "-o", str(tmp_path / "got")],
                 ["sync", f"s3://{bucket}/d/", str(tmp_path / "synced")]):
        code, err = await run(*args, ca="")  # the system's CAs only: the certificate is refused
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err and err.count("\n") == 1, err
        assert "ConnectionKey" not in err  # one readable line, not a repr
        code, err = await run(*args, ca=cert_file)
        assert code == 0, err
    assert (tmp_path / "got").read_bytes() == body and (tmp_path / "synced" / "m.bin").read_bytes() == body
    # Plain HTTP to the https:// master: it hangs up, and the error says what that most often means.
    env["P2PCACHE_MASTER"] = master.url.replace("https://", "http://")
    for args in (["get", f"s3://{bucket}/d/m.bin", "-o", str(tmp_path / "got2")], ["status"]):
        code, err = await run(*args, ca=cert_file)
        assert code == 1 and "is the URL https://?" in err and err.count("\n") == 1, err


@pytest.mark.usefixtures("fsspec_instances")
async def test_fsspec_trusts_the_ca_of_its_tls_ca_option(tls_cluster, s3_client, bucket, cert):
    """`tls_ca=` reaches the client, as `Client(tls_ca=...)` takes it (it used to be ignored)."""
    cert_file, _ = cert
    master, _ = tls_cluster
    body = random.Random(10).randbytes(2 * CHUNK + 7)
    s3_client.put_object(Bucket=bucket, Key="f/m.bin", Body=body)
    path = f"{bucket}/f/m.bin"

    def scenario() -> None:
        with fsspec.open(f"p2pcache://{path}", "rb", master=master.url, tls_ca=cert_file) as f:
            assert f.read() == body
        fs = fsspec.filesystem("p2pcache", master=master.url, tls_ca=cert_file)
        assert fs.cat_file(path, start=CHUNK - 3, end=CHUNK + 3) == body[CHUNK - 3:CHUNK + 3]
        untrusting = fsspec.filesystem("p2pcache", master=master.url)  # the system's CAs only
        with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.cat_file(path)

    await asyncio.to_thread(scenario)
