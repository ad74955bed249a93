"""Singleflight: one call per key, owned by the group, not by any one caller."""

from __future__ import annotations

import asyncio

import pytest

from p2pcache.singleflight import SingleFlight


async def test_concurrent_callers_share_one_call_and_its_result():
    group, calls, gate = SingleFlight(), [], asyncio.Event()

    async def work():
        calls.append(1)
        await gate.wait()
        return "value"

    waiters = [asyncio.create_task(group.do("k", work)) for _ in range(20)]
    await asyncio.sleep(0)
    assert "k" in group and len(group) == 1
    gate.set()
    assert await asyncio.gather(*waiters) == ["value"] * 20
    assert calls == [1] and len(group) == 0


async def test_errors_reach_every_waiter_and_the_next_call_retries():
    group, calls = SingleFlight(), []

    async def fail():
        calls.append(1)
        await asyncio.sleep(0)
        raise ValueError("boom")

    results = await asyncio.gather(*(group.do("k", fail) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results) and len(calls) == 1
    with pytest.raises(ValueError):
        await group.do("k", fail)
    assert len(calls) == 2


async def test_a_cancelled_caller_does_not_cancel_the_call():
    group, gate, done = SingleFlight(), asyncio.Event(), []

    async def work():
        await gate.wait()
        done.append(1)
        return 42

    first = asyncio.create_task(group.do("k", work))
    second = asyncio.create_task(group.do("k", work))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == 42 and done == [1]
    assert first.cancelled()


async def test_close_cancels_what_is_still_running():
    group = SingleFlight()
    waiter = asyncio.create_task(group.do("k", lambda: asyncio.sleep(3600)))
    await asyncio.sleep(0)
    await group.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_the_call_can_see_whether_anyone_still_waits_for_it():
    group, gate, seen = SingleFlight(), asyncio.Event(), []

    async def work():
        await gate.wait()
        seen.append(group.waiting("k"))

    waiters = [asyncio.create_task(group.do("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    assert group.waiting("k") == 3
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    gate.set()
    await asyncio.sleep(0)
    assert seen == [0] and group.waiting("k") == 0
