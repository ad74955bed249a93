"""Scaling a warm cluster: a join, a graceful leave and a crash, with S3 bytes counted at the S3 server."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import aiohttp
import pytest

from conftest import CHUNK, SECRET, metric, wait_for
from faultproxy import FaultProxy
from master.config import MasterConfig
from master.server import Master
from p2pcache import Client
from p2pcache.errors import PeerStarting
from p2pcache.objects import ObjectInfo
from p2pcache.ring import DRAINING
from worker import rebalance
from worker.server import Worker

OBJECTS = 4


def dataset(s3_client, bucket: str, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    data = {f"model-{i:05d}.safetensors": rnd.randbytes(9 * CHUNK + rnd.randrange(CHUNK)) for i in range(OBJECTS)}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return data


async def read_all(http: aiohttp.ClientSession, urls: list[str], bucket: str, data: dict[str, bytes]) -> None:
    for url in urls:
        for key, body in data.items():
            async with http.get(f"{url}/{bucket}/{key}") as resp:
                assert resp.status == 200 and await resp.read() == body, (url, key, resp.status)


def chunks(s3_client, bucket: str, data: dict[str, bytes], size: int = CHUNK):
    for key, body in data.items():
        info = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], len(body))
        yield from (info.chunk(i, size) for i in range(-(-len(body) // size)))


async def total(http, workers, name: str) -> float:
    return sum([await metric(http, w.url, name) for w in workers])


async def test_a_new_worker_takes_its_chunks_from_their_holders_not_from_s3(cluster, s3, s3_client, bucket):
    data = dataset(s3_client, bucket, 1)
    size = sum(map(len, data.values()))
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
        assert s3.get_bytes >= size
        before_ring, s3_before = cluster.workers[0].placement, s3.get_bytes
        await cluster.add_worker()
        await cluster.wait_converged()
        after_ring = cluster.workers[0].placement
        # Read at once, before the rebalancer is done: a new owner asks the old one first.
        await read_all(http, [w.url for w in cluster.workers], bucket, data)
        assert s3.get_bytes == s3_before
        for w in cluster.workers:
            assert await w.rebalancer.wait_idle(15) and w.rebalancer.backlog == 0
        moved = sum(c.length for c in chunks(s3_client, bucket, data)
                    if before_ring.owner(c).id != after_ring.owner(c).id)
        # Each chunk whose owner changed was copied once, from its holder; nothing else moved.
        assert await total(http, cluster.workers, "p2pcache_handoff_bytes_total") == moved
        # Close to the new worker's quarter; with ~40 chunks, up to twice that (tests/test_placement.py
        # holds the 1.5x bound on model-sized objects).
        assert 0.15 * size < moved <= 2 * size / 4
        new = cluster.workers[3]
        assert all(c.name in new.store for c in chunks(s3_client, bucket, data) if after_ring.owner(c).id == new.id)
    assert s3.get_bytes == s3_before


async def test_after_a_chunk_size_change_the_handoff_skips_the_old_chunks_and_ends(cluster, s3, s3_client, bucket):
    """The master restarted with another --chunk-size: the chunks cut at the old one stay on disk,
    first to evict; they must not be offered (every owner refuses them) nor hold up the new ones."""
    data = dataset(s3_client, bucket, 3)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)  # cut at CHUNK
        port = int(cluster.master.url.rsplit(":", 1)[1])
        await cluster.master.stop()
        cluster.master = Master(MasterConfig(port=port, chunk_size=2 * CHUNK, cluster_secret=SECRET))
        await cluster.master.start()
        await cluster.wait_converged()
        await read_all(http, [cluster.workers[0].url], bucket, data)  # cut at 2 x CHUNK
        await cluster.add_worker()
        await cluster.wait_converged()
        for w in cluster.workers:
            assert await w.rebalancer.wait_idle(15) and w.rebalancer.backlog == 0
        ring, new = cluster.workers[0].placement, cluster.workers[3]
        owned = [c for c in chunks(s3_client, bucket, data, 2 * CHUNK) if ring.owner(c).id == new.id]
        assert owned and all(c.name in new.store for c in owned)
        s3_before = s3.get_bytes
        await read_all(http, [w.url for w in cluster.workers], bucket, data)
    assert s3.get_bytes == s3_before


async def test_sigterm_hands_every_chunk_over_while_readers_keep_reading(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(3, drain_timeout=20.0)
    data = dataset(s3_client, bucket, 2)
    leaving, staying = cluster.workers[2], cluster.workers[:2]
    async with aiohttp.ClientSession() as http, Client(cluster.master.url) as client:
        await read_all(http, [staying[0].url], bucket, data)
        s3_before, reads, stop = s3.get_bytes, [0], asyncio.Event()

        async def reader(i: int) -> None:
            rnd = random.Random(i)
            while not stop.is_set():
                key = rnd.choice(sorted(data))
                a = rnd.randrange(len(data[key]))
                b = min(len(data[key]), a + rnd.randrange(1, 3 * CHUNK))
                if i == 0:  # owner-direct, as loaders do
                    assert await client.read(bucket, key, a, b) == data[key][a:b]
                else:
                    url = f"{staying[i % 2].url}/{bucket}/{key}"
                    async with http.get(url, headers={"Range": f"bytes={a}-{b - 1}"}) as resp:
                        assert resp.status == 206 and await resp.read() == data[key][a:b]
                reads[0] += 1

        readers = [asyncio.create_task(reader(i)) for i in range(4)]
        await wait_for(lambda: reads[0] >= 8, what="readers to start")
        await leaving.stop()  # what SIGTERM does: drain, hand over, leave
        await wait_for(lambda: [w.id for w in cluster.master.membership.ring.workers] == ["w0", "w1"],
                       what="the drained worker to leave")
        stop.set()
        await asyncio.gather(*readers)  # any failed read raises here
        assert reads[0] > 8
        await cluster.wait_converged()
        await read_all(http, [w.url for w in staying], bucket, data)
    assert s3.get_bytes == s3_before


async def test_a_drain_hands_over_what_its_running_fills_land(cluster_factory, fault_proxy, s3, s3_client, bucket):
    """SIGTERM while the worker fills chunks from a slow S3 (2 s to the first byte): the drain
    waits for those fills and hands what they land over too. Before, it handed over what it held
    when it began and left: the chunks filled after that were read from S3 again."""
    cluster = await cluster_factory(3, s3_endpoint=fault_proxy.url, drain_timeout=20.0)
    data = dataset(s3_client, bucket, 6)
    reader, leaving = cluster.workers[0], cluster.workers[1]
    fault_proxy.get_delay = 2.0
    async with aiohttp.ClientSession() as http:
        reads = asyncio.gather(*(read_all(http, [reader.url], bucket, {key: body}) for key, body in data.items()))
        await wait_for(lambda: leaving.chunks.fills_in_flight > 0, what="a fill at the worker that will leave")
        await leaving.stop()  # what SIGTERM does
        await reads
        fault_proxy.get_delay = 0.0
        await wait_for(lambda: leaving.id not in {w.id for w in cluster.master.membership.ring.workers},
                       what="the drained worker to leave")
        await cluster.wait_converged()
        s3_before = s3.get_bytes
        await read_all(http, [w.url for w in cluster.live()], bucket, data)
    assert s3.get_bytes == s3_before


async def test_a_worker_restarted_on_its_disk_takes_nothing_back(cluster_factory, s3, s3_client, bucket):
    """A rolling upgrade: the drain hands the chunks over (the pod may not come back); the
    worker that does come back, same id, same cache dir, still holds them: nothing is copied back."""
    cluster = await cluster_factory(3, drain_timeout=20.0)
    data = dataset(s3_client, bucket, 5)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
        s3_before, (staying, leaving) = s3.get_bytes, (cluster.workers[:2], cluster.workers[2])
        await leaving.stop()
        await wait_for(lambda: [w.id for w in cluster.master.membership.ring.workers] == ["w0", "w1"],
                       what="the drained worker to leave")
        handed = await total(http, staying, "p2pcache_handoff_bytes_total")
        assert handed > 0
        sent = await total(http, staying, "p2pcache_rebalance_chunks_total")
        back = await cluster.restart(leaving)
        await cluster.wait_converged()
        for w in cluster.workers:
            assert await w.rebalancer.wait_idle(15) and w.rebalancer.backlog == 0
        await read_all(http, [w.url for w in cluster.workers], bucket, data)
        assert await metric(http, back.url, "p2pcache_handoff_bytes_total") == 0
        assert await total(http, staying, "p2pcache_handoff_bytes_total") == handed
        # The extra copies the drain left were offered to it, and it took none: none was handed
        # over (the metric counted each offer before).
        assert await total(http, staying, "p2pcache_rebalance_chunks_total") == sent
        owned = [c for c in chunks(s3_client, bucket, data) if back.placement.owner(c).id == back.id]
        assert owned and all(c.name in back.store for c in owned)
    assert s3.get_bytes == s3_before


async def test_a_drain_begun_while_the_master_is_unreachable_hands_over_once_it_is_back(
        cluster_factory, s3, s3_client, bucket):
    """A helm upgrade restarts the master and rolls the workers at once: a worker SIGTERMed while
    the master cannot be reached keeps serving and announcing its drain until the master answers,
    then hands everything over. Before, it tried once and left without a handoff: its share was
    read from S3 again."""
    cluster = await cluster_factory(2, drain_timeout=20.0)  # a 10 s TTL: the master keeps it meanwhile
    proxy = await FaultProxy(cluster.master.url).start()
    try:
        leaving = await cluster.add_worker(master_url=proxy.url)
        await cluster.wait_converged()
        data = dataset(s3_client, bucket, 7)
        announced = []  # the drain announcements the master did not get

        def unreachable(method: str, target: str) -> str:
            if method == "POST" and leaving.agent.me.state == DRAINING:
                announced.append(target)
            return "reset"

        async with aiohttp.ClientSession() as http:
            await read_all(http, [cluster.workers[0].url], bucket, data)
            s3_before = s3.get_bytes
            proxy.by_request = unreachable
            stopping = asyncio.create_task(leaving.stop())  # what SIGTERM does
            await wait_for(lambda: len(announced) >= 2 or stopping.done(), what="the drain to be announced again")
            await read_all(http, [leaving.url], bucket, dict([next(iter(data.items()))]))  # still serving
            proxy.by_request = None  # the master is back
            await stopping
            await wait_for(lambda: [w.id for w in cluster.master.membership.ring.workers] == ["w0", "w1"],
                           what="the drained worker to leave")
            await cluster.wait_converged()
            assert await total(http, cluster.live(), "p2pcache_handoff_bytes_total") > 0
            await read_all(http, [w.url for w in cluster.live()], bucket, data)
        assert s3.get_bytes == s3_before
    finally:
        await proxy.stop()


async def test_a_worker_that_joined_while_the_master_was_down_reads_from_the_old_owners_not_s3(
        cluster_factory, fault_proxy, s3_client, bucket):
    """A helm upgrade restarts the master while a worker joins: the restarted master's first ring
    has the ring before it in its history (its workers report the ring they hold during its
    --startup-grace), so the new worker asks the chunks' old owners before S3. Before, that history
    was empty: every chunk the new worker owned was read from S3 again (the rebalancers, stopped
    here, would have moved them later)."""
    cluster = await cluster_factory(2, heartbeat=0.2, s3_endpoint=fault_proxy.url)
    data = dataset(s3_client, bucket, 8)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
        before = cluster.master.membership.ring
        for w in cluster.workers:
            await w.rebalancer.stop()
        port = int(cluster.master.url.rsplit(":", 1)[1])
        await cluster.master.stop()
        new = await cluster.add_worker()  # its heartbeats go unanswered: it has no ring
        cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=1.0, cluster_secret=SECRET))
        await cluster.master.start()
        await cluster.wait_converged()
        ring = cluster.master.membership.ring
        assert [w.id for w in ring.workers] == ["w0", "w1", "w2"] and ring.master_id != before.master_id
        assert ring.history == (before.owning(),) + before.history[:2]
        owned = [c for c in chunks(s3_client, bucket, data) if new.placement.owner(c).id == new.id]
        assert owned and not any(c.name in new.store for c in owned)  # nothing was handed over
        s3_before = fault_proxy.body_bytes
        await read_all(http, [new.url], bucket, data)
        assert fault_proxy.body_bytes == s3_before
        assert all(c.name in new.store for c in owned)


async def test_a_drain_with_a_hung_master_ends_within_twice_the_drain_timeout(cluster_factory, caplog):
    """A master that accepts and never answers (stopped, or its node gone): each call of the
    drain waits only for what is left of --drain-timeout, so the worker is gone well before its
    pod's grace period (README: 2 x --drain-timeout, + 10 s in the chart). Before, the drain's
    heartbeat and the leave each waited 10 s."""
    drain_timeout = 2.0
    cluster = await cluster_factory(2)
    proxy = await FaultProxy(cluster.master.url).start()
    try:
        leaving = await cluster.add_worker(master_url=proxy.url, drain_timeout=drain_timeout)
        await cluster.wait_converged()
        proxy.mode = "hang"
        await asyncio.wait_for(leaving.stop(), 2 * drain_timeout)
        assert "the master was unreachable for the whole drain" in caplog.text
    finally:
        await proxy.stop()


async def _warm_then_crash(http, cluster, s3_client, bucket: str, data: dict[str, bytes]):
    """Read `data` warm through w0, then crash w1 (kill -9: no drain, no goodbye); (w1, the bytes it owned)."""
    await read_all(http, [cluster.workers[0].url], bucket, data)
    victim, placement = cluster.workers[1], cluster.workers[0].placement
    owned = sum(c.length for c in chunks(s3_client, bucket, data) if placement.owner(c).id == victim.id)
    assert owned > 0
    await victim.stop(leave=False)
    return victim, owned


async def test_a_crashed_worker_costs_what_it_owned_once(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(3, worker_ttl=1.5, heartbeat=0.3)
    data = dataset(s3_client, bucket, 3)
    async with aiohttp.ClientSession() as http:
        victim, owned = await _warm_then_crash(http, cluster, s3_client, bucket, data)
        s3_before = s3.get_bytes  # the warm-up's bytes are behind us; the crash reads nothing
        await wait_for(lambda: victim.id not in {w.id for w in cluster.master.membership.ring.workers},
                       what="the master to expire the crashed worker")
        await cluster.wait_converged()
        survivors = [w.url for w in cluster.live()]
        await read_all(http, survivors, bucket, data)
        await read_all(http, survivors, bucket, data)
    assert s3.get_bytes - s3_before == owned


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_readers_at_every_survivor_fill_a_crashed_workers_chunk_once(cluster_factory, s3, s3_client, bucket,
                                                                          serve_processes):
    """Before the master notices the crash, both survivors read everything at once. Each asks the
    chunk's first live successor, the same for both (the successor itself fills it): before,
    each asked the other first, and each filled the chunk for the other, from S3 twice."""
    cluster = await cluster_factory(3, serve_processes=serve_processes)  # a 10 s TTL: no expiry here
    data = dataset(s3_client, bucket, 5)
    async with aiohttp.ClientSession() as http:
        victim, owned = await _warm_then_crash(http, cluster, s3_client, bucket, data)
        s3_before = s3.get_bytes  # the warm-up's bytes are behind us; the crash reads nothing
        survivors = [w.url for w in cluster.live()]
        await asyncio.gather(*(read_all(http, [url], bucket, data) for url in survivors))
        assert victim.id in {w.id for w in cluster.master.membership.ring.workers}  # not yet expired
    assert s3.get_bytes - s3_before == owned


async def test_an_owner_back_from_an_outage_gets_what_was_filled_for_it_not_from_s3(cluster_factory, s3, s3_client,
                                                                                   bucket, monkeypatch):
    """Its peers could not reach it for a while (a pause, a pod restarted behind the same name):
    the ring never changed, and a successor filled its chunks from S3 for the readers. Offered
    to it a moment later, they are with it when it is back: its next readers cost S3 nothing."""
    monkeypatch.setattr(rebalance, "HANDBACK", 1.0)
    cluster = await cluster_factory(2)  # a 10 s TTL: the master never drops it
    proxy = await FaultProxy("http://127.0.0.1:1").start()
    try:
        owner = await cluster.add_worker(advertise=proxy.url)  # its peers reach it through the proxy
        proxy.upstream = owner.address
        await cluster.wait_converged()
        data = dataset(s3_client, bucket, 6)
        placement = owner.placement
        mine = [c for c in chunks(s3_client, bucket, data) if placement.owner(c).id == owner.id]
        assert mine
        proxy.mode = "reset"  # unreachable for its peers
        s3_before = s3.get_bytes
        async with aiohttp.ClientSession() as http:
            await read_all(http, [cluster.workers[0].url], bucket, data)
            assert s3.get_bytes - s3_before == sum(map(len, data.values()))  # each chunk once, its own by a successor
            assert not any(c.name in owner.store for c in mine)
            proxy.mode = None
            await wait_for(lambda: all(c.name in owner.store for c in mine), what="the handback")
            s3_before = s3.get_bytes
            await read_all(http, [f"http://{owner.address[0]}:{owner.address[1]}"], bucket, data)
        assert s3.get_bytes == s3_before
        assert placement.ring.version == cluster.master.membership.ring.version  # no pass of a new ring did it
    finally:
        await proxy.stop()


async def test_with_two_replicas_a_crash_costs_nothing(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(3, replicas=2, worker_ttl=1.5, heartbeat=0.3)
    data = dataset(s3_client, bucket, 4)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
        for w in cluster.workers:  # primaries copy what they fill to their followers
            assert await w.rebalancer.wait_idle(15)
        placement, by_id = cluster.workers[0].placement, {w.id: w for w in cluster.workers}
        for c in chunks(s3_client, bucket, data):  # every owner holds each chunk
            assert all(c.name in by_id[o.id].store for o in placement.owners(c)[:2]), c.ring_key
        s3_before = s3.get_bytes
        await cluster.workers[1].stop(leave=False)
        await wait_for(lambda: len(cluster.master.membership.ring.workers) == 2, what="the expiry")
        await cluster.wait_converged()
        await read_all(http, [w.url for w in cluster.live()], bucket, data)
    assert s3.get_bytes == s3_before



async def test_with_two_replicas_a_crash_is_repaired_so_a_second_crash_costs_nothing(cluster_factory, s3, s3_client,
                                                                                     bucket):
    """After a crash the one copy left of a chunk may be a follower's while the new primary has
    none. Followers offer their copies too: every chunk is on both its owners again, and a
    second crash reads nothing from S3. Before, only primaries offered theirs, and the second
    crash read such chunks from S3 again."""
    cluster = await cluster_factory(4, replicas=2, worker_ttl=1.5, heartbeat=0.3)
    data = dataset(s3_client, bucket, 7)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
        for w in cluster.workers:
            assert await w.rebalancer.wait_idle(15)
        for victim in cluster.workers[1:3]:
            await victim.stop(leave=False)
            await wait_for(lambda: victim.id not in {w.id for w in cluster.master.membership.ring.workers},
                           what="the expiry")
            await cluster.wait_converged()
            live = cluster.live()
            for w in live:
                assert await w.rebalancer.wait_idle(15)
            placement, by_id = live[0].placement, {w.id: w for w in live}
            missing = [c.ring_key for c in chunks(s3_client, bucket, data)
                       for o in placement.owners(c)[:2] if c.name not in by_id[o.id].store]
            assert missing == []
        s3_before = s3.get_bytes
        await read_all(http, [w.url for w in cluster.live()], bucket, data)
    assert s3.get_bytes == s3_before


async def test_a_hung_owner_does_not_hold_up_the_handoff_to_the_others(cluster_factory, s3, s3_client, bucket):
    """A draining worker's chunks go to two owners, one hung (a stopped process: its kernel
    accepts, nothing answers). The hung one holds one of the handoff's slots: the healthy one
    gets every chunk it now owns within the drain. Before, the takes to the hung owner took
    every slot, each for the 60 s peer timeout, and the healthy owner got a few."""
    cluster = await cluster_factory(2, drain_timeout=3.0)
    proxy = await FaultProxy("http://127.0.0.1:1").start()
    try:
        hung = await cluster.add_worker(advertise=proxy.url)  # its peers reach it through the proxy
        proxy.upstream = hung.address
        await cluster.wait_converged()
        healthy, leaving = cluster.workers[0], cluster.workers[1]
        data = dataset(s3_client, bucket, 8)
        async with aiohttp.ClientSession() as http:
            await read_all(http, [healthy.url], bucket, data)
        held = [c for c in chunks(s3_client, bucket, data) if c.name in leaving.store]
        proxy.mode = "hang"
        await leaving.stop()  # what SIGTERM does: drain for up to 3 s, then leave
        placement = healthy.placement
        assert leaving.id not in placement.workers
        theirs = [c for c in held if placement.owner(c).id == healthy.id]
        assert theirs and any(placement.owner(c).id == hung.id for c in held)
        assert [c.ring_key for c in theirs if c.name not in healthy.store] == []
    finally:
        await proxy.stop()


async def test_a_keep_that_comes_after_the_handoff_goes_to_the_new_owner(cluster_factory, s3_client, bucket):
    """A pinned preload's fill lands at a worker that is draining (its request came before the
    ring that says so): the drain hands the chunk over at once, and the preload keeps it here
    a moment later. The keep is handed over too (`Rebalancer.kept`); before, it left with the
    draining worker and the new owner held the chunk unpinned."""
    cluster = await cluster_factory(3)
    leaving = cluster.workers[2]
    data = dataset(s3_client, bucket, 9)
    async with aiohttp.ClientSession() as http:
        await read_all(http, [cluster.workers[0].url], bucket, data)
    c = next(c for c in chunks(s3_client, bucket, data) if c.name in leaving.store)
    leaving.rebalancer.drain()
    assert await leaving.agent.drain(lambda: 10.0)
    await wait_for(lambda: all(leaving.id not in w.placement.workers for w in cluster.workers),
                   what="the ring with the draining worker")
    assert await leaving.rebalancer.wait_idle(15)
    owner = next(w for w in cluster.workers if w.id == leaving.placement.owner(c).id)
    assert c.name in owner.store and c.name not in owner.keeps  # handed over, no keep yet
    await leaving.keeps.add(c)  # what the preload's Control does once its fill returns
    leaving.rebalancer.kept(c)
    await wait_for(lambda: c.name in owner.keeps, what="the keep at the new owner")
    assert await leaving.rebalancer.wait_idle(15)
    assert c.name not in leaving.keeps


async def test_a_worker_waiting_for_a_restarted_masters_first_ring_is_read_from_not_passed_over(
        cluster_factory, s3, s3_client, bucket):
    """w1, restarted on its port and cache dir while the restarted master collects heartbeats, has
    its chunks but no ring. w0 still reads from it what it holds, and takes its 503 for a chunk it
    does not hold ("no ring from the master yet") as from a worker that is alive: not a failure,
    not asked last for 5 s. Before, every chunk request to w1 got that 503 and w0 passed w1 over,
    also as the holder of chunks handed to it, which were then read from S3 (a tester's helm
    upgrade: 2-4 chunks from S3 in 3 of 8 runs)."""
    cluster = await cluster_factory(2, heartbeat=0.2)
    data = dataset(s3_client, bucket, 7)
    w0, w1 = cluster.workers
    async with aiohttp.ClientSession() as http:
        await read_all(http, [w0.url], bucket, data)
        mine = [c for c in chunks(s3_client, bucket, data) if w0.placement.owner(c).id == w1.id]
        held, missing = mine[0], mine[1]
        w1.store.discard(missing.name)
        address = w1.address
        await w1.stop(leave=False)
        port = int(cluster.master.url.rsplit(":", 1)[1])
        await cluster.master.stop()
        cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=60, cluster_secret=SECRET))
        await cluster.master.start()
        w1 = cluster.workers[1] = Worker(replace(w1.config, host=address[0], port=address[1]))
        await w1.start()
        assert w1.placement is None
        client = w0.chunks._peers
        stream = await client.open(w0.placement.owner(held), held, 0, held.length)
        got = b"".join([piece async for piece in stream])
        assert got == data[held.key][held.start:held.start + held.length]
        with pytest.raises(PeerStarting):
            await client.open(w0.placement.owner(missing), missing, 0, missing.length)
        s3_before = s3.get_bytes
        key = missing.key
        async with http.get(f"{w0.url}/{bucket}/{key}", headers={"Range": f"bytes={missing.start}-{missing.start}"}) as resp:
            assert resp.status == 206 and await resp.read() == data[key][missing.start:missing.start + 1]
        assert s3.get_bytes - s3_before == missing.length  # w0 filled it (w1 has no ring to fill it by)
        assert await metric(http, w0.url, "p2pcache_peer_failures_total") == 0
        assert not w0.chunks._down.down(w1.id)
