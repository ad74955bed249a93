"""Preload jobs on a real cluster, S3 bytes counted at the S3 server."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import replace

import aiohttp
import pytest

from conftest import CHUNK, SECRET, wait_for
from faultproxy import FaultProxy
from master.preload import MAX_FAILURES, REFUSED, SETTLE, UNANSWERED, PreloadJob, _rank, _regroup, pause, plan
from p2pcache.admin_client import AdminClient, preload
from p2pcache.preload_cli import summary
from p2pcache.sizes import format_size
from p2pcache.auth import Signer
from p2pcache.control import WorkerControl
from p2pcache.errors import AccessDenied, BadRequest, NotFound
from p2pcache.objects import ObjectInfo
from p2pcache.ring import Placement, RingSnapshot, WorkerInfo
from worker.server import Worker

KEYS = 5


def put_model(s3_client, bucket: str, prefix: str, seed: int, n: int = KEYS) -> dict[str, bytes]:
    rnd = random.Random(seed)
    data = {f"{prefix}/part-{i}.bin": rnd.randbytes(rnd.randrange(1, 4 * CHUNK)) for i in range(n)}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return data


async def read_everywhere(cluster, bucket: str, data: dict[str, bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:
            for key, body in data.items():
                async with http.get(f"{w.url}/{bucket}/{key}") as resp:
                    assert resp.status == 200 and await resp.read() == body, (w.id, key)


async def test_preload_reads_each_byte_once_and_nothing_outside_the_prefix(cluster, s3, s3_client, bucket):
    model = put_model(s3_client, bucket, "llama", 1)
    other = put_model(s3_client, bucket, "other", 2)  # never read
    s3_client.put_object(Bucket=bucket, Key="llama-notes.txt", Body=b"not under llama/")
    size = sum(map(len, model.values()))
    before = s3.get_bytes
    job = await preload(cluster.master.url, [f"s3://{bucket}/llama/"], secret=SECRET)
    assert job["state"] == "done", job
    assert (job["objects_done"], job["objects_total"]) == (KEYS, KEYS)
    assert job["bytes_done"] == job["bytes_total"] == job["bytes_from_s3"] == size
    assert job["chunks_done"] == job["chunks_total"] == sum(-(-len(b) // CHUNK) for b in model.values())
    assert s3.get_bytes - before == size  # each byte once, nothing of other/ or llama-notes.txt
    # Every object now reads through every worker with no S3 byte.
    before = s3.get_bytes
    await read_everywhere(cluster, bucket, model)
    assert s3.get_bytes == before
    # A second preload costs nothing and says so.
    again = await preload(cluster.master.url, [f"s3://{bucket}/llama/"], secret=SECRET)
    assert again["state"] == "done" and again["bytes_from_s3"] == 0 and again["bytes_done"] == size
    assert s3.get_bytes == before
    assert other  # listed in the bucket, never read: counted above


async def test_two_concurrent_preloads_of_a_new_prefix_read_it_once(cluster, s3, s3_client, bucket):
    model = put_model(s3_client, bucket, "m", 3)
    before = s3.get_bytes
    jobs = await asyncio.gather(*(preload(cluster.master.url, [f"s3://{bucket}/m/"], secret=SECRET)
                                  for _ in range(2)))
    assert [j["state"] for j in jobs] == ["done", "done"]
    assert s3.get_bytes - before == sum(map(len, model.values()))
    assert sum(j["bytes_from_s3"] for j in jobs) == sum(map(len, model.values()))


async def test_a_key_preloads_that_object_only(cluster, s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="w.bin", Body=b"x" * (CHUNK + 5))
    s3_client.put_object(Bucket=bucket, Key="w.bin.old", Body=b"y" * 100)
    before = s3.get_bytes
    job = await preload(cluster.master.url, [f"s3://{bucket}/w.bin"], secret=SECRET)
    assert job["objects_total"] == 1 and job["state"] == "done"
    assert s3.get_bytes - before == CHUNK + 5


async def test_clear_errors_at_once(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2, allowed_buckets=frozenset({bucket}))
    s3_client.put_object(Bucket=bucket, Key="a/x", Body=b"1")
    async with AdminClient(cluster.master.url, SECRET) as admin:
        with pytest.raises(NotFound, match="no objects under s3://.*/nothing/"):
            await admin.preload([f"s3://{bucket}/nothing/"])
        with pytest.raises(AccessDenied, match="not served by this cache"):
            await admin.preload(["s3://some-other-bucket/x/"])
        with pytest.raises(BadRequest, match="not an s3://"):
            await admin.preload(["http://x/y"])
        assert await admin.jobs() == []  # no job was started for any of these
    async with AdminClient(cluster.master.url, None) as anonymous:
        with pytest.raises(AccessDenied, match="cluster secret"):
            await anonymous.preload([f"s3://{bucket}/a/"])


async def test_a_missing_bucket_is_named(cluster):
    async with AdminClient(cluster.master.url, SECRET) as admin:
        with pytest.raises(NotFound) as missing:
            await admin.preload(["s3://no-such-bucket-p2p/x/"])
        assert missing.value.code == "NoSuchBucket"


async def test_the_job_outlives_its_caller_and_can_be_cancelled(cluster_factory, fault_proxy, s3_client, bucket):
    # S3 stalls every ranged GET after its headers: the job cannot finish on its own.
    fault_proxy.mode = None
    fault_proxy.script = ["stall"] * 1000
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put_model(s3_client, bucket, "big", 4, n=3)
    async with AdminClient(cluster.master.url, SECRET) as admin:
        job = await admin.preload([f"s3://{bucket}/big/"])
    assert job["state"] == "running"
    async with AdminClient(cluster.master.url, SECRET) as admin:  # a new caller finds it by id
        await wait_for(lambda: fault_proxy.stalling > 0, what="a fill to reach S3")
        running = await admin.job(job["id"])
        assert running["state"] == "running" and running["chunks_done"] < running["chunks_total"]
        cancelled = await admin.cancel(job["id"])
        assert cancelled["state"] == "cancelled" and cancelled["chunks_done"] < cancelled["chunks_total"]
        assert [(j["id"], j["state"]) for j in await admin.jobs()] == [(job["id"], "cancelled")]
        with pytest.raises(NotFound, match="no preload job 'nope'"):
            await admin.job("nope")


@pytest.mark.parametrize("method,path", [("GET", "/_p2p/list?bucket=b&prefix="), ("POST", "/_p2p/preload"),
                                         ("GET", "/_p2p/status"), ("POST", "/_p2p/has"),
                                         ("POST", "/_p2p/unpin")])
async def test_unsigned_requests_to_the_new_worker_routes_are_refused(cluster, method, path):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"X-P2P-Auth": "t=1,n=00000000000000000000,s=" + "0" * 64}):
            async with http.request(method, cluster.workers[0].url + path, data=b"\x80", headers=headers) as resp:
                assert resp.status == 401 and resp.headers["X-P2P-Error"] == "Unauthorized"


@pytest.mark.parametrize("method,path", [("POST", "/preload"), ("GET", "/preload"), ("GET", "/preload/x"),
                                         ("DELETE", "/preload/x"), ("POST", "/unpin"), ("GET", "/status")])
async def test_unsigned_requests_to_the_master_admin_routes_are_refused(cluster, method, path):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, cluster.master.url + path, json={"urls": ["s3://b/"]}) as resp:
            assert resp.status == 401
    assert cluster.master.admin.jobs == {}


async def test_malformed_worker_control_bodies_get_a_400(cluster):
    from p2pcache.auth import Signer
    import msgpack
    signer, w = Signer(SECRET), cluster.workers[0]
    bad_rings = [msgpack.packb({"chunks": [], "ring": ring})
                 for ring in ("m", ["m"], ["m", "1"], ["m", True], [1, 1])]
    async with aiohttp.ClientSession() as http:
        for path, body in (("/_p2p/preload", b"\xc1"), ("/_p2p/preload", b"\x81\xa6chunks\x91\x93\x01\x02\x03"),
                           *(("/_p2p/preload", b) for b in bad_rings),
                           ("/_p2p/has", b"\x90"), ("/_p2p/unpin", b"\x80")):
            async with http.post(w.url + path, data=body,
                                 headers=signer.headers("POST", path, None, body, to=w.id)) as resp:
                assert resp.status == 400, (path, body, resp.status)
                assert resp.headers["X-P2P-Error"] == "InvalidRequest"
        async with http.get(w.url + "/_p2p/preload", headers=signer.headers("GET", "/_p2p/preload", to=w.id)) as resp:
            assert resp.status == 405


async def test_status_names_a_worker_that_does_not_answer(cluster):
    gone = cluster.workers[2]
    await gone.stop(leave=False)  # still in the ring until its heartbeats expire
    async with AdminClient(cluster.master.url, SECRET) as admin:
        rows = {w["id"]: w for w in (await admin.status())["workers"]}
    assert rows[gone.id]["state"] == "unreachable" and gone.url in rows[gone.id]["error"]
    assert rows["w0"]["state"] == "up" and rows["w0"]["capacity"] == 1 << 30


def test_a_retried_follower_copy_goes_to_the_follower_of_the_new_ring():
    """With replicas, a chunk whose follower failed is tried again at the follower of the next
    ring, not at its primary (which has it: the follower's copy would never be made)."""
    def ring(ids):
        return Placement(RingSnapshot("m", 1, 1 << 20, 2, workers=tuple(WorkerInfo(i, f"http://{i}") for i in ids)))

    before, after = ring(["a", "b", "c", "d"]), ring(["a", "b", "c"])
    info = ObjectInfo("b", "model.bin", '"e"', 64 << 20)
    todo = plan([info], before)
    failed = [(c, _rank(before, c, "d")) for c in todo["d"]]  # d's batches failed: it left
    assert {rank for _, rank in failed} == {0, 1}
    again = _regroup(failed, after)
    for c, rank in failed:
        want = after.owners(c)[rank].id
        assert c in again[want]
        assert all(c not in cs for wid, cs in again.items() if wid != want)
    assert sum(map(len, again.values())) == len(failed)


def put_chunks(s3_client, bucket: str, prefix: str, n: int, chunks: int = 1) -> dict[str, bytes]:
    """`n` objects of `chunks` whole chunks each under `prefix/`."""
    data = {f"{prefix}/{i}.bin": random.Random(f"{prefix}{i}").randbytes(chunks * CHUNK) for i in range(n)}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return data


def chunk_files(n: int) -> int:
    """A capacity of `n` chunk files (the data and its trailer)."""
    return n * (CHUNK + 512)


async def test_a_set_larger_than_its_owners_can_hold_is_refused_before_anything_is_read(cluster_factory, s3,
                                                                                         s3_client, bucket):
    cluster = await cluster_factory(2, capacity=chunk_files(8))
    put_chunks(s3_client, bucket, "huge", 30)  # about 15 chunks for each worker of 8
    before = s3.get_bytes
    async with AdminClient(cluster.master.url, SECRET) as admin:
        with pytest.raises(BadRequest, match=r"^the set does not fit: w[01] would hold \d+ bytes \(0 pinned "
                                             r"already \+ \d+ of the set\), over its capacity of 2101248") as refused:
            await admin.preload([f"s3://{bucket}/huge/"])
        assert refused.value.code == "PreloadTooLarge"
        assert await admin.jobs() == []
    assert s3.get_bytes == before


async def test_each_owner_must_hold_its_own_share_not_the_cluster_the_sum(cluster_factory, s3_client, bucket):
    """18 chunks fit two workers of 10, but not when one of them owns three quarters of them."""
    cluster = await cluster_factory(1, capacity=chunk_files(10))
    await cluster.add_worker(weight=3)
    await cluster.wait_converged()
    put_chunks(s3_client, bucket, "m", 3, chunks=6)
    placement = cluster.master.placement()
    objects = [ObjectInfo(bucket, k, s3_client.head_object(Bucket=bucket, Key=k)["ETag"], 6 * CHUNK)
               for k in (f"m/{i}.bin" for i in range(3))]
    shares = {w: len(cs) for w, cs in plan(objects, placement).items()}
    assert shares["w1"] > 10 >= shares["w0"]
    async with AdminClient(cluster.master.url, SECRET) as admin:
        with pytest.raises(BadRequest, match=rf"^the set does not fit: w1 would hold {shares['w1'] * CHUNK} bytes "
                                             rf"\(0 pinned already \+ {shares['w1'] * CHUNK} of the set\), over its "
                                             rf"capacity of {chunk_files(10)}: preload less"):
            await admin.preload([f"s3://{bucket}/m/"])


async def test_pinned_chunks_leave_less_room_and_are_not_counted_twice(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, capacity=chunk_files(10))
    put_chunks(s3_client, bucket, "set/pinned", 5)
    put_chunks(s3_client, bucket, "set/more", 4)
    put_chunks(s3_client, bucket, "other", 6)
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert (await admin.wait((await admin.preload([f"s3://{bucket}/set/pinned/"], pin=True))["id"]))["state"] \
            == "done"
        with pytest.raises(BadRequest, match=rf"w0 would hold {11 * CHUNK} bytes \({5 * CHUNK} pinned already \+ "
                                             rf"{6 * CHUNK} of the set\)") as refused:
            await admin.preload([f"s3://{bucket}/other/"])  # 6 chunks fit 10, not next to 5 pinned ones
        assert refused.value.code == "PreloadTooLarge"
        # The pinned chunks are part of this set: 5 kept + 4 new fit.
        assert (await admin.wait((await admin.preload([f"s3://{bucket}/set/"]))["id"]))["state"] == "done"


@pytest.mark.parametrize(("eviction", "restart"), [("s3fifo", False), ("s3fifo", True), ("slru", False),
                                                  ("lru", False)])
async def test_a_preload_into_a_cache_full_of_other_data_keeps_all_of_itself(cluster_factory, s3, s3_client, bucket,
                                                                             eviction, restart):
    """S3-FIFO puts a new chunk in its small queue (a tenth of the cache) and evicts from there while
    its main queue holds data read again (or found on disk at a restart), as SLRU evicts from
    probation while protected data fills 80%: a preload's later fills evicted its own first chunks."""
    cluster = await cluster_factory(1, capacity=chunk_files(12), origin_concurrency=2, eviction=eviction)
    other = put_chunks(s3_client, bucket, "other", 12)
    model = put_chunks(s3_client, bucket, "model", 6)
    await read_everywhere(cluster, bucket, other)
    await read_everywhere(cluster, bucket, other)  # read again: S3-FIFO's main queue, SLRU's protected one
    if restart:
        old = cluster.workers[0]
        await old.stop(leave=False)
        await cluster.restart(old)
        await cluster.wait_converged()
    job = await preload(cluster.master.url, [f"s3://{bucket}/model/"], secret=SECRET)
    assert (job["state"], job["chunks_cached"]) == ("done", 6), job
    before = s3.get_bytes
    await read_everywhere(cluster, bucket, model)
    assert s3.get_bytes == before


def test_a_round_waits_for_a_new_ring_only_when_an_owner_did_not_answer_on_the_ring_it_was_planned_on():
    assert pause(set(), True, 10.0) == 0  # nothing to try again: the job never waits
    assert pause({UNANSWERED}, True, 10.0) == pause({UNANSWERED, REFUSED}, True, 10.0) == 15.0  # TTL and a pass
    assert pause({UNANSWERED}, False, 10.0) == 0  # the ring changed while the round ran: plan on it now
    assert pause({REFUSED}, True, 10.0) == SETTLE  # a live owner with an older ring, or busy
    assert pause({REFUSED}, False, 10.0) == 0


def a_set_and_its_largest_owner(cluster, s3_client, bucket) -> tuple[list[ObjectInfo], Worker, int]:
    """24 one-chunk objects under `set8/`; the worker that owns most of them and how many."""
    data = put_chunks(s3_client, bucket, "set8", 24)
    objects = [ObjectInfo(bucket, k, s3_client.head_object(Bucket=bucket, Key=k)["ETag"], CHUNK) for k in data]
    todo = plan(objects, cluster.master.placement())
    owner = max(todo, key=lambda wid: len(todo[wid]))
    return objects, next(w for w in cluster.workers if w.id == owner), len(todo[owner])


async def test_a_crashed_owners_chunks_wait_for_the_ring_to_drop_it(cluster_factory, s3, s3_client, bucket):
    """Killed (no leave), it stays in the ring for a TTL: its chunks fail (connection refused) and
    are planned again once the master drops it, not sent at once to the same dead owner."""
    cluster = await cluster_factory(3, worker_ttl=1.5, heartbeat=0.3)
    objects, victim, owned = a_set_and_its_largest_owner(cluster, s3_client, bucket)
    await victim.stop(leave=False)
    before = s3.get_bytes
    job = await preload(cluster.master.url, [f"s3://{bucket}/set8/"], secret=SECRET)
    assert (job["state"], job["chunks_failed"], job["failures"]) == ("done", 0, []), job
    assert job["chunks_done"] == job["chunks_cached"] == len(objects) and owned > 0
    assert victim.id not in {w.id for w in cluster.master.membership.ring.workers}
    assert s3.get_bytes - before == len(objects) * CHUNK  # each chunk read once
    async with AdminClient(cluster.master.url, SECRET) as admin:
        rows = (await admin.status(f"s3://{bucket}/set8/"))["objects"]
    assert sorted(r["key"] for r in rows if r["cached"] == 1.0) == sorted(o.key for o in objects)


async def test_without_a_new_ring_the_dead_owner_is_tried_again_and_named(cluster_factory, s3_client, bucket):
    """The wait ends with no new ring (the owner may be back): the chunks go to it again, and the
    last round's failures are reported. A round with no failures never waits."""
    cluster = await cluster_factory(3)
    objects, victim, owned = a_set_and_its_largest_owner(cluster, s3_client, bucket)
    master, waits = cluster.master, []

    async def unchanged(version, seconds):  # as the master's ring_changed when nobody expires
        waits.append((version, seconds))

    def job() -> PreloadJob:
        control = WorkerControl(cluster.session, Signer(SECRET))
        return PreloadJob([f"s3://{bucket}/set8/"], False, objects, plan(objects, master.placement()), control,
                          master.placement, unchanged, 10.0)

    healthy = job()
    healthy.start()
    await healthy.task
    assert (healthy.state, waits) == ("done", [])
    await victim.stop(leave=False)
    crashed = job()
    crashed.start()
    await crashed.task
    assert waits == [(master.membership.ring.version, 15.0)] * 2  # after rounds 1 and 2, not after the last
    assert (crashed.state, crashed.chunks_failed) == ("failed", owned)
    assert len(crashed.failures) == min(owned + 1, MAX_FAILURES)  # the summary, then each chunk
    assert all(f"{victim.id}: worker {victim.id} at {victim.url} unreachable: connection refused" in f
               for f in crashed.failures[1:]), crashed.failures


async def test_a_job_waiting_for_the_ring_is_cancelled_at_once(cluster_factory, s3_client, bucket, caplog):
    """Cancelled while it waits for a dead owner to leave the ring, it ends then, not when the ring changes."""
    caplog.set_level(logging.INFO, "p2pcache.master.preload")
    cluster = await cluster_factory(3)  # a dead worker stays in the ring for 10 s
    objects, victim, owned = a_set_and_its_largest_owner(cluster, s3_client, bucket)
    await victim.stop(leave=False)
    async with AdminClient(cluster.master.url, SECRET) as admin:
        job = await admin.preload([f"s3://{bucket}/set8/"])
        await wait_for(lambda: f"{owned} chunks to plan again (unanswered), on the next ring (waiting up to 15 s"
                       in caplog.text, what="the job to wait for the ring")
        cancelled = await admin.cancel(job["id"])
    assert (cancelled["state"], cancelled["chunks_done"]) == ("cancelled", len(objects) - owned), cancelled
    assert victim.id in {w.id for w in cluster.master.membership.ring.workers}  # the ring never changed


async def test_an_owner_whose_ring_lags_waits_for_it_rather_than_use_up_a_round(cluster_factory, s3_client, bucket):
    """The job plans on the master's ring as soon as it changes; the ring reaches a worker a
    moment later (here: held 1 s on its way). The worker waits for the ring the chunks were
    planned on instead of refusing them as not its own, so no round is spent on the lag."""
    cluster = await cluster_factory(2)
    proxy = await FaultProxy(cluster.master.url).start()
    try:
        lagging = await cluster.add_worker(master_url=proxy.url)
        await cluster.wait_converged()
        data = put_chunks(s3_client, bucket, "lag", 24)
        objects = [ObjectInfo(bucket, k, s3_client.head_object(Bucket=bucket, Key=k)["ETag"], CHUNK) for k in data]
        before = cluster.master.placement()

        def gains(placement: Placement) -> list:
            return [c for c in plan(objects, placement).get(lagging.id, []) if not before.owns(lagging.id, c)]

        def without(w: Worker) -> Placement:
            return Placement(replace(before.ring, workers=tuple(x for x in before.ring.workers if x.id != w.id)))

        leaving = max(cluster.workers[:2], key=lambda w: len(gains(without(w))))  # placement follows the bucket
        proxy.hold = ("/ring", 1.0)
        await leaving.stop()  # leaves: its chunks go to the others
        after = cluster.master.placement()
        gained = gains(after)
        assert gained and lagging.placement.ring.version == before.ring.version != after.ring.version
        waits = []

        async def unchanged(version, seconds):
            waits.append((version, seconds))

        job = PreloadJob([f"s3://{bucket}/lag/"], False, objects, plan(objects, after),
                         WorkerControl(cluster.session, Signer(SECRET)), cluster.master.placement, unchanged, 10.0)
        job.start()
        await job.task
        assert (job.state, job.chunks_failed, waits) == ("done", 0, []), job.failures
        assert job.chunks_cached == len(objects)
    finally:
        await proxy.stop()


async def test_a_bad_preload_request_is_400_before_anything_is_listed(cluster_factory, fault_proxy, s3_client, bucket,
                                                                      caplog):
    """A URL that is not UTF-8 crashed the master (500), an invalid bucket name was a 502 quoting
    botocore's regex, a `pin` of "true" was taken as false, and 200 copies of one URL were 200
    listings, all logged on one line."""
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url)
    for i in range(8):
        s3_client.put_object(Bucket=bucket, Key=f"m/{i}", Body=b"x")
    listings = lambda: sum("list-type" in t for t in fault_proxy.targets)  # noqa: E731
    async with AdminClient(cluster.master.url, SECRET) as admin:
        for urls, pin, code, why in (
                ([f"s3://{bucket}/m/\udcff"], False, "InvalidRequest", "is not UTF-8"),
                (["s3://models:80/m/"], False, "InvalidBucketName", "invalid bucket name 'models:80'"),
                ([f"s3://{'b' * 300}/m/"], False, "InvalidBucketName", "(300 characters): a bucket's name is 1 to 255"),
                ([f"s3://{bucket}/m/"], "true", "InvalidRequest", "\"pin\" must be true or false, not 'true'"),
                ([f"s3://{bucket}/m/{i}" for i in range(1001)], False, "TooManyURLs", "at most 1000 per request")):
            with pytest.raises(BadRequest, match=re.escape(why)) as refused:
                await admin.preload(urls, pin)
            assert refused.value.code == code and len(str(refused.value)) < 240, str(refused.value)
        with pytest.raises(BadRequest, match="is not UTF-8"):
            await admin.status(f"s3://{bucket}/m/\udcff")
        with pytest.raises(BadRequest, match="invalid bucket name"):
            await admin.unpin(["s3://models:80/m/"])
        assert await admin.jobs() == [] and listings() == 0

        caplog.set_level(logging.INFO, logger="p2pcache.master.admin")
        urls = [f"s3://{bucket}/m/{i}" for i in range(8)]
        job = await admin.wait((await admin.preload(urls * 25))["id"])
    assert job["state"] == "done" and job["urls"] == urls and job["objects_total"] == 8
    assert listings() == 8  # one per distinct URL
    [started] = [r.getMessage() for r in caplog.records if " started: " in r.getMessage()]
    assert f"{urls[4]} and 3 more (8 objects" in started and urls[5] not in started, started


async def test_a_cancel_says_what_the_owners_filled_and_kept_of_the_batch_they_were_running(
        cluster_factory, fault_proxy, s3_client, bucket):
    """Progress is counted when a batch answers: a cancel during an owner's first batch said 0 bytes
    done, "pinned", while the owner had filled and kept part of it. The owner stops that batch (its
    request is closed: the worker cancels its handler) but what it kept stays, and the cancel says so."""
    fault_proxy.get_delay = 0.2  # a slow S3: one fill at a time, a batch of 32 takes seconds
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_concurrency=1)
    for i in range(40):
        s3_client.put_object(Bucket=bucket, Key=f"m/{i}", Body=bytes([i]) * CHUNK)
    owner = cluster.workers[0]
    async with AdminClient(cluster.master.url, SECRET) as admin:
        job = await admin.preload([f"s3://{bucket}/m/"], pin=True)
        await wait_for(lambda: len(owner.keeps) >= 2, what="two chunks of the first batch kept")
        cancelled = await admin.cancel(job["id"])
        await wait_for(lambda: owner.chunks.fills_in_flight == 0, what="the fill in flight to end")
    assert cancelled["state"] == "cancelled" and cancelled["bytes_done"] == 0  # no batch had answered
    assert cancelled["bytes_cached"] >= 2 * CHUNK and cancelled["chunks_cached"] >= 2, cancelled
    assert len(owner.store) <= fault_proxy.gets < 32  # it stopped its batch at the fill in flight
    assert summary(cancelled).endswith(f"{format_size(cancelled['bytes_cached'])} of 10MiB cached (what was filled "
                                       f"before the cancel stays pinned until `p2pcache unpin`)"), summary(cancelled)
