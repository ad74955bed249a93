"""What the master accepts as a registration: ids, URLs, numbers, states; no takeover without the secret."""

from __future__ import annotations

import json

import msgpack
import pytest

from master.registration import InvalidRegistration, Takeover, check_takeover, parse_registration, parse_worker
from p2pcache.members import MAX_WEIGHT, check_url
from p2pcache.ring import DRAINING, WorkerInfo

GOOD = {"id": "p2pcache-worker-0", "url": "http://p2pcache-worker-0.h.ml.svc.cluster.local:8080",
        "capacity": 20 << 30, "weight": 1, "state": "up"}
CHUNK = 8 << 20


def register(**changes) -> WorkerInfo:
    return parse_worker(msgpack.packb(GOOD | changes), "application/msgpack", CHUNK)


def test_a_good_registration_parses_in_msgpack_and_json():
    assert register() == WorkerInfo(**GOOD)
    assert parse_worker(json.dumps(GOOD).encode(), "application/json", CHUNK) == WorkerInfo(**GOOD)
    assert register(state=DRAINING).state == DRAINING
    assert register(future_field=1) == WorkerInfo(**GOOD)  # unknown fields: ignored


@pytest.mark.parametrize("worker_id", ["a", "w0", "host.example-1_x", "A" * 128])
def test_ids_that_are_accepted(worker_id):
    assert register(id=worker_id).id == worker_id


@pytest.mark.parametrize("worker_id", ["", "A" * 129, "a/b", "a b", "é", "a\nb", "../x", 7, None])
def test_ids_that_are_refused(worker_id):
    with pytest.raises(InvalidRegistration, match="id"):
        register(id=worker_id)


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:7071", "https://w.example:443", "http://[::1]:7071", "http://localhost",
    "http://a-b.c.svc.cluster.local:8080",
])
def test_urls_that_are_accepted(url):
    check_url(url)


@pytest.mark.parametrize("url", [
    "ftp://h:1", "h:1", "http://", "http://h:0", "http://h:65536", "http://h:x", "http://u@h:1",
    "http://h:1/", "http://h:1/path", "http://h:1?q", "http://h:1#f", "http://h:1/\r\nX: y",
    "http://h h:1", "http://" + "a" * 600, "http://hé:1", None, 5,
])
def test_urls_that_are_refused(url):
    with pytest.raises(InvalidRegistration, match="url"):
        check_url(url)


@pytest.mark.parametrize(("field", "value"), [
    ("weight", 0), ("weight", MAX_WEIGHT + 1), ("weight", 10**9), ("weight", True), ("weight", 1.5),
    ("capacity", -1), ("capacity", 1 << 63), ("capacity", "20GiB"),
    ("state", "gone"), ("state", None),
])
def test_numbers_and_states_out_of_range_are_refused(field, value):
    with pytest.raises(InvalidRegistration, match=field):
        register(**{field: value})


def test_a_capacity_that_cannot_hold_two_chunks_is_refused():
    assert register(capacity=2 * CHUNK).capacity == 2 * CHUNK
    for capacity in (0, CHUNK, 2 * CHUNK - 1):
        with pytest.raises(InvalidRegistration, match=f"capacity must hold 2 chunks, {2 * CHUNK} bytes at the "
                                                      f"master's --chunk-size 8MiB, not {capacity}$"):
            register(capacity=capacity)


@pytest.mark.parametrize("body", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"id": "w"}),
                                  b"\x91" * 100_000])
def test_garbage_is_refused(body):
    with pytest.raises(InvalidRegistration):
        parse_worker(body, "application/msgpack", CHUNK)


def test_an_id_moves_to_another_url_only_with_the_secret():
    old, new = register(), register(url="http://10.0.0.9:8080")
    check_takeover(None, new, authenticated=False)  # a new id: anyone may register (open cluster)
    check_takeover(old, register(weight=2), authenticated=False)  # same URL: a heartbeat
    check_takeover(old, new, authenticated=True)  # a restarted pod with a new address
    with pytest.raises(Takeover, match="needs the cluster secret"):
        check_takeover(old, new, authenticated=False)


def test_a_registration_names_the_process_that_sent_it_or_not():
    parse = lambda **changes: parse_registration(msgpack.packb(GOOD | changes), "application/msgpack", CHUNK)  # noqa: E731
    assert parse(instance="0f3a9c")[:2] == (WorkerInfo(**GOOD), "0f3a9c")
    assert parse()[:2] == (WorkerInfo(**GOOD), None)  # a worker from before instances
    for instance in ("", "a" * 65, "a b", 7, ["x"]):
        with pytest.raises(InvalidRegistration, match="instance"):
            parse(instance=instance)


def test_a_registration_says_which_unpins_it_has_had_or_not():
    parse = lambda **changes: parse_registration(msgpack.packb(GOOD | changes), "application/msgpack", CHUNK)[2]  # noqa: E731
    assert parse() is None  # a worker from before unpins were sent: it gets none
    assert parse(unpins=[]) == [] and parse(unpins=["m1", 3]) == ["m1", 3]
    for seen in ("m1", ["m1"], ["m1", -1], [3, "m1"], ["m1", True], ["m1", 1.5]):
        with pytest.raises(InvalidRegistration, match="unpins"):
            parse(unpins=seen)
