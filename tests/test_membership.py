"""The master's membership state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from master.membership import Membership, Replaced
from p2pcache.placement import LOAD
from p2pcache.ring import WorkerInfo
from p2pcache.ringreport import RingReport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_register_heartbeat_expire_and_leave_bump_the_epoch_only_on_change():
    clock = Clock()
    m = Membership(chunk_size=1 << 20, ttl=10, clock=clock)
    a, b = WorkerInfo("a", "http://a"), WorkerInfo("b", "http://b")
    assert m.ring.epoch == 0
    assert m.heartbeat(a) and m.heartbeat(b)
    assert m.ring.epoch == 2 and [w.id for w in m.ring.workers] == ["a", "b"]
    clock.now += 6
    assert not m.heartbeat(a)  # a plain heartbeat changes nothing
    assert m.ring.epoch == 2
    clock.now += 6  # b last seen 12 s ago, a 6 s ago
    assert m.expire() == ["b"]
    assert m.ring.epoch == 3 and [w.id for w in m.ring.workers] == ["a"]
    assert m.expire() == []
    assert m.heartbeat(WorkerInfo("a", "http://a-moved"))  # a new URL is a change
    assert m.ring.workers[0].url == "http://a-moved" and m.ring.epoch == 4
    assert m.leave("a") and not m.leave("a")
    assert m.ring.workers == () and m.ring.epoch == 5


def test_placement_settings_travel_with_the_ring():
    m = Membership(chunk_size=4 << 20, replicas=2, vnodes=100, master_id="m1")
    m.heartbeat(WorkerInfo("a", "http://a"))
    assert (m.ring.chunk_size, m.ring.replicas, m.ring.vnodes, m.ring.master_id) == (4 << 20, 2, 100, "m1")


def test_a_new_master_names_its_ring_differently():
    a, b = Membership(chunk_size=1), Membership(chunk_size=1)
    assert a.ring.version != b.ring.version


def test_an_address_answers_as_one_worker_the_latest_registered_there():
    clock = Clock()
    m = Membership(chunk_size=1 << 20, ttl=10, clock=clock)
    m.heartbeat(WorkerInfo("a", "http://h1:80"))
    m.heartbeat(WorkerInfo("b", "http://h2:80"))
    # "a" was killed and its address restarted as "a2" before "a" expired: "a" is gone at once.
    assert m.at_url(WorkerInfo("a2", "http://h1:80")) == "a" and m.at_url(WorkerInfo("a", "http://h1:80")) is None
    assert m.heartbeat(WorkerInfo("a2", "http://h1:80"))
    assert [w.id for w in m.ring.workers] == ["a2", "b"]
    clock.now += 11
    assert sorted(m.expire()) == ["a2", "b"]  # nothing left behind for "a"


def test_the_newest_process_of_an_id_holds_it_and_the_one_it_replaced_is_refused_not_flapped():
    clock = Clock()
    m = Membership(chunk_size=1 << 20, ttl=10, clock=clock)
    m.heartbeat(WorkerInfo("a", "http://h1:80"), instance="p1")
    m.heartbeat(WorkerInfo("b", "http://h2:80"), instance="p2")
    # A second process with --id a, on another address: a restarted pod, taken at once...
    assert m.heartbeat(WorkerInfo("a", "http://h3:80"), instance="p3")
    epoch = m.ring.epoch
    assert [(w.id, w.url) for w in m.ring.workers] == [("a", "http://h3:80"), ("b", "http://h2:80")]
    # ...but the first one still beats: two live processes. It is refused, every beat, and the ring stays.
    for _ in range(3):
        clock.now += 2
        with pytest.raises(Replaced, match=r"^worker id 'a' was registered since by another process, at "
                                           r"http://h3:80: two live processes must not share an id"):
            m.heartbeat(WorkerInfo("a", "http://h1:80"), instance="p1")
        assert not m.heartbeat(WorkerInfo("a", "http://h3:80"), instance="p3")
    assert m.ring.epoch == epoch and m.ring.workers[0].url == "http://h3:80"
    assert not m.leave("a", instance="p1")  # the replaced process's goodbye is not the new one's
    assert m.instance("a") == "p3" and m.ring.epoch == epoch
    clock.now += 11  # p1 went quiet (it exits on the refusal): forgotten with the expired
    m.heartbeat(WorkerInfo("a", "http://h3:80"), instance="p3")
    assert m.expire() == ["b"] and m._replaced == {}
    assert m.leave("a", instance="p3") and m.ring.workers == ()


def test_the_newest_worker_at_a_url_holds_it_and_the_one_it_replaced_is_refused():
    m = Membership(chunk_size=1 << 20, ttl=10, clock=Clock())
    m.heartbeat(WorkerInfo("a", "http://h1:80"), instance="p1")
    assert m.heartbeat(WorkerInfo("x", "http://h1:80"), instance="p2")  # --advertise of a's URL
    epoch = m.ring.epoch
    with pytest.raises(Replaced, match=r"^http://h1:80 was registered since by another worker, 'x': "
                                       r"two live workers must not share a URL"):
        m.heartbeat(WorkerInfo("a", "http://h1:80"), instance="p1")
    assert [w.id for w in m.ring.workers] == ["x"] and m.ring.epoch == epoch


def test_a_restart_on_the_same_address_changes_no_ring_and_workers_that_name_no_process_are_never_refused():
    m = Membership(chunk_size=1 << 20, ttl=10, clock=Clock())
    a = WorkerInfo("a", "http://h1:80")
    m.heartbeat(a, instance="p1")
    epoch = m.ring.epoch
    assert not m.heartbeat(a, instance="p2") and m.ring.epoch == epoch and m.instance("a") == "p2"
    with pytest.raises(Replaced):
        m.heartbeat(a, instance="p1")
    # Workers from before instances: the last registration holds the id, as it always did.
    assert m.heartbeat(WorkerInfo("a", "http://h2:80")) and m.heartbeat(WorkerInfo("a", "http://h3:80"))
    assert m.ring.workers[0].url == "http://h3:80" and m.instance("a") is None


def test_memberships_of_a_ring_not_yet_published_are_no_earlier_owners():
    clock = Clock()
    m = Membership(chunk_size=1 << 20, ttl=10, clock=clock)
    m.publish_at = clock.now + 2  # a restarted master collecting heartbeats
    for wid in ("a", "b", "c"):
        m.heartbeat(WorkerInfo(wid, f"http://{wid}:80"))
    assert m.ring.epoch == 3 and m.ring.history == ()  # [a] and [a, b] owned nothing: no one had them
    clock.now += 2
    m.heartbeat(WorkerInfo("d", "http://d:80"))  # published: [a, b, c] is the earlier membership
    assert m.ring.history == ((("a", 1), ("b", 1), ("c", 1)),)


def report(master_id: str, epoch: int, *memberships: str, age: float = 0.0, chunk_size: int = 1 << 20) -> RingReport:
    """A worker's report of ring `epoch` of `master_id`, whose memberships ("ab": a and b) are `memberships`."""
    owning = tuple(tuple((wid, 1) for wid in m) for m in memberships)
    return RingReport(master_id, epoch, (chunk_size, 1, 100, LOAD), owning, age)


def restarted(clock: Clock) -> Membership:
    """A master in its startup grace, with workers a, b and c back."""
    m = Membership(chunk_size=1 << 20, ttl=10, clock=clock, master_id="new")
    m.publish_at = clock.now + 2
    for wid in "abc":
        m.heartbeat(WorkerInfo(wid, f"http://{wid}:80"))
    return m


def test_a_restarted_masters_first_ring_has_the_owners_before_it_as_its_workers_report_them():
    clock = Clock()
    m = restarted(clock)
    assert m.reported(report("old", 9, "ab", "a"))  # c joined while the master was down
    assert m.ring.history == ((("a", 1), ("b", 1)), (("a", 1),)) and m.ring.epoch == 3
    m.heartbeat(WorkerInfo("d", "http://d:80"))  # later in the grace: still the first ring
    assert m.ring.history == ((("a", 1), ("b", 1)), (("a", 1),))
    clock.now += 2
    assert not m.reported(report("old", 10, "abcd"))  # published: the ring does not change under readers
    m.heartbeat(WorkerInfo("e", "http://e:80"))
    assert m.ring.history == ((("a", 1), ("b", 1), ("c", 1), ("d", 1)), (("a", 1), ("b", 1)), (("a", 1),))


def test_owners_that_did_not_change_across_the_restart_go_on_with_their_history():
    m = restarted(Clock())
    assert m.reported(report("old", 9, "abc", "ab", "a", "b"))
    assert m.ring.history == ((("a", 1), ("b", 1)), (("a", 1),), (("b", 1),))


def test_the_newest_ring_is_the_highest_epoch_of_a_master_and_the_last_received_of_two():
    clock = Clock()
    m = restarted(clock)
    assert m.reported(report("old", 9, "ab", age=5.0))
    assert not m.reported(report("old", 8, "a", age=1.0))  # an earlier epoch, however recently received
    assert m.reported(report("old", 10, "abc", "ab", age=30.0))
    assert m.ring.history == ((("a", 1), ("b", 1)),)
    # Another master's epochs are no measure (ring.py): its ring came 20 s after old's epoch 10.
    assert m.reported(report("between", 1, "a", age=10.0))
    assert not m.reported(report("older", 50, "ac", age=60.0))
    assert m.ring.history == ((("a", 1),),)


def test_reports_of_this_master_or_of_other_placement_parameters_are_not_taken():
    m = restarted(Clock())
    assert not m.reported(report("new", 2, "ab"))  # its own ring: its memberships are in its history already
    assert not m.reported(report("old", 9, "ab", chunk_size=2 << 20))  # its owners held other chunks
    assert m.ring.history == ()


def test_a_master_without_a_startup_grace_takes_no_report():
    m = Membership(chunk_size=1 << 20, clock=Clock())
    m.heartbeat(WorkerInfo("a", "http://a:80"))
    assert not m.reported(report("old", 9, "ab")) and m.ring.history == ()
