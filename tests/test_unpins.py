"""Unpins for workers that were away: what the master remembers and sends, what a worker drops."""

from __future__ import annotations

import pytest

from conftest import CHUNK, SECRET, wait_for
from master.unpins import UnpinLog
from p2pcache.admin_client import AdminClient
from p2pcache.errors import BadRequest
from p2pcache.objects import ObjectInfo
from worker.keep import Keeps
from worker.unpins import Missed, missed


def test_a_worker_gets_the_unpins_after_the_last_it_had_of_this_master():
    now = [100.0]
    log = UnpinLog(clock=lambda: now[0])
    a, b = log.add("b", "x/"), log.add("b", "y/", at=90.0)
    assert log.since("m1", []) == [a, b]  # a new process has had none
    assert log.since("m1", ["m1", 1]) == [b]
    assert log.since("m1", ["m1", 2]) == []
    assert log.since("m1", ["m0", 2]) == [a, b]  # a cursor from a master before this one
    now[0] = 130.0
    assert log.to_wire([a, b]) == [[1, "b", "x/", 30.0], [2, "b", "y/", 40.0]]


def test_the_log_forgets_its_oldest_past_its_limit():
    log = UnpinLog(limit=3)
    made = [log.add("b", f"{i}/") for i in range(5)]
    assert len(log) == 3 and log.since("m", []) == made[2:]
    assert log.since("m", ["m", 1]) == made[2:]  # had 1, 2 and 3 are gone: what is left
    assert log.since("m", ["m", 3]) == made[3:]


def test_the_log_refuses_text_no_heartbeat_answer_could_carry():
    log = UnpinLog()
    for bucket, prefix in (("b", "m/\udcff"), ("b\udcff", "")):
        with pytest.raises(ValueError):
            log.add(bucket, prefix)
    assert len(log) == 0 and log.seq == 0


async def test_an_unpin_of_a_url_that_is_not_utf8_is_refused_and_later_unpins_still_reach_a_worker_away(
        cluster_factory, s3_client, bucket):
    """`p2pcache unpin $'s3://models/\\xff'` was remembered, and from then on every heartbeat answer
    failed to encode (500): a worker away when a real unpin ran never had it, its pins stayed."""
    cluster = await cluster_factory(2)
    for i in range(4):
        s3_client.put_object(Bucket=bucket, Key=f"m/{i}", Body=bytes([i]) * CHUNK)
    url = f"s3://{bucket}/m/"
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert (await admin.wait((await admin.preload([url], pin=True))["id"]))["state"] == "done"
        with pytest.raises(BadRequest, match="is not UTF-8"):
            await admin.unpin([f"s3://{bucket}/\udcff"])
        assert len(cluster.master.unpins) == 0
        away = max(cluster.workers, key=lambda w: len(w.keeps))
        assert len(away.keeps) > 0
        await away.stop(leave=False)  # in the ring until its heartbeats expire: the unpin fails there
        assert [away.id in f for f in (await admin.unpin([url]))["failed"]] == [True]
    back = await cluster.restart(away)
    await wait_for(lambda: len(back.keeps) == 0, what="the unpin with a heartbeat's answer")


def test_ages_are_dated_on_the_workers_clock_from_when_the_heartbeat_left():
    assert missed([[4, "b", "m/", 2.5]], sent_at=1000.0) == [Missed(4, "b", "m/", 997.5)]
    for bad in ({"a": 1}, [[1, "b", "m/"]], [[1, "", "m/", 0]], [[1, "b", "m/", -1]], [["1", "b", "m/", 0]]):
        with pytest.raises(ValueError):
            missed(bad, 0.0)


async def test_an_unpin_heard_late_drops_the_pins_made_before_it_and_no_later_one(tmp_path):
    now = [1000.0]
    keeps = Keeps(tmp_path / "kept", 1 << 30, clock=lambda: now[0])
    await keeps.load()
    old, new, other = (ObjectInfo("b", k, '"e"', 100).chunk(0, 100) for k in ("m/old", "m/new", "n/x"))
    await keeps.add(old)
    await keeps.add(other)
    now[0] = 2000.0
    await keeps.add(new)
    again = Keeps(tmp_path / "kept", 1 << 30)  # a restart: the dates are the records'
    await again.load()
    assert await again.release("b", "m/", before=1500.0) == 1
    assert old.name not in again and new.name in again and other.name in again
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted([new.name, other.name])

    now[0] = 3000.0
    assert not await keeps.add(other)  # pinned again: dated again, on disk too
    later = Keeps(tmp_path / "kept", 1 << 30)
    await later.load()
    assert await later.release("b", "n/", before=2500.0) == 0 and other.name in later


async def test_a_pin_handed_over_keeps_its_date_never_later_than_now_and_a_later_pin_here_stands(tmp_path):
    now = [1000.0]
    keeps = Keeps(tmp_path / "kept", 1 << 30, clock=lambda: now[0])
    await keeps.load()
    a, b = (ObjectInfo("b", k, '"e"', 100).chunk(0, 100) for k in ("m/a", "m/b"))
    await keeps.add(a, 400.0)  # pinned at 400 at its old owner
    await keeps.add(b, 5000.0)  # by a giver whose clock is ahead of ours: dated now
    assert keeps.pinned_at(a.name) == 400.0 and keeps.pinned_at(b.name) == 1000.0
    assert not await keeps.add(b, 300.0)  # an older pin of it handed over: the later one stands
    assert keeps.pinned_at(b.name) == 1000.0
    again = Keeps(tmp_path / "kept", 1 << 30)  # a restart: the dates are the records'
    await again.load()
    assert await again.release("b", "m/", before=500.0) == 1
    assert a.name not in again and b.name in again
