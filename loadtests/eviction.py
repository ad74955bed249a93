"""Eviction policies compared on synthetic traces of this field: hit ratios against Belady's optimum.

    python -m loadtests.eviction [--json FILE] [--seed 1] [--smoke]

A trace is a sequence of chunk reads (chunk, size, bytes asked), generated with a seed from a
`Workload`: small files every pod reads at its start (configs, tokenizers) with a Zipf
popularity; model shards read whole and in order by one to three loaders at once; one-off
scans of new models, each read once; several readers in flight, their reads interleaved. The
cache is replayed as the store runs it (worker/store.py): a read of a cached chunk is a hit
and touches it, a miss fills it (the read a fill was made for does not touch it), evicting
victims until it fits. Belady's MIN is the ceiling: on a miss, evict the chunks whose next
read is farthest while they are farther than the incoming one, else do not admit it. With
chunks of different sizes MIN is a heuristic, not the exact optimum (that is NP-hard), so a
policy can beat it by a hair on a trace; with equal sizes it is exact for the request ratio.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterator

from p2pcache.sizes import format_size
from worker.eviction import POLICIES

__all__ = ["Workload", "Read", "TRACES", "SMOKE", "trace", "replay", "belady", "compare", "table", "main"]

MIB, GIB = 1 << 20, 1 << 30
Read = tuple[int, int, int]  # chunk id, chunk size, bytes asked


@dataclass(frozen=True)
class Workload:
    name: str
    seed: int = 1
    chunk_size: int = 8 * MIB
    small_files: int = 3000
    small_median: int = 64 << 10  # lognormal sizes, sigma 2, up to 64 MiB
    pod_starts: int = 4000
    files_per_pod: int = 10
    zipf: float = 1.0
    hot_models: int = 2  # models read again and again, per wave
    model_size: int = 8 * GIB
    loads: int = 24  # loads of hot models, each by 1-3 loaders at once
    waves: int = 1  # the hot models change this many times over the trace
    scans: int = 6  # new models read once, each by one loader
    scan_size: int = 12 * GIB
    pieces: int = 1  # reads per chunk of a model (a loader asking for ranges smaller than a chunk)
    concurrency: int = 4


TRACES = [
    Workload("scan-heavy"),
    Workload("scan-heavy, ranged", pieces=4),
    Workload("no scans, steady", scans=0, hot_models=4),
    Workload("no scans, shifting", scans=0, hot_models=2, waves=4, loads=48),
]
SMOKE = dict(small_files=200, pod_starts=300, model_size=256 * MIB, scan_size=384 * MIB, loads=8)


def _chunks(size: int, chunk_size: int) -> list[int]:
    full, last = divmod(size, chunk_size)
    return [chunk_size] * full + ([last] if last else [])


def trace(w: Workload) -> list[Read]:
    """The reads of workload `w`, the same for the same workload (seeded)."""
    rng = random.Random(w.seed)
    next_id = 0

    def new_file(size: int) -> list[tuple[int, int]]:
        nonlocal next_id
        sizes = _chunks(size, w.chunk_size)
        next_id += len(sizes)
        return list(zip(range(next_id - len(sizes), next_id), sizes))

    small = [new_file(max(1, min(64 * MIB, int(rng.lognormvariate(math.log(w.small_median), 2)))))
             for _ in range(w.small_files)]
    cum = list(itertools.accumulate(1 / (rank + 1) ** w.zipf for rank in range(w.small_files)))

    events: list[list[list[Read]]] = []  # each event: the reads of each of its readers
    for wave in range(w.waves):
        models = [new_file(w.model_size) for _ in range(w.hot_models)]
        share = 1 / w.waves
        phase: list[list[list[Read]]] = []
        for _ in range(round(w.pod_starts * share)):
            files = rng.choices(small, cum_weights=cum, k=w.files_per_pod)
            phase.append([[(c, s, s) for f in files for c, s in f]])
        for _ in range(round(w.loads * share)):
            model = models[min(int(rng.paretovariate(1.2)) - 1, len(models) - 1)]
            reads = [(c, s, s // w.pieces) for c, s in model for _ in range(w.pieces)]
            phase.append([reads] * rng.randint(1, 3))
        for _ in range(round(w.scans * share)):
            reads = [(c, s, s // w.pieces) for c, s in new_file(w.scan_size) for _ in range(w.pieces)]
            phase.append([reads])
        rng.shuffle(phase)
        events += phase
    return list(_interleave(events, w.concurrency, rng))


def _interleave(events: list[list[list[Read]]], concurrency: int, rng: random.Random) -> Iterator[Read]:
    pending = iter(events)
    active: list[Iterator[Read]] = []
    while True:
        while len(active) < concurrency and (event := next(pending, None)) is not None:
            active += [iter(reads) for reads in event]
        if not active:
            return
        i = rng.randrange(len(active))
        read = next(active[i], None)
        if read is None:
            active[i] = active[-1]
            active.pop()
        else:
            yield read


def replay(policy_name: str, capacity: int, reads: list[Read]) -> tuple[int, int]:
    """(hits, bytes hit) of `reads` through a cache of `capacity` bytes under a policy."""
    policy = POLICIES[policy_name](capacity)
    never = (lambda name: False)
    hits = hit_bytes = 0
    for chunk, size, asked in reads:
        if chunk in policy:
            policy.touch(chunk)
            hits += 1
            hit_bytes += asked
            continue
        while policy.nbytes + size > capacity:
            if policy.victim(never) is None:
                raise AssertionError(f"{policy_name} found no victim in a full cache")
        policy.insert(chunk, size)
    return hits, hit_bytes


def belady(capacity: int, reads: list[Read]) -> tuple[int, int]:
    """(hits, bytes hit) under MIN with bypass (a heuristic ceiling with sizes: see the docstring)."""
    nxt = [math.inf] * len(reads)
    seen: dict[int, int] = {}
    for i in range(len(reads) - 1, -1, -1):
        nxt[i] = seen.get(reads[i][0], math.inf)
        seen[reads[i][0]] = i
    sizes = {chunk: size for chunk, size, _ in reads}
    cached: dict[int, float] = {}  # chunk -> its next read
    heap: list[tuple[float, int]] = []  # (-next read, chunk), stale entries skipped
    used = hits = hit_bytes = 0
    for i, (chunk, size, asked) in enumerate(reads):
        if chunk in cached:
            hits += 1
            hit_bytes += asked
            cached[chunk] = nxt[i]
            heapq.heappush(heap, (-nxt[i], chunk))
            continue
        while used + size > capacity and heap:
            far, victim = heap[0]
            if cached.get(victim) != -far:
                heapq.heappop(heap)
                continue
            if -far <= nxt[i]:
                break  # the incoming chunk is read later than any cached one: do not admit it
            heapq.heappop(heap)
            del cached[victim]
            used -= sizes[victim]
        if used + size <= capacity and nxt[i] != math.inf:
            cached[chunk] = nxt[i]
            heapq.heappush(heap, (-nxt[i], chunk))
            used += size
    return hits, hit_bytes


def compare(w: Workload, fractions=(0.1, 0.25, 0.5)) -> list[dict]:
    """One row per cache size: each policy's byte and request hit ratios, and Belady's."""
    reads = trace(w)
    footprint = sum({c: s for c, s, _ in reads}.values())
    asked = sum(r[2] for r in reads)
    rows = []
    for fraction in fractions:
        capacity = int(footprint * fraction)
        row = {"trace": w.name, "cache_fraction": fraction, "capacity": capacity, "footprint": footprint,
               "reads": len(reads), "bytes_asked": asked, "hit_ratio": {}, "byte_hit_ratio": {}}
        for name in [*POLICIES, "belady"]:
            started = time.perf_counter()
            hits, hit_bytes = belady(capacity, reads) if name == "belady" else replay(name, capacity, reads)
            row["hit_ratio"][name] = hits / len(reads)
            row["byte_hit_ratio"][name] = hit_bytes / asked
            row.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    names = [*POLICIES, "belady"]
    head = ["trace", "cache (of footprint)"] + [f"{n}: bytes / reads" for n in names]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: |" + " ---: |" * len(names)]
    for r in rows:
        cells = [r["trace"], f"{format_size(r['capacity'])} ({r['cache_fraction']:.0%} of {format_size(r['footprint'])})"]
        cells += [f"{r['byte_hit_ratio'][n]:.1%} / {r['hit_ratio'][n]:.1%}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.eviction", description=__doc__.split("\n")[0])
    p.add_argument("--json", help="also write the rows and the workloads to this file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny traces, a few seconds")
    args = p.parse_args(argv)
    workloads = [replace(w, seed=args.seed, **(SMOKE if args.smoke else {})) for w in TRACES]
    rows = []
    for w in workloads:
        rows += compare(w)
        print(f"{w.name}: {rows[-1]['reads']:,} reads, footprint {format_size(rows[-1]['footprint'])}, "
              f"{format_size(rows[-1]['bytes_asked'])} asked", file=sys.stderr)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workloads": [asdict(w) for w in workloads], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
