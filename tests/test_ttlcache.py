"""The TTL cache behind object identities and listings, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from conftest import until, wait_for
from worker.ttlcache import TTLCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def returning(value):
    """A fetch that returns `value` at once."""
    return value


async def test_one_fetch_per_key_per_ttl_shared_by_concurrent_callers():
    clock, calls = Clock(), []

    async def fetch():
        calls.append(1)
        await asyncio.sleep(0)
        return len(calls)

    cache = TTLCache(ttl=5, clock=clock)
    assert await asyncio.gather(*(cache.get("k", fetch) for _ in range(10))) == [1] * 10
    clock.now = 4.9
    assert await cache.get("k", fetch) == 1
    clock.now = 5.0  # expired
    assert await cache.get("k", fetch) == 2
    cache.invalidate("k")
    assert cache.peek("k") == 2  # expired, still there to compare with
    assert await cache.get("k", fetch) == 3 and len(calls) == 3
    await cache.close()


async def test_the_oldest_entries_go_past_the_bound():
    cache = TTLCache(ttl=60, clock=Clock(), max_entries=2)
    for key in "abc":
        await cache.get(key, lambda key=key: returning(key))
    assert list(cache._entries) == ["b", "c"]


class Gated:
    """A fetch that waits for its gate; counts its calls and returns the call number."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.calls, self.gates, self.clock = 0, [], clock

    async def __call__(self) -> int:
        self.calls += 1
        n, gate = self.calls, asyncio.Event()
        self.gates.append(gate)
        if self.clock is not None:
            self.clock.now += 1  # time passes while S3 answers
        await gate.wait()
        return n


async def test_ttl_0_never_answers_from_a_fetch_started_before_the_caller_and_coalesces_the_rest():
    clock = Clock()
    fetch, cache = Gated(clock), TTLCache(ttl=0, clock=clock)
    first = asyncio.ensure_future(cache.get("k", fetch))
    await until(lambda: fetch.calls == 1)
    later = [asyncio.ensure_future(cache.get("k", fetch)) for _ in range(5)]  # arrive during fetch 1
    await asyncio.sleep(0)
    assert fetch.calls == 1  # nobody started a second fetch alongside the first
    clock.now += 1
    fetch.gates[0].set()
    assert await first == 1
    await until(lambda: fetch.calls == 2)
    fetch.gates[1].set()
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == [2] * 5  # one fetch for all who came during the first
    assert fetch.calls == 2
    third = asyncio.ensure_future(cache.get("k", fetch))  # nothing is reused with a TTL of 0
    await until(lambda: fetch.calls == 3)
    fetch.gates[2].set()
    assert await asyncio.wait_for(third, 5) == 3
    await cache.close()


async def test_max_age_0_skips_a_fresh_entry_and_a_flight_older_than_the_caller():
    clock = Clock()
    fetch, cache = Gated(clock), TTLCache(ttl=60, clock=clock)
    first = asyncio.ensure_future(cache.get("k", fetch))
    await until(lambda: fetch.calls == 1)
    fresh = asyncio.ensure_future(cache.get("k", fetch, max_age=0))  # no-cache: not this flight
    joined = asyncio.ensure_future(cache.get("k", fetch))  # the TTL allows it
    fetch.gates[0].set()
    assert await first == await joined == 1
    await until(lambda: fetch.calls == 2)
    fetch.gates[1].set()
    assert await asyncio.wait_for(fresh, 5) == 2
    assert await cache.get("k", fetch) == 2  # the newest answer is the one kept
    assert await cache.get("k", fetch, max_age=5) == 2  # it is 1 s old
    await cache.close()


async def test_an_invalidated_flight_is_not_stored_and_a_failed_one_is_not_kept():
    fetch, cache = Gated(), TTLCache(ttl=60, clock=Clock())
    first = asyncio.ensure_future(cache.get("k", fetch))
    await until(lambda: fetch.calls == 1)
    cache.invalidate("k")
    fetch.gates[0].set()
    assert await first == 1
    assert cache.peek("k") is None

    async def fail():
        raise ValueError("origin down")

    with pytest.raises(ValueError):
        await cache.get("x", fail)
    assert cache.peek("x") is None and await cache.get("x", lambda: returning("ok")) == "ok"
    await cache.close()


async def test_values_are_bounded_in_bytes_and_one_heavier_than_the_bound_is_not_kept():
    cache = TTLCache(ttl=60, clock=Clock(), max_bytes=10, size=len)
    for key, value in (("a", "aaaa"), ("b", "bbbb"), ("c", "cc")):
        await cache.get(key, lambda value=value: returning(value))
    assert cache.bytes == 10 and list(cache._entries) == ["a", "b", "c"]
    await cache.get("d", lambda: returning("ddd"))  # the first stored goes
    assert cache.bytes == 9 and list(cache._entries) == ["b", "c", "d"]
    assert await cache.get("big", lambda: returning("x" * 11)) == "x" * 11
    assert cache.peek("big") is None and cache.bytes == 9  # answered, not kept
    assert await cache.get("c", lambda: returning("c" * 11), max_age=0) == "c" * 11
    assert cache.peek("c") is None and cache.bytes == 7  # nor the older value it supersedes: never back in time
    await cache.get("b", lambda: returning("b"), max_age=0)
    assert cache.peek("b") == "b" and cache.bytes == 4  # a new value replaces the old one's bytes
    await cache.close()


async def test_drop_expired_drops_an_entry_when_it_expires():
    clock = Clock()
    cache = TTLCache(ttl=5, clock=clock, size=len, drop_expired=True)
    await cache.get("a", lambda: returning("aaa"))
    clock.now = 3
    await cache.get("b", lambda: returning("bb"))
    clock.now = 5  # "a" expired: dropped when the next value is stored, not only hidden
    await cache.get("c", lambda: returning("c"))
    assert cache.peek("a") is None and cache.bytes == 3
    cache.invalidate("b")
    assert cache.peek("b") is None and cache.bytes == 1
    await cache.close()
    # On the loop's clock, with nothing else happening: dropped by a timer.
    cache = TTLCache(ttl=0.05, size=len, drop_expired=True)
    await cache.get("a", lambda: returning("aaa"))
    assert cache.bytes == 3
    await wait_for(lambda: cache.bytes == 0 and cache.peek("a") is None, what="the entry to expire")
    await cache.close()
