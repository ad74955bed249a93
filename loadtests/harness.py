"""Pieces the benchmarks share: a cluster of real processes, nginx, wrk, medians (how a run stops: stopping.py)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from p2pcache.auth import new_secret
from p2pcache.local import NotReady, spawn, stop_all, wait_ready
from p2pcache.service import die_with_parent
from p2pcache.s3local import EmbeddedS3

from .stopping import RunFailed, held, run_main

__all__ = ["Cluster", "cluster", "nginx", "nginx_file", "wrk", "start_wrk", "wrk_result", "wrk_runs", "wrk_parallel",
           "median_run", "require", "clean_env", "s3_client", "metric", "cpu_seconds", "tree_cpu_seconds",
           "process_tree", "curl", "peak_rss", "run_main", "held", "start", "ready", "RunFailed", "ROOT", "S3_ENV"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m loadtests.X` runs from here
WRK_SCRIPT = Path(__file__).with_name("ranges.lua")
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}")


class Cluster:
    def __init__(self, s3: EmbeddedS3, master: str, workers: list[str], procs: list) -> None:
        self.s3, self.master, self.workers, self.procs = s3, master, workers, procs

    @property
    def worker_procs(self) -> list[subprocess.Popen]:
        """The workers' processes, in the order of `workers` (the master is `procs[0]`)."""
        return self.procs[1:]


@contextlib.contextmanager
def cluster(workers: int, chunk_size: str = "8MiB", capacity: str = "4GiB",
            worker_args: tuple[str, ...] = (), s3: EmbeddedS3 | None = None,
            s3_throttle: float = 0) -> Iterator[Cluster]:
    """An embedded S3 and a master and workers as separate processes on loopback.

    With `s3`, the workers use that server (kept running after the cluster stops), so
    that several fresh, cold clusters can read the same seeded objects.
    """
    env = clean_env() | {"P2PCACHE_CLUSTER_SECRET": new_secret()}  # closed, as the chart deploys it
    with contextlib.ExitStack() as stack:
        if s3 is None:
            s3 = stack.enter_context(EmbeddedS3(throttle=s3_throttle, fast_ranges=True))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="p2pcache-bench-"))
        procs: list = []
        try:
            # No start-up grace: the workers start now, and the ring is awaited below.
            master = ready(start(procs, env, "--log-level", "WARNING", "master", "--listen", "127.0.0.1:0",
                                 "--chunk-size", chunk_size, "--startup-grace", "0"))
            started = [start(  # all at once: each one's start-up is mostly imports
                procs, env, "--log-level", "WARNING", "worker", "--master", master,
                "--listen", "127.0.0.1:0", "--cache-dir", f"{tmp}/w{i}", "--id", f"w{i}",
                "--capacity", capacity, "--min-free", "0", "--s3-endpoint", s3.url,
                "--heartbeat-interval", "1", "--serve-processes", "1",  # worker_args may say otherwise
                *worker_args) for i in range(workers)]
            urls = [ready(one) for one in started]
            _wait_converged(master, urls)
            yield Cluster(s3, master, urls, procs)
        finally:
            with held():  # a SIGTERM now (between repeats, say) waits until everything is stopped
                stop_all(procs)


class _Tail:
    """A process's stderr, copied to ours line by line as it comes; its last lines kept to say why it exited."""

    def __init__(self, stream) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=3)
        self._thread = threading.Thread(target=self._copy, args=(stream,), daemon=True, name="stderr-tail")
        self._thread.start()

    def _copy(self, stream) -> None:
        for line in stream:  # until the process and its children close it
            self.lines.append(line.rstrip())
            with contextlib.suppress(OSError, ValueError):  # our stderr gone: keep draining theirs
                sys.stderr.write(line)
                sys.stderr.flush()

    def text(self, wait: float = 2) -> str:
        self._thread.join(wait)  # the process exited: the rest of its stderr is on its way
        return " | ".join(line for line in self.lines if line)


def start(procs: list, env: dict, *args: str) -> tuple[subprocess.Popen, _Tail]:
    """`p2pcache.local.spawn`, its stderr passed through to ours, the last lines kept for `ready`."""
    with held():
        proc = spawn(procs, env, *args, stderr=subprocess.PIPE)  # in `procs`, which cluster() stops
    return proc, _Tail(proc.stderr)


def ready(started: tuple[subprocess.Popen, _Tail]) -> str:
    """`wait_ready` of a `start`ed process; if it exits first, NotReady says why in its own words
    (`worker did not become ready (exit code 2): p2pcache worker: --capacity must be ...`)."""
    proc, tail = started
    try:
        return wait_ready(proc)
    except NotReady as exc:
        why = tail.text() if proc.poll() is not None else ""
        raise NotReady(f"{exc}: {why}" if why else str(exc)) from None


def clean_env() -> dict:
    """This environment without what would change the cluster's behaviour behind the benchmark's
    back (`P2PCACHE_*` flags such as an egress limit, an AWS profile or endpoint), plus S3_ENV."""
    drop = ("P2PCACHE_", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | S3_ENV


def s3_client(url: str):
    """A boto3 client of the embedded S3, with the benchmarks' fake credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                        config=Config(max_pool_connections=64))


def metric(worker_url: str, name: str) -> float:
    """The sum of a worker's samples of Prometheus metric `name` (all label sets)."""
    import urllib.request

    with urllib.request.urlopen(f"{worker_url}/_p2p/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, all its threads (fields 14 and 15 of /proc/PID/stat, after
    the command's parentheses), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it (a worker's serving processes, nginx's workers), parents
    first; a process that exits meanwhile is left out."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        with contextlib.suppress(OSError):  # exited meanwhile
            children = [int(child) for task in Path(f"/proc/{p}/task").iterdir()
                        for child in (task / "children").read_text().split()]
            tree.append(p)
            todo += children
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of `pid` and of every process under it; a process that exits meanwhile
    takes its share with it."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):  # exited meanwhile
            total += cpu_seconds(p)
    return total


def curl(url: str, size: int) -> float:
    """Seconds curl takes to fetch `url` (the whole object, `size` bytes) into /dev/null; an
    error if it fails or gets another number of bytes."""
    started = time.perf_counter()
    out = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}", "--fail", url],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or int(out.stdout or 0) != size:
        raise RuntimeError(f"curl {url}: exit {out.returncode}, {out.stdout!r} bytes, {out.stderr.strip()}")
    return time.perf_counter() - started


def peak_rss(pid: int) -> int:
    """A process's peak resident set size so far (Linux `VmHWM`), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _wait_converged(master: str, urls: list[str], timeout: float = 30) -> None:
    """Until the master's ring holds every worker and every worker uses that ring.

    "Each worker is ready" is not enough: workers started together join one by one, and a
    worker still on an older ring would place chunks differently (and fill them twice)."""
    import urllib.request

    def get(url: str) -> dict | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.load(resp)
        except (OSError, ValueError):  # not up yet, or 503 before joining
            return None

    deadline = time.monotonic() + timeout
    while True:
        ring = get(f"{master}/ring?format=json") or {}
        members = {w["url"] for w in ring.get("workers", ())}
        if members >= set(urls) and all((get(f"{url}/_p2p/ready") or {}).get("epoch") == ring["epoch"]
                                        for url in urls):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers never converged on one ring: {sorted(set(urls) - members)} missing")
        time.sleep(0.1)


def nginx_file(root: Path, name: str, data: bytes) -> Path:
    """Write `data` at `root/name` so that nginx's workers (which drop root) can read it."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)
    for d in [root, *path.relative_to(root).parents]:
        (root / d).chmod(0o755)
    return path


@contextlib.contextmanager
def nginx(root: Path, workers: int | str = 1) -> Iterator[tuple[str, int]]:
    """nginx serving `root` on loopback; yields its URL and its master's pid."""
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
            proc = None
            try:
                with held():  # Its own process group: the last resort below ends its workers too.
                    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", tmp], stderr=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=die_with_parent)
                if _wait_port(port, proc):
                    yield f"http://127.0.0.1:{port}", proc.pid
                    return
            finally:  # whatever ends the run (an error, Ctrl-C, SIGTERM), or the port it could not take
                if proc is not None:
                    with held():
                        _stop_nginx(proc)
        raise RuntimeError("nginx did not start")


def _stop_nginx(proc: subprocess.Popen) -> None:
    """Graceful (SIGQUIT: its workers finish their answers), then fast, then SIGKILL to its group."""
    for sig in (signal.SIGQUIT, signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
    job = {"url": url, "range_size": range_size, "connections": connections, "threads": threads,
           "object_size": object_size}
    return wrk_runs([job], seconds)[0]


def start_wrk(url: str, range_size: int, seconds: float, connections: int = 8, threads: int = 1,
              object_size: int = 0, ranges_file: Path | None = None) -> subprocess.Popen:
    """wrk in the background: ranges of `url` (one object of `object_size` bytes), or of the
    `path start length` extents listed in `ranges_file` (any objects on `url`'s host). Started
    inside `held`, to be recorded where a `finally` stops it (`wrk_runs`)."""
    require("wrk")
    env = dict(os.environ, OBJ_SIZE=str(object_size), RANGE_LEN=str(range_size))
    if ranges_file is not None:
        env["RANGES_FILE"] = str(ranges_file)
    return subprocess.Popen(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
         "--timeout", "10s", "-s", str(WRK_SCRIPT), url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)


def wrk_result(proc: subprocess.Popen, seconds: float) -> dict:
    """Wait for a `start_wrk` process (bounded) and parse its summary; whatever stops the wait
    (its time limit, Ctrl-C, SIGTERM) stops wrk too, which would otherwise run on alone."""
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    line = next((l for l in out.splitlines() if l.startswith("JSON ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]} {err[-500:]}")
    r = json.loads(line[5:])
    secs = r["duration_us"] / 1e6
    return {"req_s": r["requests"] / secs, "bytes_s": r["bytes"] / secs, "p50_ms": r["p50_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "errors": r["errors"], "non2xx": r["non2xx"], "requests": r["requests"]}


def wrk_runs(jobs: list[dict], seconds: float) -> list[dict]:
    """`start_wrk(**job)` for each job, all at once; their `wrk_result`s. One failing, or the
    run being stopped, stops the others too."""
    procs: list[subprocess.Popen] = []
    try:
        for job in jobs:
            with held():
                procs.append(start_wrk(seconds=seconds, **job))
        return [wrk_result(p, seconds) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wrk_parallel(jobs: list[dict], seconds: float) -> dict:
    """Several `start_wrk(**job)` at once (one per server); their sum, and the worst p99."""
    runs = wrk_runs(jobs, seconds)
    total = {k: sum(r[k] for r in runs) for k in ("req_s", "bytes_s", "errors", "non2xx")}
    return total | {"p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
                    "per_server_bytes_s": [r["bytes_s"] for r in runs]}


def median_run(fn, repeats: int) -> dict:
    """Run `fn` `repeats` times; the median of each number (the machine is noisy)."""
    runs = [fn() for _ in range(repeats)]
    out = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, (int, float))}
    out |= {k: [statistics.median(col) for col in zip(*(r[k] for r in runs))]  # lists: element by element
            for k, v in runs[0].items() if isinstance(v, list)}
    return out | {"runs": len(runs)}
