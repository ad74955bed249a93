"""One loader process reading a warm object from a local cluster vs curl fetching it from nginx.

    python -m loadtests.client_bench [--size 768MiB] [--repeats 3] [--workers 3] [--modes raw,aiohttp]

The object is read once through the cluster (warm: every chunk on its owner's disk), then
each round runs every contender once, in turn (interleaved, so the machine's noise hits
all alike): curl from nginx into /dev/null and into a file on tmpfs, and `p2pcache.Client`
`read_into` (a buffer allocated once), `read` (a new bytes object) and `download` (a file on
tmpfs), with each receive path asked for.
The table gives medians, the spread, and each client's ratio to curl's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from p2pcache import Client
from p2pcache.local import demo_bytes
from p2pcache.ring import MAX_CHUNK, MIN_CHUNK
from p2pcache.sizes import format_size

from .flags import MAX_CLUSTER, MAX_OBJECT, count, output_file, size
from .harness import cluster, nginx, nginx_file, require, run_main, s3_client

BUCKET, KEY = "bench", "model/weights.bin"
TMPFS = "/dev/shm"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtests.client_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=size(1, MAX_OBJECT), default="768MiB")
    p.add_argument("--repeats", type=count(1), default=3)
    p.add_argument("--workers", type=count(1, MAX_CLUSTER), default=3)
    p.add_argument("--chunk-size", type=size(MIN_CHUNK, MAX_CHUNK), default="8MiB")
    p.add_argument("--concurrency", type=count(1), default=16)
    p.add_argument("--modes", type=_modes, default="raw,aiohttp", help="client receive paths: raw (its own HTTP "
                   "reader where workers are plain HTTP), aiohttp, default (the Client's default: to "
                   "measure a checkout older than the choice)")
    p.add_argument("--json", type=output_file, help="also write the results here")
    args = p.parse_args(argv)
    require("nginx", "curl")
    data = demo_bytes(args.size)
    modes = [m for m in args.modes.split(",") if m]
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="p2pcache-client-") as root, \
            cluster(args.workers, str(args.chunk_size), "4GiB") as c:
        nginx_file(Path(root), f"{BUCKET}/{KEY}", data)
        s3 = s3_client(c.s3.url)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        uvloop.run(_read(c.master, "default", args.concurrency, expected=data))
        del data
        with nginx(Path(root), "auto") as (base, _):
            contenders = {"curl nginx -> memory": lambda: _curl(f"{base}/{BUCKET}/{KEY}", "/dev/null"),
                          "curl nginx -> tmpfs": lambda: _curl(f"{base}/{BUCKET}/{KEY}", _tmpfs_file())}
            target = bytearray(args.size)  # a loader's own buffer, allocated (and touched) once
            for mode in modes:
                if hasattr(Client, "read_into"):
                    contenders[f"client {mode} read_into -> memory"] = \
                        lambda m=mode: uvloop.run(_read_into(c.master, m, args.concurrency, target))
                contenders[f"client {mode} read -> memory"] = \
                    lambda m=mode: uvloop.run(_read(c.master, m, args.concurrency))
                contenders[f"client {mode} download -> tmpfs"] = \
                    lambda m=mode: uvloop.run(_download(c.master, m, args.concurrency))
            for _ in range(args.repeats):
                for name, run in contenders.items():
                    runs.setdefault(name, []).append(args.size / run())
    results = {"size": args.size, "workers": args.workers, "chunk_size": format_size(args.chunk_size),
               "concurrency": args.concurrency, "repeats": args.repeats,
               "rows": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                        for name, v in runs.items()}}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


MODES = ("raw", "aiohttp", "default")


def _modes(text: str) -> str:
    """A comma-separated list of MODES (another word would be measured as aiohttp, under its name)."""
    modes = [m.strip() for m in text.split(",")]
    for m in modes:
        if m not in MODES:
            raise argparse.ArgumentTypeError(f"{m!r} is not one of {', '.join(MODES)}")
    return ",".join(modes)


def _client(master: str, mode: str, concurrency: int) -> Client:
    return Client(master, concurrency=concurrency,
                  **({} if mode == "default" else {"raw_http": mode == "raw"}))


def _tmpfs_file() -> str:
    return os.path.join(TMPFS, f"p2pcache-bench-{os.getpid()}.bin")


def _curl(url: str, out: str) -> float:
    """Seconds curl took to fetch `url` into `out` (its own transfer time, not its start-up)."""
    try:
        done = subprocess.run(["curl", "-sS", "--fail", "-o", out, "-w", "%{time_total}", url],
                              capture_output=True, text=True, timeout=120, check=True)
        return float(done.stdout)
    finally:
        if out != "/dev/null":
            Path(out).unlink(missing_ok=True)


async def _read(master: str, mode: str, concurrency: int, expected: bytes | None = None) -> float:
    # Only the time leaves this coroutine: a finished task's repr would format its result.
    async with _client(master, mode, concurrency) as client:
        t = time.perf_counter()
        data = await client.read(BUCKET, KEY)
        elapsed = time.perf_counter() - t
    if expected is not None and data != expected:
        raise SystemExit("the cluster served different bytes")
    return elapsed


async def _read_into(master: str, mode: str, concurrency: int, target: bytearray) -> float:
    async with _client(master, mode, concurrency) as client:
        t = time.perf_counter()
        await client.read_into(BUCKET, KEY, target)
        return time.perf_counter() - t


async def _download(master: str, mode: str, concurrency: int) -> float:
    out = _tmpfs_file()
    try:
        async with _client(master, mode, concurrency) as client:
            t = time.perf_counter()
            await client.download(BUCKET, KEY, out)
            return time.perf_counter() - t
    finally:
        Path(out).unlink(missing_ok=True)


def table(results: dict) -> str:
    rows = results["rows"]
    curl = {"memory": rows["curl nginx -> memory"]["median"], "tmpfs": rows["curl nginx -> tmpfs"]["median"]}
    lines = [f"warm {format_size(results['size'])} object, {results['workers']} workers, "
             f"{results['chunk_size']} chunks, client concurrency {results['concurrency']}, "
             f"medians of {results['repeats']} interleaved runs",
             "| reader | MB/s median | min - max | vs curl from nginx |", "| --- | ---: | ---: | ---: |"]
    for name, r in rows.items():
        ratio = r["median"] / curl["tmpfs" if name.endswith("tmpfs") else "memory"]
        lines.append(f"| {name} | {r['median'] / 1e6:,.0f} | {r['min'] / 1e6:,.0f} - {r['max'] / 1e6:,.0f} | "
                     f"{ratio:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.client_bench", main))
