"""Turns: at most `limit` answers send at once, the next wait in order (503 SlowDown after
`wait`), and an answer whose reader takes nothing for `stall` seconds is cut."""

from __future__ import annotations

import asyncio

import pytest

from p2pcache.errors import Busy
from worker.turns import Turns


async def settle() -> None:
    """Let the tasks woken so far run (a handed turn reaches its waiter through a few wakeups)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class Line:
    """A connection: `paused` while what was written waits for its reader; `abort` counted."""

    def __init__(self, paused: bool = False, on_abort=lambda: None) -> None:
        self.paused, self.on_abort = paused, on_abort

    def abort(self) -> None:
        self.on_abort()


async def test_past_the_limit_readers_wait_in_order_of_arrival():
    turns = Turns(2, wait=30, stall=0)
    a, b = turns.now(Line()), await turns.take(Line())
    assert a is not None and b is not None and turns.now(Line()) is None
    third = asyncio.ensure_future(turns.take(Line()))
    fourth = asyncio.ensure_future(turns.take(Line()))
    await settle()
    assert turns.waiting == 2 and not third.done()
    turns.give_back(a)
    await settle()
    assert third.done() and not fourth.done() and len(turns) == 2
    assert turns.now(Line()) is None  # a newcomer does not pass the one waiting
    turns.give_back(b)
    turns.give_back(b)  # twice: no second turn handed out
    await settle()
    assert fourth.done() and len(turns) == 2 and turns.waiting == 0


async def test_a_reader_that_waits_too_long_gets_slow_down_and_leaves_the_queue():
    turns = Turns(1, wait=0.05, stall=0)
    held = turns.now(Line())
    with pytest.raises(Busy) as info:
        await turns.take(Line())
    assert (info.value.status, info.value.code, info.value.retry_after) == (503, "SlowDown", 1.0)
    assert turns.waiting == 0
    waiter = asyncio.ensure_future(turns.take(Line()))
    await settle()
    waiter.cancel()  # the reader hung up while waiting
    await settle()
    assert turns.waiting == 0
    turns.give_back(held)
    assert len(turns) == 0 and turns.now(Line()) is not None


async def test_a_stalled_answer_is_cut_and_its_turn_handed_on():
    clock = Clock()
    turns = Turns(1, wait=30, stall=60, clock=clock)
    stuck = turns.now(Line(paused=True))
    clock.now += 59
    stuck.moved()  # a piece went out: not stalled
    clock.now += 59
    assert turns.stalled() == []
    clock.now += 2
    assert turns.stalled() == [stuck]
    await turns.close()


async def test_an_answer_waiting_on_its_source_is_not_its_readers_stall():
    clock = Clock()
    turns = Turns(1, wait=30, stall=60, clock=clock)
    line = Line(paused=False)  # its reader took what was written: it waits on a peer, a fill...
    waiting = turns.now(line)
    clock.now += 100
    assert turns.stalled() == []
    line.paused = True  # a piece came, and waits for the reader: its time counts from the last look
    clock.now += 59
    assert turns.stalled() == []
    clock.now += 2
    assert turns.stalled() == [waiting]
    await turns.close()


async def test_the_watch_cuts_a_stalled_answer_and_the_next_reader_gets_its_turn():
    turns = Turns(1, wait=30, stall=0.2)
    cut = asyncio.get_running_loop().create_future()
    stuck = turns.now(Line(paused=True, on_abort=lambda: cut.set_result(True)))
    nxt = asyncio.ensure_future(turns.take(Line()))
    assert await asyncio.wait_for(cut, 5)
    assert (await asyncio.wait_for(nxt, 5)) is not stuck and len(turns) == 1
    turns.give_back(stuck)  # the cut answer ends: nothing more to give
    assert len(turns) == 1
    await turns.close()
