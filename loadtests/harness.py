"""Pieces the benchmarks share: a cluster of real processes, nginx, wrk, medians."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from p2pcache.local import spawn, stop_all, wait_ready
from p2pcache.s3local import EmbeddedS3

__all__ = ["Cluster", "cluster", "nginx", "wrk", "median_run", "require"]

WRK_SCRIPT = Path(__file__).with_name("ranges.lua")
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}")


class Cluster:
    def __init__(self, s3: EmbeddedS3, master: str, workers: list[str], procs: list) -> None:
        self.s3, self.master, self.workers, self.procs = s3, master, workers, procs


@contextlib.contextmanager
def cluster(workers: int, chunk_size: str = "8MiB", capacity: str = "4GiB",
            worker_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """An embedded S3 and a master and workers as separate processes on loopback."""
    env = dict(os.environ) | S3_ENV
    with EmbeddedS3() as s3, tempfile.TemporaryDirectory(prefix="p2pcache-bench-") as tmp:
        procs: list = []
        try:
            master = wait_ready(spawn(procs, env, "--log-level", "WARNING", "master",
                                      "--listen", "127.0.0.1:0", "--chunk-size", chunk_size))
            urls = [wait_ready(spawn(
                procs, env, "--log-level", "WARNING", "worker", "--master", master,
                "--listen", "127.0.0.1:0", "--cache-dir", f"{tmp}/w{i}", "--id", f"w{i}",
                "--capacity", capacity, "--min-free", "0", "--s3-endpoint", s3.url,
                "--heartbeat-interval", "1", *worker_args)) for i in range(workers)]
            _wait_all_ready(urls)
            yield Cluster(s3, master, urls, procs)
        finally:
            stop_all(procs)


def _wait_all_ready(urls: list[str], timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_p2p/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never joined the ring")
            time.sleep(0.1)


@contextlib.contextmanager
def nginx(root: Path, workers: int | str = 1) -> Iterator[str]:
    """nginx serving `root` on loopback; yields its URL."""
    require("nginx")
    with tempfile.TemporaryDirectory(prefix="p2pcache-nginx-") as tmp:
        for _ in range(5):  # nginx cannot bind port 0 and report it: try a few free ports
            port = _free_port()
            conf = Path(tmp, "nginx.conf")
            conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
""")
            proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", tmp], stderr=subprocess.DEVNULL)
            if _wait_port(port, proc):
                try:
                    yield f"http://127.0.0.1:{port}"
                finally:
                    proc.send_signal(signal.SIGQUIT)
                    proc.wait(timeout=10)
                return
        raise RuntimeError("nginx did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def wrk(url: str, object_size: int, range_size: int, seconds: float = 5, connections: int = 8,
        threads: int = 1) -> dict:
    """Random aligned `range_size` reads of `url` for `seconds`; bytes/s, req/s, p50/p99."""
    require("wrk")
    env = dict(os.environ, OBJ_SIZE=str(object_size), RANGE_LEN=str(range_size))
    proc = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(WRK_SCRIPT), url], env=env, capture_output=True, text=True, timeout=seconds + 30)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("JSON ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    r = json.loads(line[5:])
    secs = r["duration_us"] / 1e6
    return {"req_s": r["requests"] / secs, "bytes_s": r["bytes"] / secs, "p50_ms": r["p50_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "errors": r["errors"], "non2xx": r["non2xx"]}


def median_run(fn, repeats: int) -> dict:
    """Run `fn` `repeats` times; the median of each number (the machine is noisy)."""
    runs = [fn() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": len(runs)}
