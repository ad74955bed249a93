"""A scale simulation of placement for 8 to 1,000 workers, and of the heartbeats one master answers.

    python -m loadtests.simulate [--workers 8,64,256,1000] [--json FILE] [--smoke]
    p2pcache bench --scenarios simulation                 # the same, as a scenario of the harness

No cluster: the owners are computed with `p2pcache.ring.Placement`, as the master, the workers
and the client compute them, for workers named as the chart names them (`p2pcache-worker-N`).
Per cluster size it measures the balance of a multi-shard model (the busiest worker's share over
the mean, per object and for the whole model), the chunks that change owner when one worker
joins or leaves (against the ideal), the cost of a lookup and of a ring build; then one real
master process answers heartbeats of `--heartbeat-workers` registered workers under wrk
(loadtests/heartbeats.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from p2pcache.objects import ChunkId
from p2pcache.placement import LOAD
from p2pcache.ring import Placement, RingSnapshot, WorkerInfo
from p2pcache.sizes import format_size, parse_size

from .bench import _HELP, _TYPES, FULL as BENCH_FULL, SMOKE as BENCH_SMOKE
from .flags import output_file
from .harness import run_main
from .targets import check, format_check

__all__ = ["TITLE", "Model", "FULL", "SMOKE", "cluster_ids", "balance", "movement", "costs", "run",
           "table", "main"]

TITLE = "scale simulation: placement balance, movement and cost for 8-1,000 workers; heartbeats of one master"

_KEYS = ("chunk_size", "sim_", "heartbeat_")  # its presets are the harness's (loadtests/bench.py)
FULL = {k: v for k, v in BENCH_FULL.items() if k.startswith(_KEYS)}
SMOKE = {k: v for k, v in BENCH_SMOKE.items() if k.startswith(_KEYS)}
HEARTBEAT_INTERVAL = 2.0  # the workers' default --heartbeat-interval, what the master must keep up with
LOOKUP_TARGET_US, BUILD_TARGET_MS, MOVE_TARGET = 20.0, 200.0, 1.5  # the targets at 1,000 workers


@dataclass(frozen=True)
class Model:
    """`shards` objects of `shard_size` bytes (safetensors shards), cut in chunks of `chunk_size`."""

    shards: int
    shard_size: int
    chunk_size: int

    @property
    def name(self) -> str:
        return f"{self.shards} x {format_size(self.shard_size)}"

    @property
    def chunks(self) -> int:
        return self.shards * math.ceil(self.shard_size / self.chunk_size)

    def objects(self, version: str) -> list[ChunkId]:
        """Chunk 0 of each shard; `version` (the ETag) makes a different object identity per trial."""
        n = self.shards
        return [ChunkId("models", f"model/model-{i + 1:05d}-of-{n:05d}.safetensors", f'"{version}"',
                        self.shard_size, self.chunk_size, 0) for i in range(n)]


def cluster_ids(ordinals) -> list[str]:
    return [f"p2pcache-worker-{i}" for i in ordinals]


def snapshot(ids: list[str], chunk_size: int) -> RingSnapshot:
    workers = tuple(WorkerInfo(wid, f"http://{wid}.p2pcache-workers:7071") for wid in sorted(ids))
    return RingSnapshot(master_id="simulation", epoch=1, chunk_size=chunk_size, workers=workers)


def owners(placement: Placement, obj: ChunkId) -> list[str]:
    """The primary owner of each chunk of `obj`."""
    return [placement.owners(_index(obj, i))[0].id for i in range(obj.count)]


def _index(obj: ChunkId, i: int) -> ChunkId:
    return ChunkId(obj.bucket, obj.key, obj.etag, obj.size, obj.chunk_size, i)


def balance(n: int, model: Model) -> dict:
    """The busiest worker's chunks over the mean: of the worst object, and of the whole model."""
    placement = Placement(snapshot(cluster_ids(range(n)), model.chunk_size))
    whole: dict[str, int] = dict.fromkeys(placement.workers, 0)
    worst = 0.0
    for obj in model.objects("v1"):
        counts = dict.fromkeys(placement.workers, 0)
        for wid in owners(placement, obj):
            counts[wid] += 1
            whole[wid] += 1
        worst = max(worst, max(counts.values()) / (obj.count / n))
    per_object = model.chunks / model.shards / n
    mean = model.chunks / n
    return {"object_max_over_mean": worst, "object_bound": math.ceil(LOAD * per_object) / per_object,
            "model_max_over_mean": max(whole.values()) / mean, "model_ideal": math.ceil(mean) / mean,
            "chunks_per_worker": mean}


def movement(n: int, model: Model, trials: int, rng: random.Random) -> dict:
    """Chunks whose owner changes when one worker joins, and when one leaves, over `trials` clusters.

    Trial 0 is the chart's cluster (`p2pcache-worker-0..N-1`, the next ordinal joins); the others
    draw N ordinals out of 4N and a joiner among the rest. The leaver is a random member; the
    object identities are new in each trial.
    """
    joins, leaves, cascades = [], [], []
    for t in range(trials):
        ordinals = list(range(n)) if t == 0 else rng.sample(range(4 * n), n)
        joiner = n if t == 0 else rng.choice(sorted(set(range(4 * n + 1)) - set(ordinals)))
        leaver = rng.choice(ordinals)
        before = _owner_list(ordinals, model, t)
        joined = _owner_list(ordinals + [joiner], model, t)
        left = _owner_list([o for o in ordinals if o != leaver], model, t)
        moved = sum(a != b for a, b in zip(before, joined))
        joins.append(moved / (len(before) / (n + 1)))
        # Between workers that stayed: the chunks the joiner did not take.
        cascades.append(sum(a != b and b != f"p2pcache-worker-{joiner}" for a, b in zip(before, joined))
                        / len(before))
        owned = sum(a == f"p2pcache-worker-{leaver}" for a in before)
        moved = sum(a != b for a, b in zip(before, left))
        leaves.append(moved / owned if owned else 1.0)
    return {"join_moved_over_ideal_median": statistics.median(joins), "join_moved_over_ideal_max": max(joins),
            "join_cascade_max": max(cascades),
            "leave_moved_over_owned_median": statistics.median(leaves), "leave_moved_over_owned_max": max(leaves)}


def _owner_list(ordinals: list[int], model: Model, trial: int) -> list[str]:
    placement = Placement(snapshot(cluster_ids(ordinals), model.chunk_size))
    return [wid for obj in model.objects(f"trial-{trial}") for wid in owners(placement, obj)]


def costs(n: int, model: Model, repeats: int) -> dict:
    """Medians of `repeats`: a ring build (`Placement(snapshot)`), an object's first lookup (which
    computes its owner table), and a cached lookup."""
    snap = snapshot(cluster_ids(range(n)), model.chunk_size)
    builds, firsts, cached = [], [], []
    for r in range(repeats):
        started = time.perf_counter()
        placement = Placement(snap)
        builds.append(time.perf_counter() - started)
        obj = model.objects(f"cost-{r}")[0]
        chunks = [_index(obj, i) for i in range(obj.count)]
        started = time.perf_counter()
        placement.owners(chunks[0])
        firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        for c in chunks:
            placement.owners(c)
        cached.append((time.perf_counter() - started) / len(chunks))
    first = statistics.median(firsts)
    return {"ring_build_ms": statistics.median(builds) * 1e3, "first_lookup_us": first * 1e6,
            "first_lookup_us_per_chunk": first * 1e6 / len(chunks), "cached_lookup_us": statistics.median(cached) * 1e6}


def params(p: SimpleNamespace) -> dict:
    """The simulation's parameters, from the harness's or this command's flags."""
    chunk = parse_size(str(p.chunk_size))
    shard = parse_size(str(p.sim_shard_size))
    return {"workers": [int(n) for n in str(p.sim_workers).split(",")],
            "models": [int(s) for s in str(p.sim_models).split(",")], "shard_size": shard, "chunk_size": chunk,
            "trials": p.sim_trials, "repeats": p.sim_repeats, "heartbeat_workers": p.heartbeat_workers,
            "heartbeat_seconds": p.heartbeat_seconds, "heartbeat_connections": p.heartbeat_connections}


def run(p: SimpleNamespace) -> dict:
    from .heartbeats import measure

    q = params(p)
    rng = random.Random(8)
    rows, cost_rows = [], []
    for n in q["workers"]:
        for shards in q["models"]:
            model = Model(shards, q["shard_size"], q["chunk_size"])
            row = {"workers": n, "model": model.name, "chunks": model.chunks}
            row |= balance(n, model) | movement(n, model, q["trials"], rng)
            rows.append(row)
        model = Model(1, q["shard_size"], q["chunk_size"])
        cost_rows.append({"workers": n, "chunks_per_object": model.chunks} | costs(n, model, q["repeats"]))
    hb = measure(q["heartbeat_workers"], q["heartbeat_seconds"], q["heartbeat_connections"])
    top = max(cost_rows, key=lambda c: c["workers"])
    return {"title": TITLE, "params": q, "placement": rows, "costs": cost_rows, "heartbeats": hb,
            "checks": _checks(rows, cost_rows, hb),
            "metrics": {"ring_build_ms_at_max": top["ring_build_ms"], "heartbeats_s": hb["heartbeats_s"],
                        "cached_lookup_us_at_max": top["cached_lookup_us"]}}


def _checks(rows: list[dict], cost_rows: list[dict], hb: dict) -> list[dict]:
    top = max(r["workers"] for r in rows)
    note = "" if top >= 1000 else "the targets are stated for 1,000 workers"
    cost = next(c for c in cost_rows if c["workers"] == top)
    return [
        check("busiest worker's share of any object over the bound ceil(1.05 x share), all sizes",
              max(r["object_max_over_mean"] / r["object_bound"] for r in rows), "<=", 1.0, "x"),
        check("chunks moved on a join over the ideal 1/(N+1), median of the trials, worst size",
              max(r["join_moved_over_ideal_median"] for r in rows), "<=", MOVE_TARGET, "x"),
        check("chunks moved on a join over the ideal 1/(N+1), worst trial, all sizes",
              max(r["join_moved_over_ideal_max"] for r in rows), "<=", MOVE_TARGET, "x"),
        check("chunks moved on a leave over what the leaver owned, worst trial, all sizes",
              max(r["leave_moved_over_owned_max"] for r in rows), "<=", MOVE_TARGET, "x",
              note="the issue: what it owned plus a bounded cascade, no number; 1.5x as for a join"),
        check(f"first lookup per chunk (owner table built) at {top} workers", cost["first_lookup_us_per_chunk"],
              "<=", LOOKUP_TARGET_US, " us", note=note),
        check(f"cached lookup at {top} workers", cost["cached_lookup_us"], "<=", LOOKUP_TARGET_US, " us", note=note),
        check(f"ring build at {top} workers", cost["ring_build_ms"], "<=", BUILD_TARGET_MS, " ms", note=note),
        check(f"heartbeats/s one master answers for {hb['workers']} workers over what they send "
              f"(one per {HEARTBEAT_INTERVAL:g} s)", hb["heartbeats_s"] / (hb["workers"] / HEARTBEAT_INTERVAL),
              ">=", 1.0, "x"),
    ]


def _placement_line(r: dict) -> str:
    return (f"| {r['workers']:,} | {r['model']} | {r['chunks']:,} | {r['chunks_per_worker']:,.1f} | "
            f"{r['object_max_over_mean']:.3f} ({r['object_bound']:.3f}) | "
            f"{r['model_max_over_mean']:.3f} ({r['model_ideal']:.3f}) | "
            f"{r['join_moved_over_ideal_median']:.2f} ({r['join_moved_over_ideal_max']:.2f}) | "
            f"{r['join_cascade_max']:.2%} | "
            f"{r['leave_moved_over_owned_median']:.2f} ({r['leave_moved_over_owned_max']:.2f}) |")


def _cost_line(c: dict) -> str:
    return (f"| {c['workers']:,} | {c['ring_build_ms']:,.1f} | {c['first_lookup_us']:,.0f} "
            f"({c['first_lookup_us_per_chunk']:.2f} per chunk) | {c['cached_lookup_us']:.2f} |")


def table(result: dict) -> str:
    q, hb = result["params"], result["heartbeats"]
    lines = [
        f"Placement: shards of {format_size(q['shard_size'])} in {format_size(q['chunk_size'])} chunks; "
        f"movement over {q['trials']} clusters, median (max)",
        "| workers | model | chunks | chunks per worker | busiest object: max/mean (bound) | "
        "whole model: max/mean (ideal) | join: moved/ideal | join: moved between others | "
        "leave: moved/owned |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_placement_line(r) for r in result["placement"]),
        "",
        f"Cost: medians of {q['repeats']}; an object of {result['costs'][0]['chunks_per_object']} chunks",
        "| workers | ring build ms | first lookup of an object us | cached lookup us |",
        "| ---: | ---: | ---: | ---: |",
        *(_cost_line(c) for c in result["costs"]),
        "",
        f"Heartbeats: one master process, {hb['workers']:,} registered workers, wrk {hb['connections']} "
        f"connections for {hb['seconds']:.1f} s",
        "| workers | heartbeats/s | master CPU | per CPU-second of the master | load generator CPU | p50 ms | "
        f"p99 ms | errors | needed at one per {HEARTBEAT_INTERVAL:g} s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {hb['workers']:,} | {hb['heartbeats_s']:,.0f} | {hb['master_cpu']:.0%} | "
        f"{hb['per_master_cpu_second']:,.0f} | {hb['generator_cpu']:.0%} | "
        f"{hb['p50_ms']:.2f} | {hb['p99_ms']:.2f} | {hb['errors']} | {hb['workers'] / HEARTBEAT_INTERVAL:,.0f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--json", type=output_file, help="write the results here")
    for key, default in FULL.items():
        name = key.replace("sim_", "")
        parser.add_argument("--" + name.replace("_", "-"), dest=key, default=None, type=_TYPES[key],
                            metavar=name.upper(), help=f"{_HELP[key]} (full {default}, smoke {SMOKE[key]})")
    args = parser.parse_args(argv)
    chosen = (SMOKE if args.smoke else FULL) | {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    return run_main("python -m loadtests.simulate", lambda: _simulate(chosen, args.json))


def _simulate(chosen: dict, json_file: str | None) -> int:
    result = run(SimpleNamespace(**chosen))
    print("\n" + table(result))
    print("\n".join(format_check(c) for c in result["checks"]))
    if json_file:
        Path(json_file).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
