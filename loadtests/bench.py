"""The benchmark harness (`p2pcache bench`): every scenario on loopback, repeated, as a table, JSON and a PNG.

    p2pcache bench [--scenarios all] [--repeats 3] [--json FILE] [--plot FILE] [--smoke] [sizes...]
    python -m loadtests.bench ...                      # the same, from the checkout

Scenarios: serving (one worker vs nginx), scaling (whole-model reads on 1..8 egress-capped workers),
cold-start (a model through the cluster vs direct S3), amplification (S3 bytes per distinct byte),
memory (worker peak RSS under 64 streams), simulation (placement for 8..1,000 workers, computed;
heartbeats one master answers). Each result states the issue's target and whether it was met, PASS or MISS
with the margin; a MISS is a finding, not a failure. `--smoke` runs tiny sizes for a few seconds.
Sizes take `8MiB`, `1GiB`, `50MB`; unset flags take the preset (full or smoke).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from p2pcache.ring import MAX_CHUNK, MIN_CHUNK
from p2pcache.sizes import parse_size, show_size

from .flags import MAX_CLUSTER, MAX_DATASET, MAX_OBJECT, count, counts, output_file, size, sizes
from .harness import require, run_main
from .plot import plot_scaling
from .targets import format_check

__all__ = ["add_arguments", "main", "run", "SCENARIOS", "FULL", "SMOKE"]

# name -> module under loadtests/scenarios/, imported when run (`p2pcache` imports this module at start)
SCENARIOS = {"serving": "serving", "scaling": "scaling", "cold-start": "cold_start",
             "amplification": "amplification", "memory": "memory", "simulation": "simulation"}

FULL = dict(
    repeats=3, seconds=10, chunk_size="8MiB", timeout=1800,
    serving_size="256MiB", serving_ranges="4MiB,64KiB", serving_connections=8,
    # A model of 4 shards of 589 chunks, as 4 x 4.6 GiB in 8 MiB chunks, scaled down 32x in bytes by
    # 256 KiB chunks: placement sees the same chunks per object, and a whole read takes seconds. The
    # loaders and workers cost ~8 CPU-s per GB here: 8 x 25 MB/s keeps them under half the 2 cores.
    scaling_workers="1,2,4,8", egress_limit="25MB", scaling_objects=4, scaling_object_size="147.25MiB",
    scaling_chunk_size="256KiB", scaling_loaders=2, scaling_concurrency=32, scaling_setup=5,
    # Shards of 64 MiB, not the 2-5 GiB of real checkpoints: the embedded S3 (moto) answers a ranged
    # GET by reading the whole object into memory, so big objects make S3 slow and memory-hungry.
    cold_workers=4, model_size="4GiB", shard_size="2GiB", part_size="8MiB", cold_concurrency=32,
    direct_concurrency=32, s3_throttle="0", routing="auto",
    amp_workers=4, amp_objects=8, amp_object_size="64MiB", amp_readers=8, amp_concurrency=64,
    mem_workers=2, mem_objects=32, mem_object_size="64MiB", mem_read_size="32MiB", mem_streams=64,
    mem_serve_processes="1,2",
    sim_workers="8,64,256,1000", sim_models="4,30", sim_shard_size="4.6GiB", sim_trials=20, sim_repeats=15,
    heartbeat_workers=1000, heartbeat_seconds=10, heartbeat_connections=64,
)
SMOKE = FULL | dict(
    repeats=1, seconds=1, chunk_size="256KiB", timeout=60,
    serving_size="8MiB",
    scaling_workers="1,2", egress_limit="20MB", scaling_objects=4, scaling_object_size="1MiB",
    scaling_chunk_size="64KiB", scaling_loaders=2, scaling_concurrency=4, scaling_setup=4,
    cold_workers=2, model_size="3MiB", shard_size="1MiB", part_size="256KiB", cold_concurrency=8,
    direct_concurrency=8, s3_throttle="20MB",
    amp_workers=2, amp_objects=2, amp_object_size="1MiB", amp_readers=4, amp_concurrency=16,
    mem_objects=4, mem_object_size="2MiB", mem_read_size="128KiB",
    sim_workers="4,16", sim_models="2,6", sim_shard_size="4MiB", sim_trials=3, sim_repeats=3,
    heartbeat_workers=50, heartbeat_seconds=1, heartbeat_connections=8,
)
S3_MAX_OBJECT = 5 << 40  # the simulation computes placement for shards up to S3's largest object
# What each flag accepts: outside it a run fails late (an empty median, no cluster) or measures nothing.
_TYPES = {
    "repeats": count(1), "seconds": count(1), "chunk_size": size(MIN_CHUNK, MAX_CHUNK), "timeout": count(1),
    "serving_size": size(1, MAX_OBJECT), "serving_ranges": sizes(1, MAX_OBJECT), "serving_connections": count(1),
    "scaling_workers": counts(1, MAX_CLUSTER), "egress_limit": size(0), "scaling_objects": count(1),
    "scaling_object_size": size(1, MAX_OBJECT), "scaling_chunk_size": size(MIN_CHUNK, MAX_CHUNK),
    "scaling_loaders": count(1), "scaling_concurrency": count(1), "scaling_setup": count(0),
    "cold_workers": count(1, MAX_CLUSTER), "model_size": size(1, MAX_DATASET), "shard_size": size(1, MAX_OBJECT),
    "part_size": size(1, MAX_OBJECT), "cold_concurrency": count(1), "direct_concurrency": count(1),
    "s3_throttle": size(0), "routing": str,
    "amp_workers": count(1, MAX_CLUSTER), "amp_objects": count(1), "amp_object_size": size(1, MAX_OBJECT),
    "amp_readers": count(1), "amp_concurrency": count(1),
    "mem_workers": count(1, MAX_CLUSTER), "mem_objects": count(1), "mem_object_size": size(1, MAX_OBJECT),
    "mem_read_size": size(1, MAX_OBJECT), "mem_streams": count(1), "mem_serve_processes": counts(1, 256),
    "sim_workers": counts(2), "sim_models": counts(1), "sim_shard_size": size(1, S3_MAX_OBJECT),
    "sim_trials": count(1), "sim_repeats": count(1), "heartbeat_workers": count(1), "heartbeat_seconds": count(1),
    "heartbeat_connections": count(1),
}
ROUTINGS = ("auto", "spread", "owner", "client")
_SIZES = {"chunk_size", "serving_size", "egress_limit", "scaling_object_size", "scaling_chunk_size", "model_size",
          "shard_size", "part_size", "s3_throttle", "amp_object_size", "mem_object_size", "mem_read_size",
          "sim_shard_size"}
# which scenario a flag belongs to, by its first word or whole name (the others are common)
_GROUPS = {"serving": "serving", "scaling": "scaling", "egress_limit": "scaling", "cold": "cold-start",
           "model_size": "cold-start", "shard_size": "cold-start", "part_size": "cold-start",
           "direct_concurrency": "cold-start", "s3_throttle": "cold-start", "routing": "cold-start",
           "amp": "amplification", "mem": "memory", "sim": "simulation", "heartbeat": "simulation"}
_HELP = {
    "repeats": "runs of each measurement; medians are reported", "seconds": "length of each wrk run",
    "chunk_size": "the clusters' chunk size", "timeout": "seconds any one read pass may take",
    "serving_size": "object served by the worker and nginx", "serving_ranges": "comma-separated range sizes",
    "serving_connections": "wrk connections", "scaling_workers": "comma-separated cluster sizes",
    "egress_limit": "each worker's --egress-limit in the scaling curve (bytes/s)",
    "scaling_objects": "shards of the warm model", "scaling_object_size": "size of each",
    "scaling_chunk_size": "the scaling clusters' chunk size (each read is one chunk, from its owner)",
    "scaling_loaders": "loader processes, each reading the whole model at once",
    "scaling_concurrency": "chunks each loader reads at a time",
    "scaling_setup": "seconds the loaders get to start and compute the owners before they all begin",
    "cold_workers": "workers in the cold-start cluster", "model_size": "total size of the model's shards",
    "shard_size": "size of a full shard", "part_size": "range size of both loaders",
    "cold_concurrency": "concurrent ranges of the loader reading through the cluster",
    "direct_concurrency": "threads of the direct S3 reader", "s3_throttle": "cap on S3's GET bytes/s (0: none)",
    "routing": "cluster loader: auto, spread (over all workers), owner (ring-computed owners), client",
    "amp_workers": "workers", "amp_objects": "objects (new ones each repeat)", "amp_object_size": "size of each",
    "amp_readers": "readers covering the whole dataset each", "amp_concurrency": "concurrent ranges",
    "mem_workers": "workers", "mem_objects": "objects", "mem_object_size": "size of each",
    "mem_read_size": "size of each large read", "mem_streams": "concurrent streams, all on one worker",
    "mem_serve_processes": "comma-separated serving-process counts of the workers",
    "sim_workers": "comma-separated cluster sizes", "sim_models": "comma-separated shard counts of the models",
    "sim_shard_size": "size of each shard (cut at --chunk-size)", "sim_trials": "random clusters per join/leave",
    "sim_repeats": "timings of each lookup and ring build", "heartbeat_workers": "workers registered at the master",
    "heartbeat_seconds": "length of the wrk run", "heartbeat_connections": "wrk connections",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--scenarios", default="all", help=f"comma-separated, or all: {', '.join(SCENARIOS)}")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and 1 s runs (what the tests use)")
    p.add_argument("--json", type=output_file, help="write every result here")
    p.add_argument("--plot", type=output_file, help="write the scaling curve here (PNG)")
    groups: dict = {"": p}
    for key, default in FULL.items():
        name = _GROUPS.get(key.split("_")[0]) or _GROUPS.get(key, "")
        if name not in groups:
            groups[name] = p.add_argument_group(f"{name} scenario")
        group = groups[name]
        group.add_argument("--" + key.replace("_", "-"), type=_TYPES[key], default=None,
                           choices=ROUTINGS if key == "routing" else None,
                           help=f"{_HELP[key]} (full {default}, smoke {SMOKE[key]})")


def params(args: argparse.Namespace) -> SimpleNamespace:
    chosen = (SMOKE if args.smoke else FULL) | {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    for key in _SIZES:
        chosen[key] = parse_size(str(chosen[key]))
    for key in ("scaling_workers", "mem_serve_processes"):
        chosen[key] = [int(n) for n in str(chosen[key]).split(",")]
    return SimpleNamespace(**chosen)


def main(args: argparse.Namespace) -> int:
    """Every scenario asked for, in turn; SIGINT or SIGTERM stops them and everything they started."""
    return run_main("p2pcache bench", lambda: _run_scenarios(args))


def _run_scenarios(args: argparse.Namespace) -> int:
    names = list(SCENARIOS) if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    p = params(args)
    too_long = [r for r in p.serving_ranges.split(",") if parse_size(r) > p.serving_size]
    if "serving" in names and too_long:  # wrk would ask for bytes past the end: nothing but errors to measure
        print(f"p2pcache bench: --serving-ranges {','.join(too_long)} is larger than --serving-size "
              f"{show_size(p.serving_size)}", file=sys.stderr)
        return 2
    require("nginx", "wrk")
    report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "smoke": args.smoke, "machine": machine(), "params": vars(p), "scenarios": {}}
    failed = False
    for name in names:
        scenario = importlib.import_module(f".scenarios.{SCENARIOS[name]}", __package__)
        print(f"\n== {name}: {scenario.TITLE}", flush=True)
        started = time.monotonic()
        try:
            result = scenario.run(p)
        except Exception as exc:  # the other scenarios still run; the error is in the report
            traceback.print_exc()
            result, failed = {"title": scenario.TITLE, "error": f"{type(exc).__name__}: {exc}", "checks": []}, True
        else:
            print(scenario.table(result))
            print("\n".join(format_check(c) for c in result["checks"]), flush=True)
        result["seconds_taken"] = time.monotonic() - started
        report["scenarios"][name] = result
    report["loadavg_end"] = os.getloadavg()
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.plot:
        if "scaling" in report["scenarios"] and "points" in report["scenarios"]["scaling"]:
            plot_scaling(report["scenarios"]["scaling"], args.plot)
        else:
            print("--plot: no scaling results to plot", file=sys.stderr)
    return 1 if failed else 0


def summary(report: dict) -> str:
    lines = ["", "== targets (PASS/MISS are findings, not failures)"]
    for name, result in report["scenarios"].items():
        if "error" in result:
            lines.append(f"ERR   {name}: {result['error']}")
        lines += [format_check(c) for c in result["checks"]]
    m = report["machine"]
    lines.append(f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']:.0f} GiB, {m['kernel']}, "
                 f"load {m['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end")
    return "\n".join(lines)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem_kib / 2**20, "kernel": platform.release(),
            "python": platform.python_version(), "nginx": _version(["nginx", "-v"]),
            "wrk": _version(["wrk", "-v"]), "loadavg_start": os.getloadavg()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "unknown"


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
