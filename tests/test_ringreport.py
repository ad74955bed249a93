"""The ring a worker reports in its heartbeats: what it sends, and what the master refuses (400)."""

from __future__ import annotations

import json

import msgpack
import pytest

from master.registration import InvalidRegistration, parse_registration
from p2pcache.ring import RingSnapshot, WorkerInfo
from p2pcache.ringreport import MAX_ENTRIES, RingReport

CHUNK = 8 << 20
WORKER = {"id": "w0", "url": "http://w0:7071", "capacity": 1 << 30, "weight": 1, "state": "up"}


def ring(n: int, *history: int) -> RingSnapshot:
    r = RingSnapshot("m1", 0, CHUNK)
    for i, size in enumerate((*reversed(history), n)):
        r = r.with_workers(tuple(WorkerInfo(f"w{j}", f"http://w{j}:7071") for j in range(size)), i + 1)
    return r


def heartbeat(report: object, content_type: str = "application/msgpack") -> RingReport | None:
    body = WORKER | ({} if report is None else {"ring": report})
    data = json.dumps(body).encode() if content_type == "application/json" else msgpack.packb(body)
    return parse_registration(data, content_type, CHUNK).ring


def test_a_report_names_the_ring_and_its_memberships_owning_first_and_the_master_reads_it_back():
    r = ring(3, 2, 1)
    report = RingReport.of(r, 12.5)
    assert report == RingReport("m1", 3, (CHUNK, 1, 100, r.load), (r.owning(),) + r.history, 12.5)
    assert heartbeat(report.to_wire()) == report
    assert heartbeat(json.loads(json.dumps(report.to_wire())), "application/json") == report
    assert heartbeat(None) is None  # a worker that holds no ring, or one from before reports


def test_a_ring_too_large_for_one_report_sends_its_newest_memberships_that_fit():
    big = MAX_ENTRIES // 2
    r = ring(big, big - 1, 5)  # 2048 owners, then 2047 and 5 before them: the 5 do not fit
    assert RingReport.of(r, 0).memberships == (r.owning(), r.history[0])
    assert RingReport.of(ring(MAX_ENTRIES + 1), 0) is None
    assert RingReport.of(ring(1), -3).age == 0.0  # a clock stepped back: no negative age


GOOD = RingReport.of(ring(2, 1), 1.0).to_wire()


@pytest.mark.parametrize(("changes", "reason"), [
    ({"master_id": "a b"}, "master_id must be 1-64 characters"),
    ({"master_id": "m" * 65}, "master_id must be 1-64 characters"),
    ({"master_id": None}, "master_id must be 1-64 characters"),
    ({"epoch": -1}, "epoch must be a non-negative integer"),
    ({"epoch": True}, "epoch must be a non-negative integer"),
    ({"epoch": "3"}, "epoch must be a non-negative integer"),
    ({"age": -1}, "age must be a number of seconds"),
    ({"age": float("nan")}, "age must be a number of seconds"),
    ({"age": float("inf")}, "age must be a number of seconds"),
    ({"age": 1e12}, "age must be a number of seconds"),
    ({"age": None}, "age must be a number of seconds"),
    ({"parameters": [CHUNK, 1, 100]}, "parameters must be [chunk_size, replicas, vnodes, load]"),
    ({"parameters": [CHUNK, 1, 100, "1.03"]}, "parameters must be"),
    ({"parameters": None}, "parameters must be"),
    ({"memberships": []}, "memberships must be a list of 1 to 4 memberships"),
    ({"memberships": [[["w0", 1]]] * 5}, "memberships must be a list of 1 to 4 memberships"),
    ({"memberships": {"w0": 1}}, "memberships must be a list"),
    ({"memberships": ["w0"]}, "each membership must be a list of [id, weight] pairs"),
    ({"memberships": [[["w0", 1, 2]]]}, "each membership must be a list of [id, weight] pairs"),
    ({"memberships": [[["w0", 1], ["w0", 2]]]}, "a membership names a worker twice"),
    ({"memberships": [[["../w0", 1]]]}, "a worker id must be 1-128 characters"),
    ({"memberships": [[["w0", 0]]]}, "a worker's weight must be an integer from 1 to 100"),
    ({"memberships": [[["w0", 1.5]]]}, "a worker's weight must be an integer"),
    ({"memberships": [[[f"w{i}", 1] for i in range(MAX_ENTRIES // 2 + 1)]] * 2},
     f"memberships must name at most {MAX_ENTRIES} workers in all"),
])
def test_a_malformed_report_is_refused_saying_what_is_wrong(changes, reason):
    with pytest.raises(InvalidRegistration) as refused:
        heartbeat(GOOD | changes)
    assert str(refused.value).startswith(f"ring report: {reason}")


@pytest.mark.parametrize("report", ["m1", 3, [], [GOOD]])
def test_a_report_that_is_not_a_map_is_refused(report):
    with pytest.raises(InvalidRegistration, match="^ring report: want a map$"):
        heartbeat(report)
