"""Warm range reads from one worker vs nginx serving the same bytes from a file.

    python -m loadtests.serve_bench [--size 256MiB] [--seconds 5] [--repeats 3]

Both servers run as one process, on loopback, loaded by the same wrk with the same
random aligned ranges; the table gives medians and the worker/nginx ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

import boto3

from p2pcache.local import demo_bytes
from p2pcache.sizes import format_size, parse_size

from .harness import S3_ENV, cluster, median_run, nginx, require, wrk

BUCKET, KEY = "bench", "model/weights.bin"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default="256MiB")
    p.add_argument("--ranges", default="4MiB,64KiB")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--nginx-workers", default="1", help="nginx worker_processes (a number or auto)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    require("nginx", "wrk")
    data = demo_bytes(args.size)
    results = {"size": args.size, "connections": args.connections, "rows": [],
               "nginx_workers": args.nginx_workers}
    with tempfile.TemporaryDirectory() as root, cluster(1) as c:
        path = Path(root, BUCKET, KEY)
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        for d in (Path(root), path.parent.parent, path.parent):  # nginx's workers drop root
            d.chmod(0o755)
        path.chmod(0o644)
        s3 = boto3.client("s3", endpoint_url=c.s3.url, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        worker_url = f"{c.workers[0]}/{BUCKET}/{KEY}"
        with urllib.request.urlopen(worker_url) as resp:  # warm: every chunk on the worker's disk
            assert resp.read() == data, "worker served different bytes"
        with nginx(Path(root), args.nginx_workers) as nginx_base:
            for range_size in (parse_size(r) for r in args.ranges.split(",")):
                row = {"range": format_size(range_size)}
                for name, url in (("nginx", f"{nginx_base}/{BUCKET}/{KEY}"), ("worker", worker_url)):
                    row[name] = median_run(lambda: wrk(url, args.size, range_size, args.seconds,
                                                       args.connections), args.repeats)
                row["throughput_ratio"] = row["worker"]["bytes_s"] / row["nginx"]["bytes_s"]
                row["p99_ratio"] = row["worker"]["p99_ms"] / max(row["nginx"]["p99_ms"], 1e-3)
                results["rows"].append(row)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    lines = [f"warm random range reads, wrk c={results['connections']}, one worker process vs nginx "
             f"worker_processes={results['nginx_workers']}, medians of {results['rows'][0]['worker']['runs']} runs",
             "| range | server | MB/s | req/s | p50 ms | p99 ms | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["rows"]:
        for name in ("nginx", "worker"):
            r = row[name]
            lines.append(f"| {row['range']} | {name} | {r['bytes_s'] / 1e6:,.0f} | {r['req_s']:,.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] + r['non2xx']:.0f} |")
        lines.append(f"| {row['range']} | worker/nginx | {row['throughput_ratio']:.2f}x | "
                     f"{row['throughput_ratio']:.2f}x | | {row['p99_ratio']:.2f}x | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
