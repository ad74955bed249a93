"""Scenario 3: loading a model cold through the cluster, then warm, vs the best direct parallel read from S3."""

from __future__ import annotations

import importlib.util
import statistics
from types import SimpleNamespace

from p2pcache.s3local import EmbeddedS3

from ..datasets import model_files, seed
from ..harness import cluster, s3_client
from ..plans import tile
from ..readers import run_reader
from ..targets import check

__all__ = ["run", "table", "routing"]

TITLE = "model cold start: through the cluster (cold, warm) vs direct parallel S3"


def routing(requested: str) -> str:
    """`auto`: the loader client's own routing once p2pcache has one, else ranges spread over all workers."""
    if requested != "auto":
        return requested
    return "client" if importlib.util.find_spec("p2pcache.client") else "spread"


def run(p: SimpleNamespace) -> dict:
    """Each repeat: a direct read from S3, then a fresh (cold) cluster on the same S3 read twice.

    The direct reader is boto3 with `direct_concurrency` threads, each doing ranged GETs of
    `part_size`; the cluster reader does the same number of concurrent ranged GETs over HTTP.
    """
    files = model_files("models", "llama-like", p.model_size, p.shard_size)
    total = sum(f.size for f in files)
    parts = tile(files, p.part_size)
    route = routing(p.routing)
    runs = []
    with EmbeddedS3(throttle=p.s3_throttle, fast_ranges=True) as s3:
        seed(s3_client(s3.url), files)
        for _ in range(p.repeats):
            direct = run_reader({"mode": "s3", "endpoint": s3.url, "files": files, "parts": parts,
                                 "concurrency": p.direct_concurrency, "timeout": p.timeout})
            with cluster(p.cold_workers, chunk_size=str(p.chunk_size), s3=s3) as c:
                plan = {"mode": "cluster", "urls": c.workers, "routing": route, "master": c.master,
                        "files": files, "parts": parts, "concurrency": p.cold_concurrency, "timeout": p.timeout}
                before = s3.get_bytes
                cold = run_reader(plan)
                cold_s3 = s3.get_bytes - before
                warm = run_reader(plan)
                warm_s3 = s3.get_bytes - before - cold_s3
            runs.append({"direct_s": direct["seconds"], "cold_s": cold["seconds"], "warm_s": warm["seconds"],
                         "cold_s3_bytes": cold_s3, "warm_s3_bytes": warm_s3})
    m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    m |= {"total_bytes": total, "direct_bytes_s": total / m["direct_s"], "cold_bytes_s": total / m["cold_s"],
          "warm_bytes_s": total / m["warm_s"], "cold_vs_direct": m["direct_s"] / m["cold_s"],
          "warm_vs_direct": m["direct_s"] / m["warm_s"]}
    throttled = p.s3_throttle > 0
    checks = [
        check("cold read through the cluster vs direct S3 (speed ratio)", m["cold_vs_direct"], ">=", 1.0, "x"),
        check("warm read through the cluster vs direct S3 (speedup)", m["warm_vs_direct"], ">=", 10.0, "x",
              applies=throttled,
              note=(f"S3 throttled to {p.s3_throttle / 1e6:g} MB/s; the target is stated for 100 MB/s"
                    if throttled else "needs --s3-throttle 100MB")),
    ]
    params = {"workers": p.cold_workers, "model_size": total, "shard_size": p.shard_size, "files": len(files),
              "chunk_size": p.chunk_size, "part_size": p.part_size, "cluster_concurrency": p.cold_concurrency,
              "direct_concurrency": p.direct_concurrency, "s3_throttle": p.s3_throttle, "routing": route,
              "repeats": p.repeats}
    return {"title": TITLE, "params": params, "metrics": m, "checks": checks, "runs": runs}


def table(result: dict) -> str:
    p, m = result["params"], result["metrics"]
    throttle = f"{p['s3_throttle'] / 1e6:g} MB/s" if p["s3_throttle"] else "unthrottled"
    lines = [f"{TITLE}: {p['files']} files, {m['total_bytes'] / 2**30:.3g} GiB, S3 {throttle}, {p['workers']} workers, "
             f"{p['part_size']} B ranges, routing {p['routing']}, medians of {p['repeats']}",
             "| read | seconds | MB/s | vs direct S3 | bytes from S3 |", "| --- | ---: | ---: | ---: | ---: |",
             f"| direct S3, {p['direct_concurrency']} threads | {m['direct_s']:.2f} | {m['direct_bytes_s'] / 1e6:,.0f} "
             f"| 1.00x | {m['total_bytes']:,} |"]
    for name in ("cold", "warm"):
        seconds, rate, ratio = m[f"{name}_s"], m[f"{name}_bytes_s"] / 1e6, m[f"{name}_vs_direct"]
        lines.append(f"| {name}, cluster, {p['cluster_concurrency']} streams | {seconds:.2f} | {rate:,.0f} | "
                     f"{ratio:.2f}x | {m[f'{name}_s3_bytes']:,.0f} |")
    return "\n".join(lines)
