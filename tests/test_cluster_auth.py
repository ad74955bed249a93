"""A closed cluster on loopback: internal requests without the cluster's signature are refused and change nothing."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import quote

import aiohttp
import msgpack
import pytest
from yarl import URL

from conftest import CHUNK, SECRET, cli_env, metric, wait_for, worker_args
from faultproxy import FaultProxy
from p2pcache.auth import HEADER, Signer
from p2pcache.local import spawn, stop_all, wait_ready
from p2pcache.master_client import MSGPACK
from p2pcache.service import Fatal
from worker.server import Worker

WRONG = b"not-the-cluster-secret-0123456789"


def signed(secret: bytes | None, method: str, url: str, params: dict | None = None, body: bytes = b"",
           to: str = "", sent: dict | None = None) -> dict:
    """The signature of a request to the master, or to worker `to` that also sends the headers `sent`."""
    return Signer(secret).headers(method, URL(url).path, params, body, to=to, sent=sent)


def registration(worker_id: str, url: str) -> bytes:
    return msgpack.packb({"id": worker_id, "url": url, "capacity": 1 << 30, "weight": 1, "state": "up"})


def files(root: Path) -> list[Path]:
    return [p for sub in ("chunks", "tmp") for p in (root / sub).rglob("*") if p.is_file()]


async def test_registration_and_leave_without_a_valid_signature_are_refused_and_change_nothing(cluster_factory):
    cluster = await cluster_factory(2)
    master = cluster.master
    before = master.membership.ring
    url = f"{master.url}/workers"
    evil = registration("evil", "http://127.0.0.1:9")
    takeover = registration("w0", "http://127.0.0.1:9")
    attempts = [
        ("POST", url, evil, {}, 401),  # no signature
        ("POST", url, evil, signed(WRONG, "POST", url, body=evil), 403),  # another secret
        ("POST", url, evil, signed(SECRET, "POST", url, body=registration("w1", cluster.workers[1].url)), 403),
        ("POST", url, takeover, {HEADER: "t=1,n=00000000000000000000,s=" + "0" * 64}, 401),  # stale
        ("DELETE", f"{url}/w0", b"", {}, 401),
        ("DELETE", f"{url}/w0", b"", signed(WRONG, "DELETE", f"{url}/w0"), 403),
        ("DELETE", f"{url}/w0", b"", signed(SECRET, "DELETE", f"{url}/w1"), 403),  # signed for another id
    ]
    async with aiohttp.ClientSession() as http:
        for method, target, body, headers, status in attempts:
            async with http.request(method, target, data=body or None,
                                    headers=headers | {"Content-Type": MSGPACK}) as resp:
                text = await resp.text()
                assert resp.status == status, (method, target, text)
                assert text.count("\n") == 1 and ("secret" in text or "clock" in text or "signature" in text)
        # A valid signed request captured on the wire cannot be played again.
        heartbeat = msgpack.packb(asdict(cluster.workers[1].agent.me))  # what w1 sends itself
        headers = signed(SECRET, "POST", url, body=heartbeat) | {"Content-Type": MSGPACK}
        async with http.post(url, data=heartbeat, headers=headers) as resp:
            assert resp.status == 200
        async with http.post(url, data=heartbeat, headers=headers) as resp:
            assert resp.status == 403 and "replayed" in await resp.text()
    ring = master.membership.ring
    assert ring.version == before.version and ring.workers == before.workers
    assert [w.id for w in ring.workers] == ["w0", "w1"]
    assert all(w.placement.ring.version == before.version for w in cluster.workers)


async def test_a_peer_chunk_request_without_a_valid_signature_is_refused_and_fetches_nothing(
        cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(1)
    (worker,) = cluster.workers
    body = random.Random(5).randbytes(2 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    etag = s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"]
    params = {"bucket": bucket, "key": "m.bin", "etag": etag, "size": str(len(body)),
              "chunk_size": str(CHUNK), "index": "1"}
    url = f"{worker.url}/_p2p/chunk"
    gets = s3.get_requests
    async with aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), (signed(WRONG, "GET", url, params, to=worker.id), 403),
                                (signed(SECRET, "GET", url, params | {"index": "0"}, to=worker.id), 403),
                                (signed(SECRET, "GET", url, params), 403),  # signed for no worker
                                (signed(SECRET, "GET", url, params, to="w9"), 403)):  # for another one
            async with http.get(url, params=params, headers=headers) as resp:
                assert resp.status == status
                assert resp.headers["X-P2P-Error"] == ("Unauthorized" if status == 401 else "AccessDenied")
        assert s3.get_requests == gets and files(worker.store.root) == []
        assert await metric(http, worker.url, "p2pcache_origin_requests_total") == 0
        async with http.get(url, params=params, headers=signed(SECRET, "GET", url, params, to=worker.id)) as resp:
            sums = int(resp.headers["X-P2P-Sums"])  # the blocks' checksums come first
            assert resp.status == 206 and (await resp.read())[sums:] == body[CHUNK:]  # the same request, signed
        for route in ("health", "ready", "metrics"):  # probes and Prometheus need no secret
            async with http.get(f"{worker.url}/_p2p/{route}") as resp:
                assert resp.status == 200
        for route in ("health", "ring", "metrics"):  # loaders read the ring without the secret
            async with http.get(f"{cluster.master.url}/{route}") as resp:
                assert resp.status == 200


async def test_refused_peer_requests_are_logged_by_client_address(cluster_factory, caplog):
    """With serving processes the coordinator logged every refusal "from " (the unix socket's
    peer), and its 60 s limit on log lines per client, keyed on "", hid every other client's:
    now a serving process passes the client's address on, as a worker without them has it, and a
    client cannot name another."""
    caplog.set_level(logging.WARNING)
    cluster = await cluster_factory(1, serve_processes=2)
    await cluster.add_worker(serve_processes=1)
    params = {"bucket": "b", "key": "k", "etag": '"e"', "size": "10", "chunk_size": str(CHUNK), "index": "0"}
    for w in cluster.workers:
        caplog.clear()
        for source in ("127.0.0.2", "127.0.0.3"):  # loopback addresses both: two clients
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as http:
                async with http.get(f"{w.url}/_p2p/chunk", params=params,
                                    headers={"X-P2P-Client": "x 10.1.1.1"}) as resp:
                    assert resp.status == 401
        refusals = [r.getMessage() for r in caplog.records if "refused GET '/_p2p/chunk'" in r.getMessage()]
        assert [m.split(" from ")[1].split(":")[0] for m in refusals] == ["127.0.0.2", "127.0.0.3"], refusals


async def test_a_worker_with_the_wrong_secret_cannot_join(cluster_factory, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    cluster = await cluster_factory(1)
    intruder = Worker(replace(cluster.workers[0].config, worker_id="intruder", port=0,
                              cache_dir=tmp_path / "intruder", cluster_secret=WRONG))
    with pytest.raises(Fatal, match="refused this worker: bad signature"):
        await intruder.start()  # it stops there: its peer requests would be refused too (the test above)
    await intruder.stop()
    assert any("refused POST '/workers'" in r.getMessage() and "bad signature" in r.getMessage()
               for r in caplog.records if r.name == "p2pcache.master")
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0"]


def secret_env(secret: bytes | None) -> dict[str, str]:
    return cli_env(**({"P2PCACHE_CLUSTER_SECRET": secret.decode()} if secret else {}))


def worker_command(tmp_path: Path, master: str, *flags: str) -> list[str]:
    """A worker beating every 0.2 s: refused on REFUSALS beats in a row (worker/membership.py), it gives up in 1 s."""
    return [sys.executable, "-m", "p2pcache", *worker_args(tmp_path, "--master", master, "--heartbeat-interval", "0.2",
                                                           *flags)]


def test_a_worker_without_the_masters_secret_exits_at_registration_saying_why(tmp_path):
    procs = []
    try:
        master = wait_ready(spawn(procs, secret_env(SECRET), "master", "--listen", "127.0.0.1:0",
                                  "--startup-grace", "0"))
        for secret, why in ((WRONG, "bad signature: the request was not signed with this cluster's secret"),
                            (None, "internal route: a X-P2P-Auth signature made with the cluster secret is required")):
            result = subprocess.run(worker_command(tmp_path, master), env=secret_env(secret), capture_output=True,
                                    text=True, timeout=30)
            assert result.returncode == 1 and "ready" not in result.stdout
            assert result.stderr.splitlines()[-1] == f"p2pcache worker: the master at {master} refused this worker: {why}"
            assert "Traceback" not in result.stderr
    finally:
        stop_all(procs)


def test_a_worker_a_master_restarted_with_another_secret_refuses_exits_saying_why(tmp_path):
    procs, rotated = [], b"the-rotated-cluster-secret-0123456789"
    worker = None
    try:
        master = wait_ready(spawn(procs, secret_env(SECRET), "master", "--listen", "127.0.0.1:0",
                                  "--startup-grace", "0"))
        worker = subprocess.Popen(worker_command(tmp_path, master),
                                  env=secret_env(SECRET), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_ready(worker)
        stop_all(procs)
        # The same address, as a master's Service keeps it across a restart.
        spawn(procs, secret_env(rotated), "master", "--listen", master.removeprefix("http://"), "--startup-grace", "0")
        _, err = worker.communicate(timeout=20)  # a worker that heartbeats on in vain never gets here
        assert worker.returncode == 1, err
        assert err.splitlines()[-1] == (f"p2pcache worker: the master at {master} refused this worker: bad signature: "
                                        f"the request was not signed with this cluster's secret")
        assert "Traceback" not in err and "could not leave" not in err  # it does not try what would be refused
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
        stop_all(procs)


async def test_a_refusal_that_passes_is_outlived(cluster_factory, tmp_path):
    """A proxy before the master answers 403 to three heartbeats (as a clock stepped back into
    line would give 401s): the worker beats on; refused for good, it gives up."""
    cluster = await cluster_factory(1, heartbeat=0.2)
    proxy = await FaultProxy(cluster.master.url).start()
    worker = Worker(replace(cluster.workers[0].config, worker_id="w1", port=0, cache_dir=tmp_path / "w1",
                            master_url=proxy.url))
    try:
        await worker.start()
        cluster.workers.append(worker)
        await cluster.wait_converged()
        proxy.mode = "denied"
        began = len(proxy.targets)
        await wait_for(lambda: proxy.targets[began:].count("/workers") >= 3, what="3 refused heartbeats")
        proxy.mode = None
        began = len(proxy.targets)
        await wait_for(lambda: proxy.targets[began:].count("/workers") >= 3, what="heartbeats after them")
        assert not worker.agent.refused.done()
        assert "w1" in {w.id for w in cluster.master.membership.ring.workers}
        proxy.mode = "denied"  # for good: it gives up
        await asyncio.wait_for(asyncio.shield(worker.agent.refused), 10)
        assert "refused this worker" in str(worker.agent.refused.result())
    finally:
        await proxy.stop()


async def test_a_worker_id_moves_to_a_new_url_only_with_the_secret(cluster_factory):
    closed = await cluster_factory(1)
    opened = await cluster_factory(1, secret=None)
    async with aiohttp.ClientSession() as http:
        for cluster, moved_status in ((closed, 200), (opened, 409)):
            url = f"{cluster.master.url}/workers"
            for address, status in (("http://127.0.0.1:9", 200), ("http://127.0.0.1:10", moved_status)):
                body = registration("w9", address)
                async with http.post(url, data=body, headers=signed(cluster.secret, "POST", url, body=body)
                                     | {"Content-Type": MSGPACK}) as resp:
                    assert resp.status == status, await resp.text()
            w9 = {w.id: w.url for w in cluster.master.membership.ring.workers}["w9"]
            assert w9 == ("http://127.0.0.1:10" if moved_status == 200 else "http://127.0.0.1:9")


async def test_a_cluster_without_a_secret_says_it_is_open(cluster_factory, caplog):
    caplog.set_level(logging.WARNING)
    await cluster_factory(1, secret=None)
    open_warnings = {r.name for r in caplog.records if "the cluster is OPEN" in r.getMessage()}
    assert open_warnings == {"p2pcache.master", "p2pcache.worker"}


async def test_a_closed_cluster_logs_no_open_warning(cluster_factory, caplog):
    caplog.set_level(logging.WARNING)
    await cluster_factory(1)
    assert not [r for r in caplog.records if "OPEN" in r.getMessage()]


async def test_signatures_survive_keys_with_every_kind_of_character(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2)
    key = "dir/ünï cødé+%2F&a=b?c#d;e,f'g\"h~!*().bin"
    body = random.Random(10).randbytes(6 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    async with aiohttp.ClientSession() as http:
        for worker in cluster.workers:  # each fetches the other's chunks over the signed peer route
            async with http.get(f"{worker.url}/{bucket}/{quote(key, safe='/')}") as resp:
                assert resp.status == 200 and await resp.read() == body
        async def served() -> float | None:  # serving processes, if any, report within 0.2 s
            total = sum([await metric(http, w.url, "p2pcache_peer_bytes_served_total") for w in cluster.workers])
            return total if total >= len(body) else None

        total = await wait_for(served, what="the peer bytes to be counted")
        failures = [await metric(http, w.url, "p2pcache_peer_failures_total") for w in cluster.workers]
        assert total == len(body) and failures == [0, 0]  # each chunk went once to its non-owner


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_signed_request_that_changes_state_is_taken_once_and_only_by_its_worker(cluster_factory, processes):
    """A captured preload, unpin or take played again, at its worker or at another, is refused; a read
    (status) may come again, at its worker only. With serving processes the coordinator keeps the nonces."""
    cluster = await cluster_factory(2, serve_processes=processes)
    w0, w1 = cluster.workers
    unpin, preload = msgpack.packb({"bucket": "b", "prefix": "x"}), msgpack.packb({"chunks": []})
    take = {"bucket": "b", "key": "k", "etag": '"0123"', "size": "1", "chunk_size": str(CHUNK), "index": "0",
            "from": w1.id}
    async with aiohttp.ClientSession() as http:
        for method, path, params, body in (("POST", "/_p2p/unpin", None, unpin),
                                           ("POST", "/_p2p/preload", None, preload),
                                           ("GET", "/_p2p/take", take, b"")):
            headers = signed(SECRET, method, path, params, body, to=w0.id) | {"Content-Type": MSGPACK}
            answers = []
            for worker in (w0, w0, w1):
                async with http.request(method, worker.url + path, params=params, data=body or None,
                                        headers=headers) as resp:
                    answers.append((resp.status, resp.headers.get("X-P2P-Reason", "")))
            assert answers[0][0] != 403, (path, answers)  # taken (whatever the worker makes of it)
            assert answers[1][0] == 403 and "replayed" in answers[1][1], (path, answers)
            assert answers[2][0] == 403 and f"for worker {w1.id}" in answers[2][1], (path, answers)
        status = signed(SECRET, "GET", "/_p2p/status", to=w0.id)
        for worker, code in ((w0, 200), (w0, 200), (w1, 403)):
            async with http.get(worker.url + "/_p2p/status", headers=status) as resp:
                assert resp.status == code, worker.id
