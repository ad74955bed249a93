"""The circuit breaker as a state machine, on a hand-turned clock (no event loop)."""

from __future__ import annotations

import random

from p2pcache.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def failing(b: Breaker, n: int, cause: str = "S3 down") -> None:
    for _ in range(n):
        b.record(b.admit(), False, cause)


def test_it_opens_after_threshold_failures_in_a_row_and_a_success_resets_the_count():
    b = Breaker(threshold=3, clock=Clock())
    failing(b, 2)
    b.record(b.admit(), True)
    failing(b, 2)
    assert b.state == CLOSED
    failing(b, 1, "SlowDown")
    assert b.state == OPEN and b.cause == "SlowDown" and b.admit() is None


def test_while_open_nothing_is_admitted_until_the_cooldown_then_exactly_one_probe():
    clock = Clock()
    b = Breaker(threshold=1, cooldown=2.0, clock=clock)
    failing(b, 1)
    assert b.retry_after() == 2.0
    clock.now += 1.5
    assert b.admit() is None and b.retry_after() == 0.5
    clock.now += 0.5
    probe = b.admit()
    assert probe is not None and b.state == HALF_OPEN
    assert b.admit() is None and b.admit() is None  # one probe at a time
    b.record(probe, True)
    assert b.state == CLOSED and b.admit() is not None


def test_a_failed_probe_reopens_with_the_cooldown_doubled_up_to_the_maximum():
    clock = Clock()
    b = Breaker(threshold=1, cooldown=1.0, max_cooldown=3.0, clock=clock)
    failing(b, 1)
    waits = []
    for _ in range(4):
        waits.append(b.retry_after())
        clock.now += b.retry_after()
        b.record(b.admit(), False)
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.now += 3.0
    b.record(b.admit(), True)
    failing(b, 1)
    assert b.retry_after() == 1.0  # a success starts the cooldown over


def test_outcomes_of_requests_admitted_before_a_change_of_state_do_not_count():
    clock = Clock()
    b = Breaker(threshold=2, cooldown=1.0, clock=clock)
    slow = b.admit()
    failing(b, 2)
    b.record(slow, True)  # it started before the breaker opened: proves nothing now
    assert b.state == OPEN
    clock.now += 1.0
    probe = b.admit()
    b.record(slow, False)
    assert b.state == HALF_OPEN
    b.record(probe, True)
    assert b.state == CLOSED


def test_an_abandoned_probe_lets_the_next_request_probe():
    clock = Clock()
    b = Breaker(threshold=1, cooldown=1.0, clock=clock)
    failing(b, 1)
    clock.now += 1.0
    b.record(b.admit(), None)
    assert b.state == HALF_OPEN and b.admit() is not None


def test_a_threshold_of_zero_never_opens():
    b = Breaker(threshold=0, clock=Clock())
    failing(b, 1000)
    assert b.state == CLOSED and b.admit() is not None


def test_failures_of_one_kind_open_it_however_many_requests_of_another_kind_succeed():
    b = Breaker(threshold=3, clock=Clock())
    for _ in range(2):
        b.record(b.admit(), False, "GET stalled", kind="data")
        for _ in range(5):
            b.record(b.admit(), True, kind="meta")  # S3 answers every HEAD
    assert b.state == CLOSED
    b.record(b.admit(), False, "GET stalled", kind="data")
    assert b.state == OPEN and b.cause == "GET stalled"


def test_a_success_clears_the_failures_of_its_own_kind_and_failures_of_any_kinds_in_a_row_add_up():
    b = Breaker(threshold=4, clock=Clock())
    b.record(b.admit(), False, kind="data")
    b.record(b.admit(), False, kind="meta")
    b.record(b.admit(), False, kind="data")
    b.record(b.admit(), True, kind="data")  # the GETs work again: one HEAD failure is left
    b.record(b.admit(), False, kind="data")
    b.record(b.admit(), False, kind="data")
    assert b.state == CLOSED
    b.record(b.admit(), False, kind="meta")
    assert b.state == OPEN


def test_occasional_failures_in_a_healthy_mix_never_open_it():
    rnd = random.Random(1)
    b = Breaker(threshold=8, clock=Clock())
    for _ in range(20_000):  # a tenth of GETs and of HEADs fail, at random
        kind = rnd.choice(("data", "meta"))
        b.record(b.admit(), rnd.random() >= 0.1, "blip", kind=kind)
        assert b.state == CLOSED


def test_a_probe_of_a_kind_that_was_not_failing_does_not_close_it():
    clock = Clock()
    failing_gets = Breaker(threshold=2, cooldown=1.0, clock=clock)
    for _ in range(2):
        failing_gets.record(failing_gets.admit(), False, kind="data")
    clock.now += 1.0
    head = failing_gets.admit()
    assert head is not None and failing_gets.admit() is None  # one probe at a time
    failing_gets.record(head, True, kind="meta")
    assert failing_gets.state == HALF_OPEN  # a HEAD answered: GETs may still fail
    get = failing_gets.admit()
    assert get is not None  # the next request probes
    failing_gets.record(get, False, kind="data")
    assert failing_gets.state == OPEN and failing_gets.retry_after() == 2.0
    clock.now += 2.0
    failing_gets.record(failing_gets.admit(), True, kind="data")
    assert failing_gets.state == CLOSED
