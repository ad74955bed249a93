"""Eviction policies as pure objects: bookkeeping, skip, demote, bytes, scan resistance; the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from loadtests.eviction import Workload, belady, compare, replay, trace
from worker.eviction import LRU, POLICIES, S3FIFO, SLRU

NAMES = [f"c{i}" for i in range(12)]
never = (lambda name: False)

ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(NAMES), st.integers(1, 100)),
    st.tuples(st.just("restore"), st.sampled_from(NAMES), st.integers(1, 100)),
    st.tuples(st.just("touch"), st.sampled_from(NAMES)),
    st.tuples(st.just("promote"), st.sampled_from(NAMES)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES)),
    st.tuples(st.just("demote"), st.sampled_from(NAMES)),
    st.tuples(st.just("victim"), st.frozensets(st.sampled_from(NAMES))),
), max_size=120)


@settings(max_examples=150, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), capacity=st.integers(1, 1000), ops=ops)
def test_a_policy_tracks_exactly_what_is_cached_and_honours_skip_and_demote(policy, capacity, ops):
    p = POLICIES[policy](capacity)
    ref: dict[str, int] = {}
    for op, *args in ops:
        if op in ("insert", "restore"):
            getattr(p, op)(*args)
            ref[args[0]] = args[1]
        elif op in ("touch", "promote"):
            getattr(p, op)(*args)
        elif op == "remove":
            p.remove(*args)
            ref.pop(args[0], None)
        elif op == "demote":
            p.demote(*args)
            if args[0] in ref:  # the next victim, unless something refuses it
                assert p.victim(never) == args[0]
                del ref[args[0]]
        else:
            skipped = args[0]
            victim = p.victim(skipped.__contains__)
            if victim is None:
                assert set(ref) <= skipped  # None only if every cached entry is refused
            else:
                assert victim in ref and victim not in skipped
                del ref[victim]
        assert len(p) == len(ref) and p.nbytes == sum(ref.values())
        assert all(n in p for n in ref) and not any(n in p for n in NAMES if n not in ref)


reads = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 300)), max_size=300)


@settings(max_examples=100, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), capacity=st.integers(300, 3000), reads=reads,
       pinned=st.frozensets(st.integers(0, 40), max_size=3))
def test_a_simulated_cache_never_holds_more_bytes_than_its_capacity(policy, capacity, reads, pinned):
    p = POLICIES[policy](capacity)
    sizes: dict[int, int] = {}
    for chunk, size in reads:
        size = sizes.get(chunk, size)  # a chunk keeps its size
        if chunk in p:
            p.touch(chunk)
            continue
        while p.nbytes + size > capacity:
            victim = p.victim(pinned.__contains__)
            if victim is None:
                break
            assert victim not in pinned
            del sizes[victim]
        if p.nbytes + size <= capacity:
            p.insert(chunk, size)
            sizes[chunk] = size
        assert p.nbytes == sum(sizes.values()) <= capacity


@settings(max_examples=100, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), n=st.integers(1, 60),
       sizes=st.lists(st.integers(1, 50), min_size=60, max_size=60))
def test_with_no_second_reads_every_policy_evicts_oldest_first_like_lru(policy, n, sizes):
    p, lru = POLICIES[policy](500), LRU(500)
    for i in range(n):
        p.insert(i, sizes[i])
        lru.insert(i, sizes[i])
    assert [p.victim(never) for _ in range(n)] == [lru.victim(never) for _ in range(n)] == list(range(n))


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=200))
def test_lru_evicts_the_least_recently_used(ops):
    p, order = LRU(10 ** 6), []
    for read, chunk in ops:
        if chunk in order:
            order.remove(chunk)
            order.append(chunk)
            p.touch(chunk)
        elif read:
            order.append(chunk)
            p.insert(chunk, 1)
        elif order:
            assert p.victim(never) == order.pop(0)


def test_s3fifo_and_slru_keep_a_working_set_through_a_scan_larger_than_the_cache_and_lru_does_not():
    kept = {}
    for policy in (LRU, SLRU, S3FIFO):
        p = policy(100)
        for name in ("config", "tokenizer", "vocab"):
            p.insert(name, 2)
        for i in range(-5, 0):  # other reads, then a second pod reads the working set
            p.insert(i, 1)
        for name in ("config", "tokenizer", "vocab"):
            p.touch(name)
        for i in range(500):  # a one-off scan of 5x the cache
            while p.nbytes + 1 > 100:
                p.victim(never)
            p.insert(i, 1)
        kept[policy.__name__] = {"config", "tokenizer", "vocab"} <= {n for n in ("config", "tokenizer", "vocab") if n in p}
    assert kept == {"LRU": False, "SLRU": True, "S3FIFO": True}


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("restored", [False, True])
def test_a_preloaded_set_smaller_than_the_cache_survives_its_own_fills(policy, restored):
    """The cache is full of a working set read again (or found on disk at a restart); a preload
    of 60% of it fills one chunk after another: its later fills evict the working set, not its
    first chunks (S3-FIFO's small FIFO and SLRU's probation would)."""
    p = POLICIES[policy](100)
    for i in range(10):
        (p.restore if restored else p.insert)(f"hot{i}", 10)
    for _ in range(3):
        for i in range(10):
            p.touch(f"hot{i}")
    for i in range(6):
        while p.nbytes + 10 > 100:
            p.victim(never)
        p.insert(f"set{i}", 10)
        p.promote(f"set{i}")
    assert [f"set{i}" in p for i in range(6)] == [True] * 6
    assert sum(f"hot{i}" in p for i in range(10)) == 4


def test_s3fifo_does_not_count_touches_right_after_an_insert_as_a_second_use():
    p = S3FIFO(200)  # a small FIFO of 20 bytes, a window of 5
    p.insert("scan", 10)
    p.touch("scan")  # the same reader, another range of the chunk
    p.insert("other", 10)
    p.insert("config", 10)
    p.insert("later", 30)
    p.touch("config")  # 30 bytes later: a second use
    assert [p.victim(never) for _ in range(3)] == ["scan", "other", "later"]
    assert "config" in p._main


def test_s3fifo_readmits_a_chunk_the_ghost_remembers_and_bounds_the_ghost():
    p = S3FIFO(100)
    for i in range(1000):
        while p.nbytes + 1 > 100:
            p.victim(never)
        p.insert(i, 1)
        assert len(p._ghost) <= len(p) and p._ghost_bytes <= 90
    recent_ghost = next(reversed(p._ghost))
    p.victim(never)
    p.insert(recent_ghost, 1)
    assert recent_ghost in p._main


def test_the_simulator_is_reproducible_and_belady_is_the_ceiling():
    w = Workload("tiny", small_files=50, pod_starts=60, model_size=64 << 20, loads=4, scans=2,
                 scan_size=96 << 20)
    reads = trace(w)
    assert reads == trace(w) and reads != trace(Workload("tiny", seed=2, small_files=50, pod_starts=60,
                                                                  model_size=64 << 20, loads=4, scans=2,
                                                                  scan_size=96 << 20))
    rows = compare(w, fractions=(0.1, 0.5))
    for row in rows:
        for name in POLICIES:
            assert row["hit_ratio"][name] <= row["hit_ratio"]["belady"] + 0.01
    assert rows[0]["hit_ratio"]["lru"] < rows[1]["hit_ratio"]["lru"]  # a bigger cache hits more
    capacity = rows[0]["capacity"]
    assert replay("lru", capacity, reads) == replay("lru", capacity, reads)
    assert belady(10 ** 12, reads)[0] == len(reads) - len({c for c, _, _ in reads})  # only cold misses
