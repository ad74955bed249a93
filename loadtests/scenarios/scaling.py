"""Scenario 2: the scaling curve, whole-model reads routed to each chunk's owner on 1..N egress-capped workers."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

from p2pcache.s3local import EmbeddedS3

from ..datasets import File, model_files, seed
from ..harness import cluster, metric, s3_client
from ..placement import Owners
from ..plans import tile
from ..readers import run_reader, run_readers
from ..targets import check

__all__ = ["run", "table"]

TITLE = "scaling curve, whole-model reads routed to the owners, egress-capped workers"

def run(p: SimpleNamespace) -> dict:
    """For each cluster size: a fresh cluster on the seeded S3, the model warmed, then
    `scaling_loaders` loader processes at once, each reading the whole model with every chunk
    asked of its owner (as `p2pcache.Client` does), `scaling_concurrency` chunks at a time.

    The workers' egress caps set the ceiling, so the worker that owns the most chunks finishes
    last: efficiency = aggregate(N) / (N x aggregate(1)) is at most the mean share over the
    busiest worker's share, which each point also reports.
    """
    files = model_files("scaling", "model", p.scaling_objects * p.scaling_object_size, p.scaling_object_size)[2:]
    points = []
    with EmbeddedS3(fast_ranges=True) as s3:
        seed(s3_client(s3.url), files)
        for n in p.scaling_workers:
            points.append(_measure(n, s3, files, p))
    base = next((pt for pt in points if pt["workers"] == 1), points[0])
    single = base["bytes_s"] / base["workers"]
    for pt in points:
        pt["efficiency"] = pt["bytes_s"] / (pt["workers"] * single)
        pt["cap_utilisation"] = pt["bytes_s"] / (pt["workers"] * p.egress_limit)
    top = points[-1]
    checks = [check(f"scaling efficiency at {top['workers']} workers", top["efficiency"], ">=", 0.95,
                    note="" if top["workers"] == 8 else "the target is stated for 8 workers")]
    chunks = -(-p.scaling_object_size // p.scaling_chunk_size)
    params = {"workers": p.scaling_workers, "egress_limit": p.egress_limit, "objects": len(files),
              "object_size": p.scaling_object_size, "chunk_size": p.scaling_chunk_size, "chunks_per_object": chunks,
              "loaders": p.scaling_loaders, "concurrency": p.scaling_concurrency, "repeats": p.repeats,
              "routing": "owner"}
    metrics = {"single_worker_bytes_s": single, "efficiency_at_max": top["efficiency"],
               "aggregate_bytes_s_at_max": top["bytes_s"], "busiest_share_at_max": top["busiest_share"]}
    return {"title": TITLE, "params": params, "metrics": metrics, "checks": checks, "points": points}


def _measure(n: int, s3: EmbeddedS3, files: list[File], p: SimpleNamespace) -> dict:
    with cluster(n, chunk_size=str(p.scaling_chunk_size), worker_args=("--egress-limit", str(p.egress_limit)),
                 s3=s3) as c:
        _warm(c, files, p)
        owned = {url: sum(e[2] for e in extents)
                 for url, extents in Owners(c.master, c.workers[0], files).extents_by_owner(files).items()}
        runs = [_load(c, files, p) for _ in range(p.repeats)]
    busiest = max(owned.values()) / (sum(owned.values()) / n)
    per_worker = [statistics.median(col) for col in zip(*(r["per_worker_bytes"] for r in runs))]
    return {"workers": n, "bytes_s": statistics.median(r["bytes_s"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs), "runs": runs, "busiest_share": busiest,
            "placement_ceiling": 1 / busiest, "owned_bytes": sorted(owned.values(), reverse=True),
            "per_worker_bytes": per_worker}


def _load(c, files: list[File], p: SimpleNamespace) -> dict:
    """All loaders at once, from a common start time; aggregate = their bytes / (last end - first start).

    Loader k starts k/L of the way into the model and wraps around, so the loaders are at
    different chunks at any moment, as independent loaders are."""
    parts = tile(files, p.scaling_chunk_size)
    start_at = time.time() + p.scaling_setup
    plans = [{"mode": "cluster", "urls": c.workers, "routing": "owner", "master": c.master, "files": files,
              "parts": parts[k * len(parts) // p.scaling_loaders:] + parts[:k * len(parts) // p.scaling_loaders],
              "concurrency": p.scaling_concurrency, "timeout": p.timeout, "start_at": start_at}
             for k in range(p.scaling_loaders)]
    served0 = [metric(url, "p2pcache_bytes_served_total") for url in c.workers]
    results = run_readers(plans)
    served = [metric(url, "p2pcache_bytes_served_total") - b for url, b in zip(c.workers, served0)]
    late = max(r["started_at"] for r in results) - start_at
    if late > 0.5:
        raise RuntimeError(f"a loader started {late:.1f} s after the others: raise --scaling-setup")
    seconds = max(r["ended_at"] for r in results) - min(r["started_at"] for r in results)
    total = sum(r["bytes"] for r in results)
    return {"seconds": seconds, "bytes": total, "bytes_s": total / seconds, "per_worker_bytes": served}


def _warm(c, files, p: SimpleNamespace) -> None:
    """A 1-byte read of every chunk at its owner: the owner fills the whole chunk, and almost
    nothing goes through the egress cap. Checked: the workers then hold every byte."""
    plan = {"mode": "cluster", "urls": c.workers, "routing": "owner", "master": c.master, "files": files,
            "parts": [(i, start, 1) for i, start, _ in tile(files, p.scaling_chunk_size)], "concurrency": 16,
            "timeout": p.timeout}
    run_reader(plan)
    held = sum(metric(url, "p2pcache_store_bytes") for url in c.workers)
    want = sum(f.size for f in files)
    if not want <= held < want * 1.01:  # store bytes count each chunk's small trailer too
        raise RuntimeError(f"warm-up left {held:.0f} bytes for {want} bytes of data on the workers")


def table(result: dict) -> str:
    p = result["params"]
    lines = [f"{TITLE}: {p['objects']} objects of {p['chunks_per_object']} chunks of {p['chunk_size'] / 2**10:g} KiB, "
             f"{p['loaders']} loaders reading the whole model ({p['concurrency']} chunks at a time each), "
             f"--egress-limit {p['egress_limit'] / 1e6:g} MB/s per worker, medians of {p['repeats']}",
             "| workers | aggregate MB/s | per worker MB/s | efficiency | of the caps | busiest worker's share "
             "over the mean | placement ceiling | seconds |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for pt in result["points"]:
        lines.append(f"| {pt['workers']} | {pt['bytes_s'] / 1e6:,.1f} | {pt['bytes_s'] / pt['workers'] / 1e6:,.1f} | "
                     f"{pt['efficiency']:.3f} | {pt['cap_utilisation']:.0%} | {pt['busiest_share']:.3f} | "
                     f"{pt['placement_ceiling']:.3f} | {pt['seconds']:.2f} |")
    return "\n".join(lines)
