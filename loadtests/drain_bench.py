"""How fast a draining worker hands its chunks over: SIGTERM one of N warm workers.

    python -m loadtests.drain_bench [--size 1GiB] [--workers 3] [--repeats 3]

Each round: a fresh cluster (separate processes, loopback, a closed cluster as the chart
runs it), `--size` bytes in 8 MiB chunks read once through the owners (warm), then SIGTERM to
one worker. Measured: the bytes its peers took from it (`p2pcache_handoff_bytes_total`), the
seconds from SIGTERM to its exit, their ratio, and the bytes read from S3 when the whole
dataset is read again afterwards (0 when the drain finished in time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time

from p2pcache import Client
from p2pcache.local import demo_bytes
from p2pcache.sizes import format_size

from .flags import MAX_CLUSTER, MAX_DATASET, count, output_file, size
from .harness import cluster, metric, run_main, s3_client

BUCKET, OBJECT = "drain", 256 << 20


async def read_everything(master: str, keys: list[str]) -> None:
    async with Client(master) as client:
        for key in keys:
            info = await client.stat(BUCKET, key)
            await client.read(BUCKET, key, 0, info.size)


def one_round(size: int, workers: int, drain_timeout: int) -> dict:
    with cluster(workers, capacity=f"{2 * size}", worker_args=("--drain-timeout", str(drain_timeout))) as c:
        s3 = s3_client(c.s3.url)
        s3.create_bucket(Bucket=BUCKET)
        keys = []
        for i in range(-(-size // OBJECT)):
            key = f"model-{i:05d}.safetensors"
            s3.put_object(Bucket=BUCKET, Key=key, Body=demo_bytes(min(OBJECT, size - i * OBJECT), seed=i))
            keys.append(key)
        asyncio.run(read_everything(c.master, keys))
        victim, proc = c.workers[-1], c.worker_procs[-1]
        held = metric(victim, "p2pcache_store_bytes")
        others = c.workers[:-1]
        before = sum(metric(w, "p2pcache_handoff_bytes_total") for w in others)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=2 * drain_timeout + 30)
        seconds = time.monotonic() - start
        handed = sum(metric(w, "p2pcache_handoff_bytes_total") for w in others) - before
        s3_before = c.s3.get_bytes
        asyncio.run(read_everything(c.master, keys))
        return {"held": held, "handed": handed, "seconds": seconds, "rate": handed / seconds,
                "s3_after": c.s3.get_bytes - s3_before, "exit": proc.returncode}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtests.drain_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=size(1, MAX_DATASET), default="1GiB")
    p.add_argument("--workers", type=count(2, MAX_CLUSTER), default=3, help="at least 2: one drains to the others")
    p.add_argument("--repeats", type=count(1), default=3)
    p.add_argument("--drain-timeout", type=count(1), default=60)
    p.add_argument("--json", type=output_file, help="also write the results here")
    args = p.parse_args(argv)
    rounds = [one_round(args.size, args.workers, args.drain_timeout) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in rounds) for k in ("held", "handed", "seconds", "rate", "s3_after")}
    print(f"drain of 1 of {args.workers} warm workers, {format_size(args.size)} dataset, medians of {args.repeats}")
    print("| held by the worker | handed over | SIGTERM to exit | handoff rate | S3 bytes after |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {format_size(int(med['held']))} | {format_size(int(med['handed']))} | {med['seconds']:.1f} s | "
          f"{med['rate'] / 1e6:,.0f} MB/s | {int(med['s3_after'])} |")
    result = {"rounds": rounds, "median": med, "size": args.size, "workers": args.workers}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.drain_bench", main))
