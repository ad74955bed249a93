"""Scenario 5: a worker's peak resident memory while it serves many concurrent streams of large reads."""

from __future__ import annotations

import random
from types import SimpleNamespace

from ..datasets import dataset_files, seed
from ..harness import cluster, peak_rss, process_tree, s3_client
from ..plans import random_reads, tile
from ..readers import run_reader
from ..targets import check

__all__ = ["run", "table"]

TITLE = "worker peak RSS under concurrent large reads"
MIB = 1 << 20


def run(p: SimpleNamespace) -> dict:
    """All streams go to worker 0, which fills its own chunks from S3 and streams the others'
    from its peers: first a cold pass over the whole dataset, then a warm pass of random reads.
    Once per serving-process count: with one, the worker's one process does everything; with
    more, its coordinator fills and copies while its serving processes answer the streams. Peak
    RSS is the kernel's high-water mark (`VmHWM`) of each process, so no short peak is missed."""
    files = dataset_files("memory", "data", p.mem_objects, p.mem_object_size)
    runs = [_run(p, files, n) for n in p.mem_serve_processes]
    peak = max(max(x["processes"]) for r in runs for x in r["passes"])
    idle = max(max(r["idle"]) for r in runs)
    m = {"peak_rss": peak, "peak_rss_mib": peak / MIB, "idle_peak_rss_mib": idle / MIB}
    checks = [check(f"peak RSS of any one worker process, {p.mem_streams} streams", peak / MIB, "<=", 150,
                    " MiB")]
    params = {"workers": p.mem_workers, "streams": p.mem_streams, "read_size": p.mem_read_size,
              "objects": p.mem_objects, "object_size": p.mem_object_size, "chunk_size": p.chunk_size,
              "serve_processes": p.mem_serve_processes}
    return {"title": TITLE, "params": params, "metrics": m, "checks": checks, "runs": runs}


def _run(p: SimpleNamespace, files: list, serve_processes: int) -> dict:
    """One cluster whose workers run `serve_processes` serving processes: the peak RSS of
    every process of worker 0 (its coordinator first) and of the other workers' main processes."""
    rng = random.Random(5)
    passes = []
    with cluster(p.mem_workers, chunk_size=str(p.chunk_size),
                 worker_args=("--serve-processes", str(serve_processes))) as c:
        seed(s3_client(c.s3.url), files)
        served = process_tree(c.worker_procs[0].pid)
        others = [proc.pid for proc in c.worker_procs[1:]]
        if len(served) != 1 + (serve_processes if serve_processes > 1 else 0):
            raise RuntimeError(f"worker 0 runs {len(served)} processes with --serve-processes {serve_processes}")
        idle = [peak_rss(pid) for pid in served]
        cold = tile(files, p.mem_read_size)
        rng.shuffle(cold)
        warm = random_reads(files, 4 * p.mem_streams, p.mem_read_size, rng)
        for name, parts in (("cold", cold), ("warm", warm)):
            read = run_reader({"mode": "cluster", "urls": c.workers[:1], "routing": "spread", "files": files,
                               "parts": parts, "concurrency": p.mem_streams, "timeout": p.timeout})
            passes.append({"pass": name, "reads": len(parts), "bytes": read["bytes"], "seconds": read["seconds"],
                           "processes": [peak_rss(pid) for pid in served],
                           "other_workers": [peak_rss(pid) for pid in others]})
    return {"serve_processes": serve_processes, "idle": idle, "passes": passes}


def table(result: dict) -> str:
    p = result["params"]
    lines = [f"{TITLE}: {p['streams']} streams of {p['read_size'] / MIB:g} MiB reads to worker 1 of "
             f"{p['workers']}, {p['objects']} objects of {p['object_size'] / MIB:g} MiB",
             "| serving processes | pass | reads | MB/s | peak RSS of worker 1's processes (coordinator first), "
             "MiB | other workers, MiB |", "| ---: | --- | ---: | ---: | --- | --- |"]
    for r in result["runs"]:
        lines.append(f"| {r['serve_processes']} | idle | | | {_mib(r['idle'])} | |")
        for x in r["passes"]:
            lines.append(f"| {r['serve_processes']} | {x['pass']} | {x['reads']} | "
                         f"{x['bytes'] / x['seconds'] / 1e6:,.0f} | {_mib(x['processes'])} | {_mib(x['other_workers'])} |")
    return "\n".join(lines)


def _mib(sizes: list[int]) -> str:
    return " / ".join(f"{x / MIB:.0f}" for x in sizes)
