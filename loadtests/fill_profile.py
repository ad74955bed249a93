"""Where a cold fill's CPU goes: one worker, one object read cold through it, then warm.

    python -m loadtests.fill_profile --size 512MiB --repeats 3 [--profile fill.pstats] [--perf fill.perf]

An embedded S3 (in this process, serving ranges from memory) holds one object. Each repeat
starts a fresh single-process worker (`--serve-processes 1`, an empty cache dir) and has curl
read the whole object through it twice: cold (every chunk filled from S3: GET, checksum,
write, rename, then read back and sent) and warm (read back and sent). Reported: MB/s
and the worker's CPU-seconds per GB of each pass (utime + stime of the worker from
`/proc/PID/stat`, all its threads), medians; the cold pass's extra CPU over the warm one is
what the fill costs. With `--profile FILE`, the last repeat's worker runs under cProfile (its
event loop thread only: the executor's writes show as waits, not CPU) and the top
functions by own time are printed; timings of that repeat are not counted. With `--perf FILE`,
one more repeat runs `perf record -g` on the worker during the cold pass only (on-CPU samples of
all its threads, kernel included) and the top symbols are printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

from p2pcache.auth import new_secret
from p2pcache.local import stop_all
from p2pcache.service import die_with_parent
from p2pcache.ring import MAX_CHUNK, MIN_CHUNK
from p2pcache.sizes import format_size
from p2pcache.s3local import EmbeddedS3

from .datasets import File, seed
from .flags import MAX_OBJECT, count, output_file, size
from .harness import (_Tail, _wait_converged, clean_env, cpu_seconds, curl, held, ready, require, run_main,
                      s3_client, start)

__all__ = ["main"]

BUCKET, KEY = "models", "cold/model-00001-of-00001.safetensors"


def _perf(pid: int, path: str) -> subprocess.Popen:
    proc = None
    try:
        with held():
            proc = subprocess.Popen(["perf", "record", "-q", "-F", "999", "--call-graph",
                                     os.environ.get("PERF_CALL_GRAPH", "fp"), "-p", str(pid), "-o", path],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        time.sleep(0.5)  # attached
    except BaseException:  # stopped meanwhile
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    return proc


def _one(s3: EmbeddedS3, size: int, chunk_size: int, profile: str | None = None,
         perf: str | None = None) -> dict:
    env = clean_env() | {"P2PCACHE_CLUSTER_SECRET": new_secret()}
    procs: list = []
    with tempfile.TemporaryDirectory(prefix="p2pcache-fill-") as tmp:
        try:
            master = ready(start(procs, env, "--log-level", "WARNING", "master", "--listen", "127.0.0.1:0",
                                 "--chunk-size", str(chunk_size), "--startup-grace", "0"))
            args = ["worker", "--master", master, "--listen", "127.0.0.1:0", "--cache-dir", f"{tmp}/w0",
                    "--id", "w0", "--capacity", str(2 * size + (1 << 30)), "--min-free", "0",
                    "--s3-endpoint", s3.url, "--serve-processes", "1"]
            if profile:
                with held():
                    worker = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", profile, "-m", "p2pcache",
                                               "--log-level", "WARNING", *args], env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                                              preexec_fn=die_with_parent)
                    procs.append(worker)
                started = worker, _Tail(worker.stderr)
            else:
                started = start(procs, env, "--log-level", "WARNING", *args)
                worker = started[0]
            url = ready(started)
            _wait_converged(master, [url])
            out = {}
            for name in ("cold", "warm"):
                before, s3_before = cpu_seconds(worker.pid), s3.get_bytes
                recorder = _perf(worker.pid, perf) if perf and name == "cold" else None
                try:
                    seconds = curl(f"{url}/{BUCKET}/{KEY}", size)
                finally:  # also when the pass fails or the run is stopped: perf would record on alone
                    if recorder:
                        recorder.send_signal(signal.SIGINT)
                        recorder.wait(60)
                out[name] = {"seconds": seconds, "mb_s": size / seconds / 1e6,
                             "cpu_s_per_gb": (cpu_seconds(worker.pid) - before) / (size / 1e9),
                             "s3_bytes": s3.get_bytes - s3_before}
            return out
        finally:
            with held():  # a SIGTERM now waits until both are stopped
                stop_all(procs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.fill_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size(1, MAX_OBJECT), default="512MiB")
    ap.add_argument("--chunk-size", type=size(MIN_CHUNK, MAX_CHUNK), default="8MiB")
    ap.add_argument("--repeats", type=count(1), default=3)
    ap.add_argument("--profile", metavar="FILE", type=output_file,
                    help="run one more repeat under cProfile, stats to FILE")
    ap.add_argument("--perf", metavar="FILE", type=output_file,
                    help="run one more repeat under perf record (cold pass), data to FILE")
    ap.add_argument("--top", type=count(1), default=25)
    a = ap.parse_args(argv)
    require("curl", *(["perf"] if a.perf else []))
    with EmbeddedS3(fast_ranges=True) as s3:
        seed(s3_client(s3.url), [File(BUCKET, KEY, a.size)])
        runs = [_one(s3, a.size, a.chunk_size) for _ in range(a.repeats)]
        for r in runs:
            assert r["cold"]["s3_bytes"] == a.size and r["warm"]["s3_bytes"] == 0, r
        print(f"{format_size(a.size)} through one worker (--serve-processes 1), curl, medians of {a.repeats}:")
        for name in ("cold", "warm"):
            mb_s = statistics.median(r[name]["mb_s"] for r in runs)
            cpu = statistics.median(r[name]["cpu_s_per_gb"] for r in runs)
            print(f"  {name}: {mb_s:,.0f} MB/s, worker {cpu:.2f} CPU-s/GB")
        if a.profile:
            _one(s3, a.size, a.chunk_size, a.profile)
            print(f"\ncProfile of the worker's event loop thread ({a.profile}), top {a.top} by own time:")
            pstats.Stats(a.profile).sort_stats("tottime").print_stats(a.top)
        if a.perf:
            _one(s3, a.size, a.chunk_size, perf=a.perf)
            print(f"\nperf record of the worker during the cold pass ({a.perf}), top {a.top} symbols:")
            report = subprocess.run(["perf", "report", "-i", a.perf, "--no-children", "--sort", "dso,sym",
                                     "--stdio", "-g", "none"], capture_output=True, text=True)
            lines = [line for line in report.stdout.splitlines() if line.strip() and not line.startswith("#")]
            print("\n".join(lines[:a.top]))


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.fill_profile", main))
