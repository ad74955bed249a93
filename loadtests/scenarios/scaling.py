"""Scenario 2: the scaling curve, aggregate bandwidth of 1..N egress-capped workers on a warm dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

from p2pcache.s3local import EmbeddedS3

from ..datasets import File, dataset_files, seed
from ..harness import cluster, median_run, metric, s3_client, wrk_parallel
from ..placement import Owners
from ..plans import tile
from ..readers import run_reader
from ..targets import check

__all__ = ["run", "table"]

TITLE = "scaling curve, egress-capped workers, warm dataset"


def run(p: SimpleNamespace) -> dict:
    """For each cluster size: a fresh cluster on the seeded S3, the dataset warmed, then one wrk
    per worker in parallel.

    Each wrk reads only the chunks its worker owns (as a direct client does), so every byte
    leaves the cluster once and the workers' egress caps, not the peer hops, set the ceiling.
    """
    files = dataset_files("scaling", "data", p.scaling_objects, p.scaling_object_size)
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
    params = {"workers": p.scaling_workers, "egress_limit": p.egress_limit, "objects": p.scaling_objects,
              "object_size": p.scaling_object_size, "chunk_size": p.chunk_size, "range_size": p.scaling_range,
              "connections_per_worker": p.scaling_connections, "seconds": p.seconds, "repeats": p.repeats,
              "routing": "owner"}
    metrics = {"single_worker_bytes_s": single, "efficiency_at_max": top["efficiency"],
               "aggregate_bytes_s_at_max": top["bytes_s"]}
    return {"title": TITLE, "params": params, "metrics": metrics, "checks": checks, "points": points}


def _measure(n: int, s3: EmbeddedS3, files: list[File], p: SimpleNamespace) -> dict:
    with cluster(n, chunk_size=str(p.chunk_size), worker_args=("--egress-limit", str(p.egress_limit)), s3=s3) as c, \
            tempfile.TemporaryDirectory(prefix="p2pcache-scaling-") as tmp:
        _warm(c, files, p)
        jobs = []
        for k, (url, extents) in enumerate(Owners(c.master, c.workers[0], files).extents_by_owner(files).items()):
            if extents:
                path = Path(tmp, f"ranges-{k}.txt")
                path.write_text("".join(f"{e[0]} {e[1]} {e[2]}\n" for e in extents))
                jobs.append({"url": url, "range_size": p.scaling_range, "connections": p.scaling_connections,
                             "ranges_file": path})
        r = median_run(lambda: wrk_parallel(jobs, p.seconds), p.repeats)
    return {"workers": n, "owning_workers": len(jobs)} | r


def _warm(c, files, p: SimpleNamespace) -> None:
    """A 1-byte read of every chunk at its owner: the owner fills the whole chunk, and almost
    nothing goes through the egress cap. Checked: the workers then hold every byte."""
    plan = {"mode": "cluster", "urls": c.workers, "routing": "owner", "master": c.master, "files": files,
            "parts": [(i, start, 1) for i, start, _ in tile(files, p.chunk_size)], "concurrency": 16,
            "timeout": p.timeout}
    run_reader(plan)
    held = sum(metric(url, "p2pcache_store_bytes") for url in c.workers)
    want = sum(f.size for f in files)
    if not want <= held < want * 1.01:  # store bytes count each chunk's small trailer too
        raise RuntimeError(f"warm-up left {held:.0f} bytes for {want} bytes of data on the workers")


def table(result: dict) -> str:
    p = result["params"]
    lines = [f"{TITLE}: --egress-limit {p['egress_limit'] / 1e6:g} MB/s per worker, {p['range_size']} B ranges, "
             f"wrk c={p['connections_per_worker']} per worker, {p['seconds']} s, medians of {p['repeats']}",
             "| workers | aggregate MB/s | per worker MB/s | efficiency | of the caps | req/s | p99 ms | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for pt in result["points"]:
        lines.append(f"| {pt['workers']} | {pt['bytes_s'] / 1e6:,.1f} | {pt['bytes_s'] / pt['workers'] / 1e6:,.1f} | "
                     f"{pt['efficiency']:.3f} | {pt['cap_utilisation']:.0%} | {pt['req_s']:,.0f} | "
                     f"{pt['p99_ms']:.1f} | {pt['errors'] + pt['non2xx']:.0f} |")
    return "\n".join(lines)
