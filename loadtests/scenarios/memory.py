"""Scenario 5: a worker's peak resident memory while it serves many concurrent streams of large reads."""

from __future__ import annotations

import random
from types import SimpleNamespace

from ..datasets import dataset_files, seed
from ..harness import cluster, peak_rss, s3_client
from ..plans import random_reads, tile
from ..readers import run_reader
from ..targets import check

__all__ = ["run", "table"]

TITLE = "worker peak RSS under concurrent large reads"
MIB = 1 << 20


def run(p: SimpleNamespace) -> dict:
    """All streams go to worker 0, which fills its own chunks from S3 and streams the others'
    from its peers: first a cold pass over the whole dataset, then a warm pass of random reads.
    Peak RSS is the kernel's high-water mark (`VmHWM`), so no short peak is missed."""
    files = dataset_files("memory", "data", p.mem_objects, p.mem_object_size)
    rng = random.Random(5)
    passes = []
    with cluster(p.mem_workers, chunk_size=str(p.chunk_size)) as c:
        seed(s3_client(c.s3.url), files)
        pids = [proc.pid for proc in c.worker_procs]
        idle = [peak_rss(pid) for pid in pids]
        cold = tile(files, p.mem_read_size)
        rng.shuffle(cold)
        warm = random_reads(files, 4 * p.mem_streams, p.mem_read_size, rng)
        for name, parts in (("cold", cold), ("warm", warm)):
            read = run_reader({"mode": "cluster", "urls": c.workers[:1], "routing": "spread", "files": files,
                               "parts": parts, "concurrency": p.mem_streams, "timeout": p.timeout})
            passes.append({"pass": name, "reads": len(parts), "bytes": read["bytes"], "seconds": read["seconds"],
                           "peak_rss": [peak_rss(pid) for pid in pids]})
    peak = max(max(x["peak_rss"]) for x in passes)
    m = {"peak_rss": peak, "peak_rss_mib": peak / MIB, "idle_peak_rss_mib": max(idle) / MIB,
         "served_worker_peak_rss_mib": passes[-1]["peak_rss"][0] / MIB}
    checks = [check(f"worker peak RSS, {p.mem_streams} streams", peak / MIB, "<=", 150, " MiB")]
    params = {"workers": p.mem_workers, "streams": p.mem_streams, "read_size": p.mem_read_size,
              "objects": p.mem_objects, "object_size": p.mem_object_size, "chunk_size": p.chunk_size}
    return {"title": TITLE, "params": params, "metrics": m, "checks": checks, "passes": passes,
            "idle_peak_rss": idle}


def table(result: dict) -> str:
    p = result["params"]
    lines = [f"{TITLE}: {p['streams']} streams of {p['read_size'] / MIB:g} MiB reads to worker 1 of "
             f"{p['workers']}, {p['objects']} objects of {p['object_size'] / MIB:g} MiB",
             "| pass | reads | MB/s | peak RSS per worker, MiB |", "| --- | ---: | ---: | --- |",
             f"| idle | | | {' / '.join(f'{x / MIB:.0f}' for x in result['idle_peak_rss'])} |"]
    for x in result["passes"]:
        lines.append(f"| {x['pass']} | {x['reads']} | {x['bytes'] / x['seconds'] / 1e6:,.0f} | "
                     f"{' / '.join(f'{v / MIB:.0f}' for v in x['peak_rss'])} |")
    return "\n".join(lines)
