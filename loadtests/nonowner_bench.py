"""Reads through one worker of three, as an S3 SDK behind a Service does: most chunks are other workers'.

    python -m loadtests.nonowner_bench --size 512MiB --repeats 5 --serve-processes 1,2

For each `--serve-processes` value: a fresh 3-worker cluster (separate processes, loopback, the
embedded S3), one object read once through every worker (so every chunk is on its owner's disk),
then curl reads the whole object through worker 0 `--repeats` times. Reported: MB/s and the
CPU-seconds per GB of all three workers' process trees (coordinators and serving processes,
utime + stime from `/proc`), medians. About two thirds of the chunks are owned by the other two
workers: with serving processes, those come straight from their owners, not through worker 0's
coordinator.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from p2pcache.sizes import format_size

from .datasets import File, seed
from .flags import MAX_OBJECT, count, counts, size
from .harness import cluster, curl, require, run_main, s3_client, tree_cpu_seconds

__all__ = ["main"]


def _cpu(pids: list[int]) -> float:
    """CPU seconds of the workers' process trees (a worker's serving processes are its children)."""
    return sum(tree_cpu_seconds(pid) for pid in pids)


def run(size: int, processes: int, repeats: int) -> dict:
    with cluster(3, worker_args=("--serve-processes", str(processes))) as c:
        seed(s3_client(c.s3.url), [File("models", "model.safetensors", size)])
        for url in c.workers:
            curl(f"{url}/models/model.safetensors", size)
        pids = [p.pid for p in c.worker_procs]
        runs = []
        for _ in range(repeats):
            before = _cpu(pids)
            seconds = curl(f"{c.workers[0]}/models/model.safetensors", size)
            runs.append((size / seconds / 1e6, (_cpu(pids) - before) / (size / 1e9)))
    return {"processes": processes, "mb_s": statistics.median(r[0] for r in runs),
            "cpu_s_per_gb": statistics.median(r[1] for r in runs), "runs": runs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.nonowner_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size(1, MAX_OBJECT), default="512MiB")
    ap.add_argument("--repeats", type=count(1), default=5)
    ap.add_argument("--serve-processes", type=counts(1, 256), default="1,2")
    a = ap.parse_args(argv)
    require("curl")
    print(f"{format_size(a.size)} read through worker 0 of 3 with curl, medians of {a.repeats}")
    print("| --serve-processes | MB/s | workers' CPU-s per GB |\n| ---: | ---: | ---: |")
    for n in (int(x) for x in a.serve_processes.split(",")):
        r = run(a.size, n, a.repeats)
        print(f"| {n} | {r['mb_s']:,.0f} | {r['cpu_s_per_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.nonowner_bench", main))
