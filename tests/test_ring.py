"""Placement on the ring: deterministic, balanced, stable under membership change."""

from __future__ import annotations

import collections
import math

import msgpack
import pytest
from hypothesis import given, strategies as st

from p2pcache.objects import ObjectInfo
from p2pcache.placement import HashPoints, assign
from p2pcache.ring import DRAINING, SPAN, NewerRing, NotARing, Placement, RingSnapshot, WorkerInfo
from worker.routing import fill_source, prefer_healthy, read_order


def ring(n: int, epoch: int = 1, replicas: int = 1, **kw) -> RingSnapshot:
    workers = tuple(WorkerInfo(f"w{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n))
    return RingSnapshot("m", epoch, 8 << 20, replicas, workers=workers, **kw)


def keys(n: int = 4000) -> list:
    info = ObjectInfo("bucket", "model.safetensors", '"etag"', n * (8 << 20))
    return [info.chunk(i, 8 << 20) for i in range(n)]


def test_snapshot_round_trips_through_msgpack():
    r = ring(3, epoch=7, replicas=2)
    assert RingSnapshot.decode(r.encode()) == r


def _with(**changes) -> bytes:
    d = ring(2, history=((("w0", 1),),)).to_dict() | changes
    return msgpack.packb({k: v for k, v in d.items() if v is not None})


@pytest.mark.parametrize(("data", "why"), [
    (b"<html><body>502 Bad Gateway</body>\n</html>", "not msgpack: '<html><body>502 Bad Gateway</body> </html>'"),
    (b"", "not msgpack: ''"),
    (msgpack.packb([1, 2]), "a list, not a map"),
    (_with(master_id=None), "no master_id"),
    (_with(epoch="7"), "epoch is str '7'"),
    (_with(chunk_size=True), "chunk_size is bool True"),
    (_with(workers=[{"id": "w0", "url": 5}]), "a worker's url is int 5"),
    (_with(workers=["w0"]), "a worker is a str, not a map"),
    (_with(workers=[{"url": "http://w0"}]), "its workers or history are malformed: "),
    (_with(history=[[["w0"]]]), "its workers or history are malformed: "),
])
def test_what_is_not_a_ring_is_refused_saying_why(data, why):
    """A proxy's page, another server's answer or a mangled ring: one named error, never msgpack's
    or a TypeError (they killed the loaders' ring followers)."""
    with pytest.raises(NotARing) as refused:
        RingSnapshot.decode(data)
    assert str(refused.value).startswith(why) and not isinstance(refused.value, NewerRing)


def test_a_newer_masters_ring_with_fields_this_version_lacks_is_refused_not_ignored():
    """The ring carries what placement depends on: a field skipped could mean other owners. A ring
    without a field of this version (an older master's) is read with the field's old meaning."""
    for data in (_with(spread=3), _with(workers=[{"id": "w0", "url": "http://w0", "zone": "a"}])):
        with pytest.raises(NewerRing, match="this version does not know: (spread|zone)"):
            RingSnapshot.decode(data)
    assert RingSnapshot.decode(_with(load=None, replicas=None)).replicas == 1


def test_placement_is_the_same_for_every_party_with_the_same_snapshot():
    a, b = Placement(ring(5)), Placement(RingSnapshot.decode(ring(5).encode()))
    assert [a.owner(k).id for k in keys(500)] == [b.owner(k).id for k in keys(500)]


def test_ownership_of_an_object_is_balanced():
    p = Placement(ring(8))
    counts = collections.Counter(p.owner(k).id for k in keys())
    assert len(counts) == 8
    assert max(counts.values()) <= 525  # ceil(1.05 x 4000 / 8)


def test_a_huge_object_is_placed_a_span_at_a_time_and_a_smaller_one_whole():
    """A lookup computes the owners of one span of SPAN chunks, whatever the object's size: S3 may
    say 5 TB (655,360 chunks of 8 MiB: 2.3 s on the event loop and 92 MB before) or, a broken or
    hostile endpoint, 1 PiB (the worker hung, growing past 3 GB). An object of up to SPAN chunks
    is placed whole, as before spans."""
    p = Placement(ring(8))
    huge = ObjectInfo("bucket", "huge.tar", '"etag"', (1 << 36) + 100)  # 2^20 chunks of 64 KiB and 100 bytes
    far = [huge.chunk(i, 64 << 10) for i in (0, 1, SPAN, 5 * SPAN + 7, 1 << 20)]
    assert all(p.owner(c) is not None for c in far)
    assert sum(len(t) for t in p._tables.values()) == 3 * SPAN + 1  # 4 spans; the last holds one chunk
    span = [huge.chunk(SPAN + i, 64 << 10) for i in range(SPAN)]  # a span is balanced on its own
    assert max(collections.Counter(p.owner(c).id for c in span).values()) <= math.ceil(1.03 * SPAN / 8)
    whole = keys(SPAN)
    members = {f"w{i}": 1 for i in range(8)}
    owners = assign(HashPoints(members, 100), members, whole[0].object_key, SPAN)
    assert [p.owner(c).id for c in whole] == [o[0] for o in owners]


def test_adding_a_worker_moves_little_and_mostly_to_it():
    before, after = Placement(ring(4)), Placement(ring(5))
    moved = [k for k in keys() if before.owner(k).id != after.owner(k).id]
    to_new = [k for k in moved if after.owner(k).id == "w4"]
    assert 0.15 < len(to_new) / 4000 <= 0.21  # its share, 1/5, within the load bound
    assert len(moved) <= 1.5 * 4000 / 5


def test_earlier_owners_still_in_the_ring_are_where_a_new_owner_looks_first():
    before = ring(4)
    after = before.with_workers(before.workers[:3] + (WorkerInfo("w3", "http://x", state=DRAINING),
                                                      WorkerInfo("w4", "http://y")), 2)
    old, new = Placement(before), Placement(RingSnapshot.decode(after.encode()))
    assert after.history == (before.owning(),)
    for k in keys(400):
        holders = [w.id for w in new.previous_holders(k)]
        assert holders[0] == old.owner(k).id  # the draining w3 among them: a source, not an owner
        assert new.owner(k).id in holders  # an owner now may hold it too
    assert Placement(before).previous_holders(keys(1)[0]) == []  # a ring that never changed


def test_the_history_is_kept_short_and_only_for_changes_of_owners():
    r = ring(2)
    same = r.with_workers(r.workers, 2)
    assert same.history == ()
    for n in range(3, 9):
        r = r.with_workers(tuple(WorkerInfo(f"w{i}", "http://x") for i in range(n)), n)
    assert len(r.history) == 3 and r.history[0] == tuple((f"w{i}", 1) for i in range(7))


def test_draining_workers_own_nothing():
    r = ring(3)
    r = r.with_workers(r.workers[:2] + (WorkerInfo("w2", "http://x", state=DRAINING),), 2)
    p = Placement(r)
    assert "w2" not in p
    assert {p.owner(k).id for k in keys(300)} == {"w0", "w1"}


def test_empty_ring_owns_nothing():
    assert Placement(ring(0)).owners(keys(1)[0]) == ()


@given(n=st.integers(1, 6), replicas=st.integers(1, 3), me=st.integers(0, 7), index=st.integers(0, 99))
def test_read_order_asks_owners_first_then_successors_in_ring_order_with_this_worker_in_its_place(
        n, replicas, me, index):
    p = Placement(ring(n, replicas=replicas))
    owners = p.owners(keys(100)[index])
    me_id = f"w{me}"
    order = read_order(owners, replicas, me_id)
    ids = [w.id for w in order]
    assert len(ids) == len(set(ids))
    owning = {w.id for w in owners[:replicas]}
    if me_id in owning:
        assert ids[0] == me_id
    else:
        assert set(ids[:len(owning)]) == owning
        successors = [w.id for w in owners[replicas:]]
        # Every reader that is no owner asks the successors in one order, itself where it stands
        # in it (last if it is not a successor): the first live one fills the chunk, once.
        assert ids[len(owning):] == (successors if me_id in successors else successors + [me_id])
    assert set(ids) == {w.id for w in owners} | {me_id}


def test_fill_source_followers_copy_the_primary_and_hops_are_bounded():
    owners = Placement(ring(4, replicas=2)).owners(keys(1)[0])
    primary, follower, other = owners[0].id, owners[1].id, owners[2].id
    assert fill_source(owners, 2, primary, 0) is None
    assert fill_source(owners, 2, follower, 0).id == primary
    assert fill_source(owners, 2, follower, 1).id == primary
    assert fill_source(owners, 2, follower, 2) is None
    assert fill_source(owners, 2, other, 0) is None


def test_peers_that_just_failed_are_asked_last_in_the_same_relative_order():
    order = [WorkerInfo(i, "") for i in ("a", "b", "c", "me")]
    assert [w.id for w in prefer_healthy(order, {"a", "c"})] == ["b", "me", "a", "c"]
    assert prefer_healthy(order, set()) == order


def test_the_load_bound_travels_with_the_ring_and_old_rings_keep_theirs():
    from p2pcache.objects import ObjectInfo
    from p2pcache.placement import LOAD
    from p2pcache.ring import LEGACY_LOAD, Placement, RingSnapshot, WorkerInfo

    workers = tuple(WorkerInfo(f"w{i}", f"http://w{i}") for i in range(8))
    ring = RingSnapshot("m", 1, 1 << 20, workers=workers)
    assert ring.load == LOAD and RingSnapshot.decode(ring.encode()).load == LOAD
    legacy = ring.to_dict()
    del legacy["load"]  # what a master from before the field sends
    assert RingSnapshot.from_dict(legacy).load == LEGACY_LOAD

    info = ObjectInfo("b", "model.bin", '"e"', 589 << 20)
    def busiest(snapshot):
        p = Placement(snapshot)
        counts = {}
        for i in range(589):
            owner = p.owner(info.chunk(i, 1 << 20)).id
            counts[owner] = counts.get(owner, 0) + 1
        return max(counts.values())
    assert busiest(ring) <= math.ceil(LOAD * 589 / 8) < busiest(RingSnapshot.from_dict(legacy))


def test_a_snapshot_has_reached_its_own_and_earlier_epochs_of_its_master_only():
    ring = RingSnapshot("m", 5, 1 << 20)
    assert [ring.reached(("m", e)) for e in (4, 5, 6)] == [True, True, False]
    assert not ring.reached(("other", 1))  # another master's epochs say nothing about ours
