"""Failing reads through serving processes cost what they cost with one process: an error the
coordinator or a chunk's owner answered is answered as is, not tried again by the next path."""

from __future__ import annotations

import hashlib
import random
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from conftest import CHUNK, metric
from faultproxy import FaultProxy
from p2pcache.objects import ChunkId, ObjectInfo
from p2pcache.ring import Placement, WorkerInfo
from worker import routing
from worker.peer import TAKE_PATH


async def _get(http: aiohttp.ClientSession, url: str, rng: tuple[int, int]) -> tuple[int, bytes, dict]:
    async with http.get(url, headers={"Range": f"bytes={rng[0]}-{rng[1]}"}) as resp:
        return resp.status, await resp.read(), resp.headers


async def _behind_proxy(cluster, **options):
    """A worker whose peers reach it through a FaultProxy (its advertised URL), and the proxy."""
    proxy = await FaultProxy("http://127.0.0.1:1").start()
    worker = await cluster.add_worker(advertise=proxy.url, **options)
    proxy.upstream = worker.address
    await cluster.wait_converged()
    return worker, proxy


async def _read_before_and_after_the_hang(http: aiohttp.ClientSession, proxy: FaultProxy, warm_url: str, url: str,
                                          body: bytes) -> list[str]:
    """Read the object at `warm_url` (every chunk filled by its owner), hang the worker behind
    `proxy`, read it at `url`: both whole and right; what the hung worker was asked in the second
    (for the read: not the chunks filled for it, offered to it once HANDBACK has passed)."""
    async with http.get(warm_url) as resp:
        assert resp.status == 200 and await resp.read() == body
    proxy.mode = "hang"
    before = len(proxy.targets)
    async with http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == body
    return [t for t in proxy.targets[before:] if not t.startswith(TAKE_PATH)]


def _owned_by(s3_client, bucket: str, placement, owner_id: str, name: str, size: int = CHUNK) -> str:
    """The key of a new object named after `name` whose first chunk `owner_id` owns."""
    for i in range(50):
        key = name.format(i)
        s3_client.put_object(Bucket=bucket, Key=key, Body=random.Random(i).randbytes(size))
        info = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], size)
        if placement.owner(info.chunk(0, CHUNK)).id == owner_id:
            return key
    raise AssertionError(f"no object whose first chunk {owner_id} owns")


def _moving(s3_client, bucket: str, placement, holder_id: str, joiner_id: str) -> tuple[str, bytes, ChunkId]:
    """A new one-chunk object whose chunk `holder_id` owns now and `joiner_id` will own once it joins."""
    ring = placement.ring
    after = Placement(ring.with_workers(ring.workers + (WorkerInfo(joiner_id, ""),), ring.epoch + 1))
    for i in range(200):  # one in about 12 with 3 workers, then 4
        key, body = f"moving{i}.bin", random.Random(i).randbytes(CHUNK)
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
        c = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], CHUNK).chunk(0, CHUNK)
        if placement.owner(c).id == holder_id and after.owner(c).id == joiner_id:
            return key, body, c
    raise AssertionError(f"no object whose chunk moves from {holder_id} to {joiner_id}")


def _replicated(s3_client, bucket: str, placement, primary_id: str, follower_id: str) -> tuple[str, bytes, ChunkId]:
    """A new one-chunk object whose chunk has `primary_id` as its primary and `follower_id` as its follower."""
    for i in range(50):  # one in 6 with 3 workers
        key, body = f"replicated{i}.bin", random.Random(i).randbytes(CHUNK)
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
        c = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], CHUNK).chunk(0, CHUNK)
        if [w.id for w in placement.owners(c)[:2]] == [primary_id, follower_id]:
            return key, body, c
    raise AssertionError(f"no object whose chunk {primary_id} and then {follower_id} own")


async def test_an_origin_failure_at_the_owner_is_asked_for_once_per_read(cluster_factory, fault_proxy,
                                                                         s3_client, bucket):
    """S3 stalls every ranged GET: the owner's fill fails after --origin-deadline. The reader's
    serving process answers the owner's 503 as it came; neither aiohttp's path nor the
    coordinator asks the owner (and S3) again. Counted at a proxy in front of the owner."""
    cluster = await cluster_factory(1, serve_processes=2, s3_endpoint=fault_proxy.url, origin_read_timeout=0.5,
                                    origin_deadline=1.0, origin_breaker=0, meta_ttl=3600)
    reader = cluster.workers[0]
    owner, owner_proxy = await _behind_proxy(cluster)
    try:
        # A plain path is answered on the fast path; one with an escape (%20) by aiohttp's.
        keys = [_owned_by(s3_client, bucket, reader.placement, owner.id, name) for name in ("o{}.bin", "o {}.bin")]
        # A connection per request: one that aiohttp answered once stays aiohttp's.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for key in keys:  # both workers know the object: only its GETs will fail
                for w in cluster.workers:
                    async with http.head(f"{w.url}/{bucket}/{key}") as resp:
                        assert resp.status == 200
            fault_proxy.mode = "stall"
            for key in keys:
                before = owner_proxy.requests
                status, _, headers = await _get(http, f"{reader.url}/{bucket}/{key}", (0, 100))
                assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (503, "ServiceUnavailable",
                                                                                      "timeout"), key
                assert f"origin timeout for s3://{bucket}/{key}" in headers["X-P2P-Reason"]
                assert headers["Content-Type"] == "application/xml; charset=utf-8" and headers["x-amz-request-id"]
                # Asked once (before: 3 times from the fast path, which aiohttp's path and then
                # the coordinator repeated; twice from aiohttp's path).
                assert owner_proxy.requests - before == 1, key
    finally:
        await owner_proxy.stop()


@pytest.mark.parametrize("fault", ["denied", "hang"])
async def test_an_object_lookup_that_fails_is_answered_as_the_coordinator_gave_it(cluster_factory, fault_proxy,
                                                                                   s3_client, bucket, fault):
    """S3 refuses every request (403), or never answers: the object's HEAD, asked through the
    coordinator, is the answer, the same one a worker without serving processes gives after the
    same HEADs (1; 3 tries of a timeout). Counted at S3's proxy."""
    cluster = await cluster_factory(1, serve_processes=2, s3_endpoint=fault_proxy.url, origin_breaker=0,
                                    origin_read_timeout=0.5)
    single = await cluster.add_worker(serve_processes=1)
    await cluster.wait_converged()
    s3_client.put_object(Bucket=bucket, Key="k.bin", Body=b"x" * 1000)
    fault_proxy.mode = fault
    answers, heads = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        # A plain path is answered on the fast path; one with an escape (%20) by aiohttp's.
        for worker, key in ((single, "k.bin"), (cluster.workers[0], "k.bin"), (cluster.workers[0], "k x.bin")):
            before = fault_proxy.requests
            status, body, headers = await _get(http, f"{worker.url}/{bucket}/{key}", (0, 100))
            heads.append(fault_proxy.requests - before)
            answers.append((status, headers["X-P2P-Error"], headers["X-P2P-Reason"].replace(" x", ""),
                            headers["Content-Type"], body.split(b"<Resource>")[0].replace(b" x", b"")))
    assert heads[0] == (1 if fault == "denied" else 3), heads
    assert heads[1] == heads[2] == heads[0], heads  # 3 and 2 times as many before
    assert answers[0][:2] == ((502, "OriginError") if fault == "denied" else (503, "ServiceUnavailable"))
    assert ("origin denied access" if fault == "denied" else "origin timeout") in answers[0][2]
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_read_waiting_on_a_hung_peer_is_not_cut_as_a_stalled_reader(cluster_factory, s3_client, bucket,
                                                                             processes):
    """--send-timeout cuts an answer whose reader takes nothing. A read that waits on its own
    source, here a hung owner for longer than that (3 s against 1 s), is not its reader's stall:
    it is answered, from S3 once the owner timed out."""
    cluster = await cluster_factory(1, serve_processes=processes, peer_read_timeout=3.0, send_timeout=1.0)
    reader = cluster.workers[0]
    hung, proxy = await _behind_proxy(cluster)
    try:
        key = _owned_by(s3_client, bucket, reader.placement, hung.id, "waits{}.bin", size=4 * CHUNK)
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        proxy.mode = "hang"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{reader.url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body
            assert await metric(http, reader.url, "p2pcache_stalled_readers_cut_total") == 0
        assert proxy.targets  # it did wait on the hung owner
    finally:
        await proxy.stop()


@pytest.mark.parametrize("next_is_reader", [False, True], ids=["next-another-worker", "next-the-reader"])
async def test_a_hung_peer_costs_a_read_one_timeout_not_one_per_chunk(cluster_factory, s3_client, bucket,
                                                                      next_is_reader):
    """A worker that accepts connections and never answers (as a stopped process does: its kernel
    still accepts, so only the read timeout fires) and stays in the ring (its heartbeats reach the
    master). A read at another worker's serving processes waits for it once; the rest of its
    chunks come from the worker next on the ring, which fills them. Another worker asks the hung
    one first, as their earlier holder (the fills under way then ask it together, and wait for it
    once); the reader itself was told it failed, and asks it no more. Counted at a proxy in front
    of the hung worker."""
    # Seconds without a byte from a peer (60 by default); the worker filling in waits a third of
    # that for the hung one as an earlier holder, so the reader does not fail it over too.
    cluster = await cluster_factory(1, serve_processes=2, peer_read_timeout=3.0)
    reader = cluster.workers[0]
    filler = await cluster.add_worker()
    hung, proxy = await _behind_proxy(cluster)
    try:
        size, next_id = 16 * CHUNK, (reader if next_is_reader else filler).id
        body = random.Random(31).randbytes(size)
        etag = f'"{hashlib.md5(body).hexdigest()}"'  # a single-part upload's: placement known before it
        for n in range(20_000):  # a key whose chunks the hung worker owns all have `next_id` next
            info = ObjectInfo(bucket, f"m{n}.bin", etag, size)
            owners = [[w.id for w in reader.placement.owners(info.chunk(i, CHUNK))] for i in range(16)]
            owned = [i for i, ids in enumerate(owners) if ids[0] == hung.id]
            if len(owned) >= 3 and all(owners[i][1] == next_id for i in owned):
                break
        else:
            raise AssertionError(f"no object whose chunks {hung.id} owns all have {next_id} next")
        key = info.key
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
        assert s3_client.head_object(Bucket=bucket, Key=key)["ETag"] == etag
        url = f"{reader.url}/{bucket}/{key}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            asked = await _read_before_and_after_the_hang(http, proxy, url, url, body)
        direct = [t for t in asked if "local=1" not in t]
        assert len(direct) == 1, (owned, asked)  # was one per chunk it owns, each a timeout
        # Was one per chunk it owns too, one after the other. The fills that run together (a
        # read's readahead) may each ask it before the first gives up: all within that wait.
        holders = [at for t, at in zip(proxy.targets, proxy.times) if "local=1" in t]
        if next_is_reader:
            assert holders == [], (owned, asked)
        else:
            assert 1 <= len(holders) < len(owned), (owned, asked, proxy.targets)
            assert max(holders) - min(holders) < hung.config.holder_timeout(), (owned, asked, holders)
    finally:
        await proxy.stop()


async def test_a_hung_peer_is_waited_for_once_in_a_long_read_by_the_coordinator(cluster_factory, s3_client, bucket,
                                                                               monkeypatch):
    """The same with one process: the coordinator opens its first chunks together, so it may
    wait for the hung worker on several at once, but never again in that read, even once the
    time it asks a failed peer last is over (shortened to 1.5 s here; a read paced by
    --egress-limit outlasts it)."""
    monkeypatch.setattr(routing, "PEER_DOWN_SECONDS", 1.5)
    cluster = await cluster_factory(1, serve_processes=1, peer_read_timeout=3.0, egress_limit=1 << 20)
    reader = cluster.workers[0]
    filler = await cluster.add_worker(egress_limit=0)  # its read only fills the chunks: at full speed
    hung, proxy = await _behind_proxy(cluster)
    try:
        size, chunks, window = 16 * CHUNK, 16, reader.config.readahead + 1  # opened at once
        for i in range(50):  # the hung worker owns the first chunk (the read waits on it) and a late one
            key, body = f"m{i}.bin", random.Random(i).randbytes(size)
            s3_client.put_object(Bucket=bucket, Key=key, Body=body)
            info = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], size)
            owned = [j for j in range(chunks) if reader.placement.owner(info.chunk(j, CHUNK)).id == hung.id]
            if owned and owned[0] == 0 and owned[-1] >= chunks - 3:
                break
        else:
            raise AssertionError("no object with such chunks")
        async with aiohttp.ClientSession() as http:
            targets = await _read_before_and_after_the_hang(http, proxy, f"{filler.url}/{bucket}/{key}",
                                                            f"{reader.url}/{bucket}/{key}", body)
        direct = [t for t in targets if "local=1" not in t]
        # Only chunks opened together before the first timeout (how many of them depends on
        # when each was opened); before, also each of its chunks opened after the 1.5 s (the
        # last ones, here).
        asked = [int(parse_qs(urlsplit(t).query)["index"][0]) for t in direct]
        assert asked and all(j in owned and j < window for j in asked), (owned, asked)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_new_owner_gives_up_on_a_hung_earlier_holder_before_its_reader_gives_up_on_it(
        cluster_factory, s3, s3_client, bucket, serve_processes):
    """A worker joins and owns a chunk now that a hung worker holds (it accepts connections and
    never answers, and still heartbeats). A read of it at a third worker waits on the new owner,
    which asks the hung holder first: it gives up on it after the holder timeout (a third of the
    peer timeout) and fills from S3 while the reader still waits. Before, both waited the peer
    timeout: the reader failed the owner over and filled the chunk itself (asking the hung holder
    again; S3 sent it twice at times). Counted at a proxy in front of the holder and at S3."""
    cluster = await cluster_factory(1, serve_processes=serve_processes, peer_read_timeout=6.0)
    reader = cluster.workers[0]
    other = await cluster.add_worker(serve_processes=1)
    holder, proxy = await _behind_proxy(cluster, serve_processes=1)
    try:
        key, body, c = _moving(s3_client, bucket, reader.placement, holder.id, "w3")
        async with aiohttp.ClientSession() as http:
            # Filled by its owner, the holder. Read at another worker: the reader's serving processes
            # look the object up after the ring change, and so learn the new ring before they read.
            async with http.get(f"{other.url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body
            assert c.name in holder.store
            await holder.rebalancer.stop()  # a hung worker hands nothing over either
            proxy.mode = "hang"
            owner = await cluster.add_worker(serve_processes=1)
            await cluster.wait_converged()
            assert owner.placement.owner(c).id == owner.id and owner.placement.previous_holders(c)[0].id == holder.id
            s3_before, asked_before = s3.get_bytes, len(proxy.targets)
            failures, filled = [await metric(http, reader.url, name) for name in
                                ("p2pcache_peer_failures_total", "p2pcache_origin_bytes_total")]
            async with http.get(f"{reader.url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body
            # The reader waited for the owner and took the chunk from it: it failed nobody over
            # and filled nothing itself (before: it failed the owner over, then the next worker on
            # the ring, which asked the hung holder too, and filled the chunk itself).
            assert await metric(http, reader.url, "p2pcache_peer_failures_total") == failures
            assert await metric(http, reader.url, "p2pcache_origin_bytes_total") == filled
            # The owner gave up on the hung holder once and read the chunk from S3 once.
            assert await metric(http, owner.url, "p2pcache_peer_failures_total") == 1
            assert await metric(http, owner.url, "p2pcache_origin_bytes_total") == c.length
        asked = proxy.targets[asked_before:]
        assert len(asked) == 1 and "local=1" in asked[0], asked  # before: the workers filling in asked it too
        assert s3.get_bytes - s3_before == c.length  # before: at times twice
    finally:
        await proxy.stop()


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_follower_gives_up_on_a_hung_primary_before_its_reader_gives_up_on_it(
        cluster_factory, s3, s3_client, bucket, serve_processes):
    """With --replicas 2, a read at a third worker asks a chunk's follower, which lacks it and
    asks its primary first: a hung one (it accepts connections and never answers). The follower
    gives up on it after the primary timeout (2.7 s here) and fills from S3 while the reader
    still waits (the peer timeout, 4 s). Before, both waited the peer timeout: the reader failed
    the follower over, then the hung primary, and filled the chunk itself (S3 sent it twice)."""
    cluster = await cluster_factory(1, replicas=2, serve_processes=1, peer_read_timeout=4.0, origin_deadline=0.5)
    follower = cluster.workers[0]
    # Each reader starts at its own one of a chunk's owners (routing.read_order): one that starts at the second.
    pair = (WorkerInfo("primary", ""), WorkerInfo("follower", ""))
    reader_id = next(f"r{i}" for i in range(20) if routing.read_order(pair, 2, f"r{i}")[0] is pair[1])
    reader = await cluster.add_worker(worker_id=reader_id, serve_processes=serve_processes)
    primary, proxy = await _behind_proxy(cluster, serve_processes=1)
    try:
        key, body, c = _replicated(s3_client, bucket, reader.placement, primary.id, follower.id)
        proxy.mode = "hang"
        async with aiohttp.ClientSession() as http:
            failures = await metric(http, reader.url, "p2pcache_peer_failures_total")
            s3_before = s3.get_bytes
            async with http.get(f"{reader.url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body
            # The reader waited for the follower and took the chunk from it (before: it failed
            # the follower over, then the primary); the follower gave up on its primary once.
            assert await metric(http, reader.url, "p2pcache_peer_failures_total") == failures
            assert await metric(http, follower.url, "p2pcache_peer_failures_total") == 1
        # The follower's one ask (besides, after its fill, maybe its offer of the copy, a take, and
        # the primary's own look at its --advertise URL at its start, a health check).
        asks = [t for t in proxy.targets if t.startswith("/_p2p/chunk?")]
        assert len(asks) == 1 and "local=1" not in asks[0], proxy.targets
        assert s3.get_bytes - s3_before == c.length  # before: twice (the follower's fill and the reader's)
    finally:
        await proxy.stop()
