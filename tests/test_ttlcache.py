"""The TTL cache behind object identities and listings, on a fake clock."""

from __future__ import annotations

import asyncio

from worker.ttlcache import TTLCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


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
    assert await cache.get("k", fetch) == 3 and len(calls) == 3
    await cache.close()


async def test_the_oldest_entries_go_past_the_bound():
    cache = TTLCache(ttl=60, clock=Clock(), max_entries=2)
    for key in "abc":
        await cache.get(key, lambda key=key: asyncio.sleep(0, key))
    assert list(cache._entries) == ["b", "c"]
