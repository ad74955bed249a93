"""Membership in a live cluster: a dead worker leaves the ring, a new master is rejoined."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import replace

import aiohttp
import msgpack
import pytest

from conftest import CHUNK, wait_for
from faultproxy import FaultProxy, on_nth
from master.config import MasterConfig
from master.membership import Membership
from master.server import Master, ring_change
from p2pcache.auth import Signer
from p2pcache.master_client import MSGPACK, MasterClient
from p2pcache.ring import WorkerInfo
from p2pcache.service import Fatal
from worker.membership import announce_delay, call_timeout
from worker.server import Worker


async def read(http, url):
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def test_a_worker_that_stops_heartbeating_leaves_and_its_chunks_stay_readable(
        cluster_factory, s3_client, bucket, caplog):
    caplog.set_level(logging.INFO, "p2pcache.master")
    cluster = await cluster_factory(3, worker_ttl=1.5, heartbeat=0.3)
    body = random.Random(3).randbytes(12 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    w0, w1, w2 = cluster.workers
    epoch = cluster.master.membership.ring.epoch
    async with aiohttp.ClientSession() as http:
        assert await read(http, f"{w0.url}/{bucket}/m.bin") == body
        await w2.stop(leave=False)  # a crash: no goodbye, no more heartbeats
        # Before the master notices, readers fail over from the dead owner along the ring.
        assert await read(http, f"{w1.url}/{bucket}/m.bin") == body
        await wait_for(lambda: [w.id for w in cluster.master.membership.ring.workers] == ["w0", "w1"],
                       what="the master to expire w2")
        assert cluster.master.membership.ring.epoch > epoch
        # The master's line says what changed, not the whole ring (which grew the log with N squared).
        epoch = cluster.master.membership.ring.epoch
        assert f"ring epoch {epoch}: 2 workers (2 up); left: w2" in caplog.messages
        await cluster.wait_converged()
        for w in (w0, w1):
            assert await read(http, f"{w.url}/{bucket}/m.bin") == body


async def test_a_worker_restarted_under_a_new_id_on_an_address_replaces_the_old_one_at_once(
        cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2, worker_ttl=60)
    body = random.Random(5).randbytes(6 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    w0, w1 = cluster.workers
    port = int(w1.url.rsplit(":", 1)[1])
    await w1.stop(leave=False)  # kill -9, and a new cache dir: a new id on the same address
    new = await cluster.add_worker(worker_id="w1b", port=port)
    assert new.url == w1.url
    # Not after the master's 60 s TTL: at once, or the ring would give w1's share to w1b twice.
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0", "w1b"]
    await cluster.wait_converged()
    async with aiohttp.ClientSession() as http:
        for w in (w0, new):
            assert await read(http, f"{w.url}/{bucket}/m.bin") == body


async def test_reads_work_without_the_master_and_workers_rejoin_a_restarted_one(
        cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, heartbeat=0.2)
    old = cluster.master
    body = random.Random(4).randbytes(6 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    port = int(old.url.rsplit(":", 1)[1])
    await old.stop()
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:  # the master is never on the data path
            assert await read(http, f"{w.url}/{bucket}/m.bin") == body
        cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=1.0,
                                             cluster_secret=cluster.secret))
        await cluster.master.start()
        smallest = []  # the fewest workers any worker's ring held while the new master started

        def rejoined():
            smallest.append(min(len(w.placement.workers) for w in cluster.workers))
            ring = cluster.master.membership.ring
            return len(ring.workers) == 3 and all(w.placement.ring.version == ring.version
                                                  for w in cluster.workers)
        await wait_for(rejoined, what="the workers to rejoin the new master")
        assert min(smallest) == 3  # the grace period kept a partial ring from being published
        # ...and its partial memberships, which no one was given, are nobody's earlier owners: the
        # history goes on from the old master's ring (the workers report it), whose owners are the same.
        assert cluster.master.membership.ring.history == old.membership.ring.history != ()
        assert cluster.master.membership.ring.master_id != old.membership.ring.master_id
        for w in cluster.workers:
            async with http.get(f"{w.url}/_p2p/ready") as resp:
                assert resp.status == 200
            assert await read(http, f"{w.url}/{bucket}/m.bin") == body


async def restart_master(cluster, grace: float) -> None:
    """The cluster's master stopped and a new one started on its port, collecting heartbeats for `grace` s."""
    port = int(cluster.master.url.rsplit(":", 1)[1])
    await cluster.master.stop()
    cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=grace,
                                         cluster_secret=cluster.secret))
    await cluster.master.start()


async def test_a_malformed_ring_report_is_refused_with_a_400_and_the_worker_stays(cluster_factory):
    cluster = await cluster_factory(1, heartbeat=0.2)
    w0, membership = cluster.workers[0], cluster.master.membership
    epoch = membership.ring.epoch
    body = msgpack.packb({"id": "w0", "url": w0.url, "capacity": 1 << 30, "ring": {"master_id": "a b"}})
    headers = {"Content-Type": MSGPACK} | Signer(cluster.secret).headers("POST", "/workers", None, body)
    async with cluster.session.post(f"{cluster.master.url}/workers", data=body, headers=headers) as resp:
        assert resp.status == 400 and await resp.text() == ("invalid worker registration: ring report: master_id "
                                                            "must be 1-64 characters of A-Z a-z 0-9 . _ -\n")
    await beats(membership, "w0", 2)
    assert membership.ring.epoch == epoch and [w.id for w in membership.ring.workers] == ["w0"]


async def test_a_worker_whose_ring_a_restarted_master_refuses_beats_on_without_it(cluster_factory, caplog):
    """A ring the master will not take (here one named longer than a report may name its master, as a
    master of another version might) costs the worker nothing but the report: it beats on without."""
    cluster = await cluster_factory(0, heartbeat=0.2)
    cluster.master.membership = Membership(chunk_size=CHUNK, master_id="m" * 65)
    w0 = await cluster.add_worker()
    await cluster.wait_converged()
    await restart_master(cluster, grace=0.5)
    await cluster.wait_converged()
    assert not w0.agent.refused.done() and cluster.master.membership.ring.history == ()
    assert ("the master refused the ring this worker holds: beating without it from now on: the master at "
            f"{cluster.master.url} refused this worker: invalid worker registration: ring report: master_id must "
            "be 1-64 characters") in caplog.text


async def test_a_worker_whose_master_answers_a_ring_request_with_a_page_asks_again_and_follows(
        cluster_factory, caplog):
    """Its ring follower died of the page's msgpack error: the worker never had a ring."""
    cluster = await cluster_factory(1, heartbeat=0.2)
    proxy = await FaultProxy(cluster.master.url).start()
    proxy.by_request = on_nth(1, "page", prefix="/ring")
    try:
        behind = await cluster.add_worker(master_url=proxy.url)
        await cluster.wait_converged()
        await cluster.add_worker()  # and it follows the ring on
        await cluster.wait_converged()
        assert proxy.injected["page"] == 1 and "w2" in behind.placement.workers
    finally:
        await proxy.stop()
    assert (f"could not fetch the ring, none yet, asking again every 0.2 s: {proxy.url} did not answer as a "
            "p2pcache master (it answered 200 with no ring: not msgpack: '<html>") in caplog.text


async def test_a_worker_whose_heartbeat_is_answered_with_a_page_beats_on(cluster_factory, caplog):
    """The page's msgpack error ended its heartbeats for good: the master expired a serving worker."""
    cluster = await cluster_factory(1, heartbeat=0.2)
    proxy = await FaultProxy(cluster.master.url).start()
    proxy.by_request = on_nth(2, "page", method="POST", prefix="/workers")  # the first beat after its start
    try:
        await cluster.add_worker(master_url=proxy.url)
        await wait_for(lambda: proxy.injected["page"] and proxy.targets.count("/workers") >= 4,
                       what="heartbeats after the page")
    finally:
        await proxy.stop()
    assert re.search(f"heartbeat failed, (serving on the last ring|no ring yet): {re.escape(proxy.url)} did not "
                     "answer as a p2pcache master \\(it answered a heartbeat with 200 and '<html>", caplog.text)


async def test_a_worker_is_ready_only_once_it_is_in_the_ring(cluster_factory):
    cluster = await cluster_factory(1)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.workers[0].url}/_p2p/ready") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        await cluster.workers[0].agent.stop(leave=True)
        await wait_for(lambda: cluster.master.membership.ring.workers == (), what="the worker to leave")
        async with http.get(f"{cluster.master.url}/ring?format=json") as resp:
            assert (await resp.json())["workers"] == []


async def test_workers_beat_often_enough_for_a_master_whose_ttl_is_shorter_than_their_interval(cluster_factory):
    cluster = await cluster_factory(1, worker_ttl=1.0, heartbeat=30.0)
    membership = cluster.master.membership
    epoch = membership.ring.epoch
    beats = []  # when the master heard w0, each time it did

    def heard_four_beats():
        seen = membership._seen.get("w0")
        if seen is not None and seen not in beats:
            beats.append(seen)
        return len(beats) >= 4

    await wait_for(heard_four_beats, what="w0's heartbeats, three times a TTL")
    assert membership.ring.epoch == epoch and [w.id for w in membership.ring.workers] == ["w0"]


async def test_a_worker_the_master_comes_to_refuse_stops_heartbeating_and_says_why(cluster_factory):
    cluster = await cluster_factory(1, capacity=3 * CHUNK)
    worker = cluster.workers[0]
    port = int(cluster.master.url.rsplit(":", 1)[1])
    await cluster.master.stop()  # back with chunks 3 x w0's capacity cannot hold twice
    cluster.master = Master(MasterConfig(port=port, chunk_size=2 * CHUNK, cluster_secret=cluster.secret))
    await cluster.master.start()
    fatal = await asyncio.wait_for(worker.fatal(), timeout=15)
    assert str(fatal).endswith(f"refused this worker: invalid worker registration: capacity must hold 2 chunks, "
                               f"{4 * CHUNK} bytes at the master's --chunk-size 512KiB, not {3 * CHUNK}")
    assert cluster.master.membership.ring.workers == ()


def test_a_drain_is_announced_again_until_too_little_of_it_is_left_and_no_call_outlasts_it():
    assert [announce_delay(n, 20.0) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert announce_delay(1, 0.4) == 0.1  # the try still gets a quarter second
    assert announce_delay(1, 0.3) is None and announce_delay(5, 1.2) is None
    assert call_timeout(30.0) == 10.0 and call_timeout(2.0) == 2.0
    assert call_timeout(0.1) == call_timeout(-5.0) == 0.25  # past the deadline: one short try, never "no timeout"


async def beats(membership, worker_id: str, n: int) -> None:
    """Until the master has heard `n` more heartbeats of `worker_id`."""
    heard = [membership._seen[worker_id]]
    def more():
        if membership._seen[worker_id] != heard[-1]:
            heard.append(membership._seen[worker_id])
        return len(heard) > n
    await wait_for(more, what=f"{n} heartbeats of {worker_id}")


async def test_a_second_live_process_with_an_id_takes_it_and_the_first_stops_claiming_it(cluster_factory):
    cluster = await cluster_factory(2, heartbeat=0.2)
    w0, w1 = cluster.workers
    dup = await cluster.add_worker(worker_id="w1")  # another port and cache dir: a misconfigured pod
    fatal = await asyncio.wait_for(w1.fatal(), timeout=15)
    assert str(fatal) == (f"the master at {cluster.master.url} refused this worker: worker id 'w1' was registered "
                          f"since by another process, at {dup.url}: two live processes must not share an id (--id)")
    membership = cluster.master.membership
    epoch = membership.ring.epoch
    assert [(w.id, w.url) for w in membership.ring.workers] == [("w0", w0.url), ("w1", dup.url)]
    # A goodbye from another process than the one holding the id leaves it in the ring.
    await MasterClient(cluster.session, cluster.master.url, Signer(cluster.secret)).leave("w1")
    await beats(membership, "w1", 3)
    assert membership.ring.epoch == epoch and membership.worker("w1").url == dup.url
    await w1.stop()  # no drain, no leave: the id is not its own any more
    assert [(w.id, w.url) for w in membership.ring.workers] == [("w0", w0.url), ("w1", dup.url)]


async def test_a_worker_whose_advertised_url_answers_as_another_does_not_start(cluster_factory):
    """A second worker given a live one's URL (--advertise) would take it from the master (the
    newest process holds a URL: tests/test_membership.py) and stop the worker that serves it.
    It asks the URL who answers there first, and does not start: the live one goes on, its ring
    untouched. Before, the two took the URL from each other on every heartbeat."""
    cluster = await cluster_factory(2, heartbeat=0.2)
    w0, w1 = cluster.workers
    membership = cluster.master.membership
    epoch = membership.ring.epoch
    with pytest.raises(Fatal) as refused:
        await cluster.add_worker(worker_id="wX", advertise=w1.url)
    assert str(refused.value) == (f"--advertise {w1.url} answers as worker 'w1', not as this one ('wX'): "
                                  f"two workers must not share a URL")
    await beats(membership, "w1", 3)
    assert membership.ring.epoch == epoch and [(w.id, w.url) for w in membership.ring.workers] == [
        ("w0", w0.url), ("w1", w1.url)]
    assert not w1.agent.refused.done()


async def test_a_worker_id_file_naming_another_worker_through_dots_leaves_that_worker_in_the_ring(
        cluster_factory, tmp_path):
    """`x/../w0` in a cache dir's worker-id: the worker stops before it registers, and so sends no
    leave (it went out as DELETE /workers/x/../w0, which the client resolved to w0's)."""
    cluster = await cluster_factory(1)
    epoch = cluster.master.membership.ring.epoch
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "worker-id").write_text("x/../w0\n")
    worker = Worker(replace(cluster.workers[0].config, worker_id=None, port=0, cache_dir=tmp_path / "x"))
    with pytest.raises(Fatal) as stopped:
        await worker.start()
    await worker.stop()
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0"]
    assert cluster.master.membership.ring.epoch == epoch
    assert str(stopped.value).startswith(f"worker id file {tmp_path / 'x' / 'worker-id'} holds 'x/../w0', not an id")


async def test_a_worker_the_master_refuses_at_registration_sends_no_leave(cluster_factory, tmp_path):
    """A second worker given w0's id, with a capacity the master refuses: its leave would have
    been w0's, and taken w0 out of the ring."""
    cluster = await cluster_factory(1)
    epoch = cluster.master.membership.ring.epoch
    twin = Worker(replace(cluster.workers[0].config, port=0, cache_dir=tmp_path / "twin", capacity=CHUNK))
    with pytest.raises(Fatal, match="refused this worker: invalid worker registration: capacity must hold 2 chunks"):
        await twin.start()
    await twin.stop()
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0"]
    assert cluster.master.membership.ring.epoch == epoch


@pytest.mark.parametrize("other", ["x/../w0", "x%2F..%2Fw0", "./w0", "w%30"])
async def test_a_leave_takes_out_the_id_it_names_and_no_other(cluster_factory, other):
    """The id is one path segment, escaped, dots too: never resolved into another worker's path."""
    cluster = await cluster_factory(1)
    master = MasterClient(cluster.session, cluster.master.url, Signer(cluster.secret))
    await master.heartbeat(WorkerInfo("..", "http://127.0.0.1:1", 1 << 30))  # an id the master takes
    await master.leave(other)
    assert [w.id for w in cluster.master.membership.ring.workers] == ["..", "w0"]
    await master.leave("..")
    assert [w.id for w in cluster.master.membership.ring.workers] == ["w0"]


def test_a_ring_change_is_logged_as_what_changed():
    assert ring_change({}, {}) == "0 workers"
    assert ring_change({}, {"w0": "up"}) == "1 worker (1 up); joined: w0"
    assert ring_change({"w0": "up", "w1": "up"}, {"w0": "draining", "w2": "up"}) == \
        "2 workers (1 draining, 1 up); joined: w2; left: w1; now: w0 draining"


async def test_a_second_process_with_a_live_id_in_an_open_cluster_says_it_is_refused_not_unreachable(
        cluster_factory, caplog):
    """Without the cluster secret an id keeps its URL: a second process with w0's id at another
    URL is refused (409) until w0 leaves or expires, and asks again meanwhile. It logged that its
    heartbeat failed and it served "on the last ring" (it had none), and at its drain that the
    master "was unreachable for the whole drain" (it answered every try), after asking until
    --drain-timeout for a drain of nothing: it is not in the ring."""
    cluster = await cluster_factory(1, heartbeat=0.2, secret=None)
    w0 = cluster.workers[0]
    with caplog.at_level(logging.INFO, logger="p2pcache.membership"):
        twin = await cluster.add_worker(worker_id="w0", drain_timeout=600)  # another port and cache dir
        await wait_for(lambda: twin.placement is not None, what="the ring at the twin")  # it drains then
        await asyncio.wait_for(twin.stop(), 30)  # what SIGTERM does: announce the drain (refused), leave
        said = [r.getMessage() for r in caplog.records if r.name == "p2pcache.membership"]
        refused = f"the master at {cluster.master.url} refuses this worker for now: worker id 'w0' is registered at {w0.url}"
        assert said[0].startswith(refused) and said[0].endswith("; asking again at each heartbeat"), said
        assert not any("heartbeat failed" in line or "unreachable" in line for line in said), said
        assert any(line.startswith(refused) and line.endswith("; this worker is not in the ring: leaving without "
                                                             "a handoff") for line in said[1:]), said
        assert said[-1].startswith("told the master this process is gone (it refused this worker"), said
        assert [(w.id, w.url) for w in cluster.master.membership.ring.workers] == [("w0", w0.url)]
        # Once w0 leaves, another such process is taken at its next heartbeat.
        twin = await cluster.add_worker(worker_id="w0")
        await w0.stop()
        await wait_for(lambda: [(w.id, w.url) for w in cluster.master.membership.ring.workers] == [("w0", twin.url)],
                       what="the id at its new URL")
        await wait_for(lambda: "the master took this worker" in caplog.text, what="the worker to say so")


async def test_a_master_restarted_between_two_heartbeats_hears_the_ring_within_one_interval(cluster_factory):
    """w0 never saw the master gone: the answer to its next heartbeat is its first news of a new
    master, and it tells it its ring at once, with a second heartbeat. Before, the ring came with the
    heartbeat after, an interval later, past a --startup-grace shorter than two intervals: the
    restarted master's first ring had no history, although w1 left while it was down."""
    cluster = await cluster_factory(2, heartbeat=2.0)
    membership = cluster.master.membership
    seen = membership._seen.get("w0")
    await wait_for(lambda: membership._seen.get("w0") != seen, what="a heartbeat of w0")
    before = membership.ring
    await cluster.workers[1].stop(leave=False)
    await restart_master(cluster, grace=3.0)  # w0's next beat is within 2 s, the one after near 4 s
    await cluster.wait_converged()
    ring = cluster.master.membership.ring
    assert ring.master_id != before.master_id and [w.id for w in ring.workers] == ["w0"]
    assert ring.history == (before.owning(),) + before.history[:2]


async def test_a_long_poll_during_the_startup_grace_gets_the_first_ring_when_it_is_published(cluster_factory):
    """So every worker has the restarted master's first ring at once, not each up to a heartbeat
    interval after its last try (before: 503 at once, asked again an interval later)."""
    cluster = await cluster_factory(1, heartbeat=0.2)
    await restart_master(cluster, grace=1.0)
    ring = f"{cluster.master.url}/ring"
    async with cluster.session.get(ring, params={"format": "json"}) as resp:
        assert resp.status == 503 and (await resp.text()).startswith("master starting: collecting heartbeats")
    async with cluster.session.get(ring, params={"format": "json", "wait": "30"}) as resp:
        assert resp.status == 200 and [w["id"] for w in (await resp.json())["workers"]] == ["w0"]
    await restart_master(cluster, grace=60)
    polling = asyncio.ensure_future(cluster.session.get(ring, params={"wait": "30"}))
    await wait_for(lambda: cluster.master._runner.server.connections, what="the long-poll's connection")
    await cluster.master.stop()  # releases it: a stop does not wait out the grace
    resp = await asyncio.wait_for(polling, 10)
    assert resp.status == 503
    resp.release()


@pytest.mark.parametrize(("grace", "warned"), [(1.0, True), (3.4, False), (0, False)])
async def test_a_startup_grace_shorter_than_a_third_of_the_ttl_is_warned_of(grace, warned, caplog):
    """Workers beat at most every --worker-ttl / 3 (10 s: 3.33 s); one beating every 2 s may miss
    a 1 s grace: the first ring would lack it (a tester's run read 10 MB from S3 so)."""
    master = Master(MasterConfig(port=0, chunk_size=CHUNK, worker_ttl=10.0, startup_grace=grace))
    await master.start()
    try:
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(line.startswith(f"--startup-grace {grace:g} is shorter than a third of --worker-ttl (3.33 s)")
                   for line in said) == warned, said
    finally:
        await master.stop()
