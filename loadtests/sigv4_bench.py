"""What verifying reader signatures costs: warm 64 KiB range reads, unsigned vs SigV4-signed.

    python -m loadtests.sigv4_bench [--size 64MiB] [--range 64KiB] [--seconds 5] [--repeats 3]

One worker process without `--client-keys` is read unsigned, and with a signature (header or
query) it ignores: the cost of the bigger request alone; one with it is read with a signed
`Authorization` header and with a presigned URL. wrk replays one signature (valid for 15
minutes; `Range` is not signed, as S3 allows), so the client signs nothing per request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from p2pcache.local import demo_bytes
from p2pcache.service import die_with_parent
from p2pcache.s3local import EmbeddedS3
from p2pcache.sizes import format_size

from .flags import MAX_OBJECT, count, output_file, size
from .harness import RunFailed, cluster, held, median_run, require, run_main, s3_client, wrk_result

__all__ = ["main"]

BUCKET, KEY = "bench", "model/weights.bin"
KEY_ID, SECRET = "bench-reader", "c2lndjQtYmVuY2gtc2VjcmV0LWtleQ"
LUA = """
local size, len = tonumber(os.getenv("OBJ_SIZE")), tonumber(os.getenv("RANGE_LEN"))
local headers = {}
function setup(thread) thread:set("id", math.random(1, 1e9)) end
function init(args)
  math.randomseed(id or os.time())
  for k, v in pairs(wrk.headers) do headers[k] = v end  -- the signature's headers, from -H
end
function request()
  local start = math.random(0, math.floor((size - len) / 4096)) * 4096
  headers["Range"] = "bytes=" .. start .. "-" .. (start + len - 1)
  return wrk.format("GET", nil, headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, "non2xx": %d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def signed_headers(url: str) -> dict[str, str]:
    """A botocore S3 SigV4 header signature of `GET url` (host, x-amz-date, x-amz-content-sha256)."""
    request = AWSRequest("GET", url)
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(request)
    return {k: v for k, v in request.headers.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(script: Path, url: str, headers: dict[str, str], size: int, range_size: int, seconds: float,
            connections: int, pid: int) -> dict:
    """One wrk run; with the worker's CPU time per request, which other load on the machine
    does not inflate the way it does requests per second."""
    argv = ["wrk", "-t2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    env = dict(os.environ, OBJ_SIZE=str(size), RANGE_LEN=str(range_size))
    cpu = cpu_seconds(pid)
    proc = None
    try:
        with held():
            proc = subprocess.Popen([*argv, url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=die_with_parent)
        result = wrk_result(proc, seconds)
    finally:  # stopped before wrk_result waited for it
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    result["cpu_us"] = (cpu_seconds(pid) - cpu) / (result["req_s"] * seconds) * 1e6
    if result["non2xx"] or result["errors"]:
        raise RunFailed(f"wrk saw {result['non2xx']} non-2xx answers and {result['errors']} errors on {url}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtests.sigv4_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=size(1, MAX_OBJECT), default="64MiB")
    p.add_argument("--range", type=size(1, MAX_OBJECT), default="64KiB")
    p.add_argument("--seconds", type=count(1), default=5, help="length of each wrk run")
    p.add_argument("--repeats", type=count(1), default=3)
    p.add_argument("--connections", type=count(2), default=8, help="wrk connections, at least its 2 threads")
    p.add_argument("--json", type=output_file, help="also write the results here")
    args = p.parse_args(argv)
    if args.range > args.size:  # wrk would ask for bytes past the end
        p.error(f"--range {format_size(args.range)} is larger than --size {format_size(args.size)}")
    require("wrk")
    data = demo_bytes(args.size)
    with tempfile.TemporaryDirectory(prefix="p2pcache-sigv4-") as tmp, EmbeddedS3(fast_ranges=True) as s3:
        script, keys = Path(tmp, "signed.lua"), Path(tmp, "client-keys")
        script.write_text(LUA)
        keys.write_text(f"{KEY_ID} {SECRET} {BUCKET}\n")
        origin = s3_client(s3.url)
        origin.create_bucket(Bucket=BUCKET)
        origin.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        with cluster(1, s3=s3) as plain, cluster(1, s3=s3, worker_args=("--client-keys", str(keys))) as checked:
            plain_url, checked_url = (f"{c.workers[0]}/{BUCKET}/{KEY}" for c in (plain, checked))
            for c, key_id, secret in ((plain, "anyone", "unchecked"), (checked, KEY_ID, SECRET)):
                reader = boto3.client("s3", endpoint_url=c.workers[0], region_name="us-east-1",
                                      aws_access_key_id=key_id, aws_secret_access_key=secret,
                                      config=Config(signature_version="s3v4"))
                assert reader.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == data  # warm
            presigned = reader.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": KEY},
                                                      ExpiresIn=3600)
            assert urlsplit(presigned).query
            plain_pid, checked_pid = plain.worker_procs[0].pid, checked.worker_procs[0].pid
            cases = {  # name -> (url, headers, worker pid)
                "unsigned": (plain_url, {}, plain_pid),
                # Control: the same signature headers, ignored by a worker without keys.
                "signed header, not checked": (plain_url, signed_headers(plain_url), plain_pid),
                "presigned URL, not checked": (plain_url + "?" + urlsplit(presigned).query, {}, plain_pid),
                "signed header": (checked_url, signed_headers(checked_url), checked_pid),
                "presigned URL": (presigned, {}, checked_pid),
            }
            runs = {name: [] for name in cases}
            for _ in range(args.repeats):  # interleaved, so that the machine's drift hits every case alike
                for name, (url, headers, pid) in cases.items():
                    runs[name].append(run_wrk(script, url, headers, args.size, args.range, args.seconds,
                                              args.connections, pid))
            rows = {name: median_run(iter(r).__next__, len(r)) for name, r in runs.items()}  # of the runs above
    results = {"size": args.size, "range": args.range, "connections": args.connections, "rows": rows}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    base = results["rows"]["unsigned"]["req_s"]
    lines = [f"warm random {format_size(results['range'])} range reads of one worker, wrk -t2 "
             f"c={results['connections']}, medians of {results['rows']['unsigned']['runs']} runs",
             "| request | req/s | vs unsigned | worker CPU us/request | p50 ms | p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["rows"].items():
        lines.append(f"| {name} | {r['req_s']:,.0f} | {r['req_s'] / base:.2f}x | {r['cpu_us']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.sigv4_bench", main))
