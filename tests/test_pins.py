"""Pinned preloads: kept from eviction under a flood, across a restart, with their chunks (and their
dates) when owners change, never past a worker's keep limit."""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time

import aiohttp
import pytest

from conftest import CHUNK, SECRET, metric, wait_for
from p2pcache.admin_client import AdminClient, preload
from p2pcache.auth import AuthError, Signer, sign, verify
from p2pcache.control import WorkerControl
from p2pcache.errors import BadRequest
from p2pcache.objects import ChunkId, ObjectInfo
from worker.keep import over_limit
from worker.peer import TAKE_PATH, chunk_params, keep_from_params, keep_params
from worker.server import Worker

CAPACITY = 12 * (CHUNK + 512)  # a dozen chunk files (data + trailer) per worker


def put(s3_client, bucket: str, prefix: str, n: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    data = {f"{prefix}/{i}.bin": rnd.randbytes(CHUNK) for i in range(n)}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return data


async def read(url: str, bucket: str, data: dict[str, bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for key, body in data.items():
            async with http.get(f"{url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body


async def total_metric(http, cluster, name: str) -> float:
    return sum([await metric(http, w.url, name) for w in cluster.live()])


def kept_names(cluster) -> set[str]:
    return {n for w in cluster.live() for n in w.keeps._kept}


async def test_pinned_data_survives_a_flood_larger_than_the_cache_and_a_restart(cluster_factory, s3, s3_client,
                                                                                  bucket):
    cluster = await cluster_factory(2, capacity=CAPACITY)
    pinned = put(s3_client, bucket, "pinned", 6, 1)
    plain = put(s3_client, bucket, "plain", 4, 2)
    flood = put(s3_client, bucket, "flood", 40, 3)  # 40 chunks through 24 chunk slots
    assert (await preload(cluster.master.url, [f"s3://{bucket}/pinned/"], pin=True, secret=SECRET))["state"] == "done"
    await read(cluster.workers[1].url, bucket, plain)  # read once, as the flood will be (a preload's chunks
    # are kept as read often: a one-off flood passes them by, test_preload.py)
    assert len(kept_names(cluster)) == 6
    async with aiohttp.ClientSession() as http:
        assert await total_metric(http, cluster, "p2pcache_pinned_bytes") == 6 * CHUNK

    async def flood_then_check() -> None:
        await read(cluster.workers[0].url, bucket, flood)
        before = s3.get_bytes
        await read(cluster.workers[1].url, bucket, pinned)
        assert s3.get_bytes == before  # every pinned chunk is still cached
    await flood_then_check()
    before = s3.get_bytes
    await read(cluster.workers[1].url, bucket, plain)
    assert s3.get_bytes > before  # the flood did evict what was not pinned

    # A restart keeps the pins (they are on disk), and they still hold against a flood.
    i = max(range(2), key=lambda k: len(cluster.workers[k].keeps))  # the 6 pins may all be on one worker
    old = cluster.workers[i]
    await old.stop(leave=False)
    restarted = Worker(old.config)
    await restarted.start()
    cluster.workers[i] = restarted
    await cluster.wait_converged()
    assert len(restarted.keeps) == len(old.keeps) > 0
    assert len(kept_names(cluster)) == 6
    await flood_then_check()


async def test_a_pinned_set_that_cannot_fit_is_refused_with_the_numbers(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(1, capacity=CAPACITY)
    put(s3_client, bucket, "huge", 12, 4)  # 12 chunks > 90% of a dozen
    before = s3.get_bytes
    async with AdminClient(cluster.master.url, SECRET) as admin:
        with pytest.raises(BadRequest, match=r"the pinned set does not fit: w0 would keep 3145728 bytes "
                                             r"\(0 pinned already \+ 3145728 new\), over its limit of \d+ "
                                             r"\(90% of \d+ capacity\)") as refused:
            await admin.preload([f"s3://{bucket}/huge/"], pin=True)
        assert refused.value.code == "PinnedSetTooLarge"
        assert await admin.jobs() == []
        # Without --pin the same preload runs (the cache just evicts as usual).
        assert (await admin.wait((await admin.preload([f"s3://{bucket}/huge/"]))["id"]))["state"] == "done"
    assert s3.get_bytes > before
    assert len(kept_names(cluster)) == 0


async def test_pins_move_with_their_chunks_to_a_new_owner(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2)
    # One-chunk objects, placed by their bucket's name too (the test's pid): with 24, the new
    # worker owns none of them once in (2/3)^24, 1 in 16,000 runs.
    data = put(s3_client, bucket, "m", 24, 5)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/m/"], pin=True, secret=SECRET))["state"] == "done"
    await cluster.add_worker()
    await cluster.wait_converged()
    for w in cluster.workers:
        assert await w.rebalancer.wait_idle(15)
    placement = cluster.workers[0].placement
    chunks = [ObjectInfo(bucket, k, s3_client.head_object(Bucket=bucket, Key=k)["ETag"], len(b)).chunk(0, CHUNK)
              for k, b in data.items()]
    moved = [c for c in chunks if placement.owner(c).id == "w2"]
    assert moved, "the new worker owns none of the chunks: a 1 in 16,000 draw"
    for c in chunks:  # each chunk is kept by its owner, and only there
        assert [w.id for w in cluster.workers if c.name in w.keeps] == [placement.owner(c).id]


async def restart(cluster, old: Worker) -> Worker:
    await old.stop(leave=False)
    again = await cluster.restart(old)
    await cluster.wait_converged()
    return again


async def test_a_kept_entry_that_cannot_be_read_is_said_and_the_cache_stays_indexed_and_served(
        cluster_factory, s3, s3_client, bucket, caplog):
    """`<cache>/kept` a regular file: the keeps cannot be read, which is an error in the log; the
    chunks on disk are still indexed (they count against --capacity, are evicted) and served."""
    cluster = await cluster_factory(1, capacity=CAPACITY)
    pinned = put(s3_client, bucket, "pinned", 4, 6)
    plain = put(s3_client, bucket, "plain", 4, 7)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/pinned/"], pin=True, secret=SECRET))["state"] == "done"
    await read(cluster.workers[0].url, bucket, plain)
    kept = cluster.workers[0].config.cache_dir / "kept"
    shutil.rmtree(kept)
    kept.write_bytes(b"junk")
    worker = await restart(cluster, cluster.workers[0])
    assert len(worker.store) == 8 and len(worker.keeps) == 0
    assert any(r.levelname == "ERROR" and f"cannot read the pinned chunks kept in {kept}" in r.getMessage()
               for r in caplog.records)
    before = s3.get_bytes
    await read(worker.url, bucket, pinned | plain)
    assert s3.get_bytes == before  # all from the disk
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker.url}/_p2p/ready") as resp:
            assert resp.status == 200 and "degraded" not in await resp.json()


async def test_a_keep_record_that_cannot_be_read_is_left_for_a_later_start(cluster_factory, s3_client, bucket,
                                                                            tmp_path):
    """A record that cannot be read now (here a link to a file not there yet; as a disk error) is
    not malformed: it stays, and a start that can read it keeps its chunk again."""
    cluster = await cluster_factory(1, capacity=CAPACITY)
    put(s3_client, bucket, "pinned", 3, 8)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/pinned/"], pin=True, secret=SECRET))["state"] == "done"
    record = sorted((cluster.workers[0].config.cache_dir / "kept").iterdir())[0]
    later = tmp_path / "later"
    record.rename(later)
    record.symlink_to(later.with_name("not-yet"))
    worker = await restart(cluster, cluster.workers[0])
    assert len(worker.keeps) == 2 and record.is_symlink()
    later.rename(later.with_name("not-yet"))
    worker = await restart(cluster, worker)
    assert len(worker.keeps) == 3 and record.name in worker.keeps


async def test_an_unpin_made_while_a_worker_was_away_reaches_it_when_it_comes_back(cluster_factory, s3_client,
                                                                                   bucket):
    """A worker killed, dropped from the ring, then restarted on its cache dir kept its pins after
    an `unpin` that said it was done: the unpin went to the ring's workers only. A pin made after
    the unpin stays, however often the worker starts again."""
    cluster = await cluster_factory(3, worker_ttl=1.5, heartbeat=0.3)
    put(s3_client, bucket, "m", 24, 9)
    url = f"s3://{bucket}/m/"
    assert (await preload(cluster.master.url, [url], pin=True, secret=SECRET))["state"] == "done"
    away = max(cluster.workers, key=lambda w: len(w.keeps))
    assert len(away.keeps) > 0
    await away.stop(leave=False)  # a crash: its pins are on its disk
    await cluster.wait_converged()  # the master dropped it
    async with AdminClient(cluster.master.url, SECRET) as admin:
        answer = await admin.unpin([url])
    assert answer["failed"] == [] and answer["unpinned_chunks"] == 24 - len(away.keeps)
    back = await restart(cluster, away)
    assert len(back.keeps) == 0 and back.keeps.bytes == 0
    assert list((back.config.cache_dir / "kept").iterdir()) == []

    assert (await preload(cluster.master.url, [url], pin=True, secret=SECRET))["state"] == "done"
    assert len(kept_names(cluster)) == 24 and len(back.keeps) > 0
    again = await restart(cluster, back)  # told of the same unpin again: these pins are newer
    assert len(again.keeps) == len(back.keeps) and len(kept_names(cluster)) == 24


def chunks_of(s3_client, bucket: str, data: dict[str, bytes]) -> list[ChunkId]:
    return [ObjectInfo(bucket, k, s3_client.head_object(Bucket=bucket, Key=k)["ETag"], len(b)).chunk(i, CHUNK)
            for k, b in data.items() for i in range(-(-len(b) // CHUNK))]


async def ready(worker: Worker) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker.url}/_p2p/ready") as resp:
            assert resp.status == 200
            return await resp.json()


async def test_chunks_checked_for_the_keep_limit_together_stay_under_it(cluster_factory, s3, s3_client, bucket):
    """The chunks a worker is asked to keep at once (a batch; the batches of two pinned preloads
    running together) are checked against its keep limit before their fills and kept after them:
    those being filled count too, so the keeps stay under the limit and room stays for reads."""
    cluster = await cluster_factory(1, capacity=CAPACITY)  # keep limit: 10.8 chunks
    worker = cluster.workers[0]
    chunks = chunks_of(s3_client, bucket, put(s3_client, bucket, "a", 6, 9) | put(s3_client, bucket, "b", 6, 10))
    control = WorkerControl(cluster.session, Signer(SECRET))
    results = await control.preload(worker.placement.members[worker.id], chunks, True,
                                    worker.placement.ring.version)
    refused = [r for r in results if r[0] == "error"]
    assert len(refused) == 2 and all(r[1].startswith("KeepLimit: ") for r in refused), results
    assert len(worker.keeps) == 10 and worker.keeps.bytes <= worker.control.keep_limit
    other = put(s3_client, bucket, "other", 1, 11)
    await read(worker.url, bucket, other)
    before = s3.get_bytes
    await read(worker.url, bucket, other)
    assert s3.get_bytes == before  # cached: the pins left it room
    assert "degraded" not in await ready(worker)


async def test_pins_over_a_smaller_capacity_at_restart_are_released_down_to_the_limit_and_said(
        cluster_factory, s3, s3_client, bucket, caplog):
    """Restarted with a smaller --capacity, a worker whose pins are over its keep limit releases whole
    pinned objects (in key order, each kept if it fits) until the rest fit, and says which, with what to
    do: the store then fits its capacity and caches other reads."""
    cluster = await cluster_factory(1, capacity=CAPACITY)
    pinned = put(s3_client, bucket, "pinned", 6, 12)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/pinned/"], pin=True, secret=SECRET))["state"] == "done"
    old = cluster.workers[0]
    await old.stop(leave=False)
    smaller = 4 * (CHUNK + 512)  # keep limit: 3.6 chunks
    worker = Worker(dataclasses.replace(old.config, capacity=smaller))
    with caplog.at_level(logging.WARNING, "p2pcache.keep"):
        await worker.start()
    cluster.workers[0] = worker
    await cluster.wait_converged()
    kept = {c.name for c in chunks_of(s3_client, bucket, dict(list(pinned.items())[:3]))}
    assert set(worker.keeps._kept) == kept and worker.keeps.bytes <= worker.control.keep_limit
    assert worker.store.used <= smaller
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "released the pins" in r.getMessage()]
    assert len(said) == 1 and f"pinned chunks hold {6 * CHUNK} bytes, over this worker's limit of " \
        f"{int(smaller * 0.9)}" in said[0] and "raise --capacity" in said[0], said
    assert ", ".join(f"s3://{bucket}/{k}" for k in list(pinned)[3:]) in said[0]
    assert len(list((worker.config.cache_dir / "kept").iterdir())) == 3  # a later start keeps the same
    other = put(s3_client, bucket, "other", 1, 13)
    await read(worker.url, bucket, other)
    before = s3.get_bytes
    await read(worker.url, bucket, other | dict(list(pinned.items())[:3]))
    assert s3.get_bytes == before
    assert "degraded" not in await ready(worker)


def test_pins_over_the_limit_are_released_by_whole_objects_in_key_order():
    def obj(key: str, chunks: int) -> list[ChunkId]:
        return [ObjectInfo("b", key, '"e"', chunks * 10).chunk(i, 10) for i in range(chunks)]

    a, b, c = obj("a", 3), obj("b", 2), obj("c", 1)
    assert over_limit(a + b + c, 60) == []
    assert over_limit(c + b + a, 45) == b  # a fits, b does not, c still does
    assert over_limit(a + b + c, 25) == a + c  # a does not fit, b does, c no more
    assert over_limit(a + c, 0) == a + c


async def test_a_handoff_keeps_what_fits_the_new_owners_keep_limit_and_caches_the_rest(
        cluster_factory, s3, s3_client, bucket, caplog):
    """Pinned chunks handed to a worker whose keep limit they would pass: it keeps those that fit
    (counted as a preload's keeps are) and takes the others all the same, from their holder, not
    S3, unkept, each said in a warning and counted; the giver takes none for a failed handoff and
    drops its pins of them all. Before, the new owner kept every one, past its limit."""
    cluster = await cluster_factory(1)
    size = 32 << 10
    rnd = random.Random(14)
    data = {f"m/{i:02}.bin": rnd.randbytes(size) for i in range(80)}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/m/"], pin=True, secret=SECRET))["state"] == "done"
    giver = cluster.workers[0]
    assert len(giver.keeps) == 80
    before = s3.get_bytes
    # Its keep limit holds 45 of the objects, its capacity 5 more (as many as a pass hands over at once).
    # Weighted 4 to 1, it owns 64 of the 80 on average, 45 or fewer once in about 10^6 runs.
    with caplog.at_level(logging.WARNING, "p2pcache.keep"):
        small = await cluster.add_worker(capacity=50 * (size + 512), weight=4)
        await cluster.wait_converged()
        for w in cluster.workers:
            assert await w.rebalancer.wait_idle(15)
    limit, fits = small.keeps.limit, small.keeps.limit // size
    moved = {c.name: c for c in chunks_of(s3_client, bucket, data) if small.placement.owner(c).id == small.id}
    assert len(moved) > fits, f"the new worker owns {len(moved)} of the chunks, no more than its keep limit"
    assert len(small.keeps) == fits and small.keeps.bytes <= limit and set(small.keeps._kept) <= set(moved)
    assert not set(moved) & set(giver.keeps._kept)  # handed over, none left pinned at the giver
    assert small.store.used <= small.store.capacity
    assert s3.get_bytes == before  # every one taken from the giver, kept or not
    async with aiohttp.ClientSession() as http:
        assert await metric(http, small.url, "p2pcache_handoff_chunks_total") >= len(moved)
        assert await metric(http, small.url, "p2pcache_handoff_pins_over_limit_total") == len(moved) - fits
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "did not keep it" in r.getMessage()]
    assert len(said) == len(moved) - fits, said
    unkept = [c for n, c in moved.items() if n not in small.keeps]
    assert {next(c.ring_key for c in unkept if f"took {c.ring_key} from w0" in m) for m in said} \
        == {c.ring_key for c in unkept}
    assert all(f"over this worker's limit of {limit} (90% of --capacity {small.store.capacity})" in m for m in said)


async def test_an_unpin_made_before_a_handoff_drops_the_pin_at_the_new_owner(cluster_factory, s3_client, bucket):
    """A pin's date travels with its chunk: an unpin made after the pin and before the handoff, that
    the workers hear of only after it (they were away when it was made), drops the pin at the new
    owner too. Before, the new owner dated the keep when it took it, and kept it through that unpin."""
    behind = [600.0]  # the pins are made ten minutes ago (the workers' wall clock, while they are made)
    cluster = await cluster_factory(1, heartbeat=0.2, wall_clock=lambda: time.time() - behind[0])
    data = put(s3_client, bucket, "m", 24, 15)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/m/"], pin=True, secret=SECRET))["state"] == "done"
    behind[0] = 0.0
    new = await cluster.add_worker()
    await cluster.wait_converged()
    for w in cluster.workers:
        assert await w.rebalancer.wait_idle(15)
    moved = {c.name for c in chunks_of(s3_client, bucket, data) if new.placement.owner(c).id == new.id}
    assert moved, "the new worker owns none of the chunks: a 1 in 16,000,000 draw"
    assert set(new.keeps._kept) == moved and kept_names(cluster) == {c.name for c in chunks_of(s3_client, bucket, data)}
    assert all(new.keeps.pinned_at(n) < time.time() - 500 for n in moved)  # dated as pinned, not as taken

    # Made five minutes ago, heard by the workers with their next heartbeats: as by a worker away then.
    unpin = cluster.master.unpins.add(bucket, "m/", at=cluster.master.unpins.clock() - 300)
    await wait_for(lambda: all(w.agent.unpins_seen[1:] == [unpin.seq] for w in cluster.workers),
                   what="both workers to hear the unpin")
    assert kept_names(cluster) == set()
    assert list((new.config.cache_dir / "kept").iterdir()) == []


def test_a_takes_pin_and_its_date_are_signed_with_the_rest_of_its_query():
    c = ObjectInfo("b", "m/x", '"e"', 100).chunk(0, CHUNK)
    query = chunk_params(c) | {"from": "w0"} | keep_params(True, 1700000000.25)
    assert keep_from_params(query) == (True, 1700000000.25)
    assert keep_from_params(chunk_params(c) | keep_params(True, None)) == (True, None)  # a giver from before
    assert keep_from_params(chunk_params(c) | keep_params(False, 1.0)) == (False, None)
    for bad in ("soon", "nan", "inf", "-1"):
        with pytest.raises(ValueError):
            keep_from_params(query | {"pinned": bad})
    header = sign(SECRET, "GET", TAKE_PATH, query.items(), to="w1")
    assert verify(SECRET, "GET", TAKE_PATH, query.items(), header, to="w1")
    with pytest.raises(AuthError):  # a pin dated later on the way would outlive an unpin
        verify(SECRET, "GET", TAKE_PATH, (query | {"pinned": "1800000000.000000"}).items(), header, to="w1")
