"""Warm range reads from one worker vs nginx serving the same bytes from a file.

    python -m loadtests.serve_bench [--size 256MiB] [--seconds 5] [--repeats 3]
        [--serve-processes 1,2] [--nginx-workers 2] [--connections 8,64] [--threads 2]

One worker per `--serve-processes` count (each its own cluster, all reading one S3) and nginx
serve the same object, warm; the same wrk (`--threads`, each `--connections`) reads the same
random aligned ranges. Runs are interleaved (nginx, then each worker, then again), so a noisy
neighbour hits every server alike; the table gives medians, the spread, and the ratios to nginx,
and what each request cost the server: utime + stime of its process tree (nginx's master and
workers; the worker's coordinator and serving processes) over the wrk run, per request wrk counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import boto3

from p2pcache.local import demo_bytes
from p2pcache.sizes import format_size, parse_size

from .flags import MAX_OBJECT, count, counts, output_file, size, sizes
from .harness import S3_ENV, RunFailed, cluster, nginx, nginx_file, require, run_main, tree_cpu_seconds, wrk

BUCKET, KEY = "bench", "model/weights.bin"


def main(argv: list[str] | None = None) -> dict:
    """The measurements as a dict (the harness's serving scenario reads them); RunFailed if nginx,
    the reference, failed requests: a ratio to it would mean nothing."""
    p = argparse.ArgumentParser(prog="python -m loadtests.serve_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=size(1, MAX_OBJECT), default="256MiB")
    p.add_argument("--ranges", type=sizes(1, MAX_OBJECT), default="4MiB,64KiB", help="range sizes, one run each")
    p.add_argument("--seconds", type=count(1), default=5, help="length of each wrk run")
    p.add_argument("--repeats", type=count(1), default=3)
    p.add_argument("--connections", type=counts(1), default="8", help="wrk connections, one run each (e.g. 8,64)")
    p.add_argument("--threads", type=count(1), default=2, help="wrk threads (one saturates before nginx)")
    p.add_argument("--serve-processes", type=counts(1, 256), default="1",
                   help="worker --serve-processes, one worker each (e.g. 1,2)")
    p.add_argument("--nginx-workers", type=_nginx_workers, default="1",
                   help="nginx worker_processes (a number or auto)")
    p.add_argument("--json", type=output_file, help="also write the results here")
    args = p.parse_args(argv)
    too_long = [r for r in args.ranges.split(",") if parse_size(r) > args.size]
    if too_long:  # wrk would ask for bytes past the end: nothing but errors to measure
        p.error(f"--ranges {','.join(too_long)} is larger than --size {format_size(args.size)}")
    if min(int(c) for c in args.connections.split(",")) < args.threads:  # wrk refuses to start
        p.error(f"--connections must each be at least --threads {args.threads}, not {args.connections}")
    require("nginx", "wrk")
    data = demo_bytes(args.size)
    procs = [int(n) for n in args.serve_processes.split(",")]
    results = {"size": args.size, "connections": args.connections, "threads": args.threads, "rows": [],
               "nginx_workers": args.nginx_workers, "serve_processes": procs, "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="p2pcache-serve-") as root, contextlib.ExitStack() as stack:
        first = stack.enter_context(cluster(1, worker_args=("--serve-processes", str(procs[0]))))
        clusters = [first] + [stack.enter_context(cluster(1, s3=first.s3, worker_args=("--serve-processes", str(n))))
                              for n in procs[1:]]
        nginx_file(Path(root), f"{BUCKET}/{KEY}", data)
        s3 = boto3.client("s3", endpoint_url=first.s3.url, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        servers = []
        for n, c in zip(procs, clusters):
            url = f"{c.workers[0]}/{BUCKET}/{KEY}"
            for _ in range(2):  # warm: every chunk on the worker's disk, then read from its files
                with urllib.request.urlopen(url) as resp:
                    assert resp.read() == data, "worker served different bytes"
            servers.append((f"worker x{n}", url, c.worker_procs[0].pid))
        with nginx(Path(root), args.nginx_workers) as (nginx_base, nginx_pid):
            servers.insert(0, ("nginx", f"{nginx_base}/{BUCKET}/{KEY}", nginx_pid))
            for conns in (int(c) for c in args.connections.split(",")):
                for range_size in (parse_size(r) for r in args.ranges.split(",")):
                    runs = {name: [] for name, *_ in servers}
                    for _ in range(args.repeats):
                        for name, url, pid in servers:
                            before = tree_cpu_seconds(pid)
                            r = wrk(url, args.size, range_size, args.seconds, conns, args.threads)
                            r["cpu_us"] = (tree_cpu_seconds(pid) - before) / max(r["requests"], 1) * 1e6
                            runs[name].append(r)
                    results["rows"].append(row(range_size, conns, runs))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def row(range_size: int, connections: int, runs: dict[str, list[dict]]) -> dict:
    """One row of the table: each server's medians (`_summary`) and its ratios to nginx's.

    RunFailed if any run of nginx, the reference, had errors: its req/s counted failures
    (56,415 of them for ranges past the end of the object), and a ratio to it means nothing.
    """
    failed = sum(r["errors"] + r["non2xx"] for r in runs["nginx"])
    if failed:
        asked = sum(r["requests"] for r in runs["nginx"])
        raise RunFailed(f"nginx, the reference, failed {failed:,} of {asked:,} requests "
                        f"({format_size(range_size)} ranges, c={connections}): no ratio to it is valid")
    servers = {name: _summary(r) for name, r in runs.items()}
    base = servers["nginx"]
    for r in servers.values():
        r["ratio"] = r["req_s"] / base["req_s"]
        r["p99_ratio"] = r["p99_ms"] / max(base["p99_ms"], 1e-3)
    return {"range": format_size(range_size), "connections": connections, "servers": servers}


def _nginx_workers(text: str) -> str:
    return text if text == "auto" else str(count(1)(text))


def _summary(runs: list[dict]) -> dict:
    """Medians of each number, and the spread (min-max) of req/s and p99."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out | {"runs": len(runs), "req_s_range": [min(r["req_s"] for r in runs), max(r["req_s"] for r in runs)],
                  "p99_range": [min(r["p99_ms"] for r in runs), max(r["p99_ms"] for r in runs)]}


def table(results: dict) -> str:
    runs = results["rows"][0]["servers"]["nginx"]["runs"]
    lines = [f"warm random range reads, wrk -t{results['threads']}, nginx worker_processes="
             f"{results['nginx_workers']}, worker --serve-processes {results['serve_processes']}, "
             f"{results['cpus']} CPUs, medians of {runs} interleaved runs (min-max)",
             "| range | c | server | MB/s | req/s (min-max) | p50 ms | p99 ms (min-max) | x nginx req/s | x nginx p99 "
             "| server CPU us/req | errors |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["rows"]:
        for name, r in row["servers"].items():
            lo, hi = r["req_s_range"]
            plo, phi = r["p99_range"]
            lines.append(f"| {row['range']} | {row['connections']} | {name} | {r['bytes_s'] / 1e6:,.0f} | "
                         f"{r['req_s']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} ({plo:.1f}-{phi:.1f}) | {r['ratio']:.2f}x | {r['p99_ratio']:.2f}x | "
                         f"{r['cpu_us']:,.0f} | {r['errors'] + r['non2xx']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.serve_bench", main))
