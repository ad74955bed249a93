"""How many heartbeats per second one real master process answers with many registered workers, and its CPU share."""

from __future__ import annotations

import http.client
import json
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import msgpack

from p2pcache.local import stop_all
from p2pcache.service import die_with_parent
from p2pcache.master_client import MSGPACK
from p2pcache.ring import WorkerInfo

from .harness import clean_env, cpu_seconds, held, ready, require, start

__all__ = ["measure", "heartbeat_requests"]

WRK_SCRIPT = Path(__file__).with_name("heartbeats.lua")


def heartbeat_requests(n: int) -> list[tuple[bytes, dict[str, str]]]:
    """The body and headers of each of `n` workers' heartbeats, as `MasterClient.heartbeat` sends them."""
    out = []
    for i in range(n):
        wid = f"p2pcache-worker-{i}"
        body = msgpack.packb(asdict(WorkerInfo(wid, f"http://{wid}.p2pcache-workers:7071", capacity=20 << 30)))
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}  # a signature header goes here
        out.append((body, headers))
    return out


def measure(workers: int, seconds: float, connections: int = 64, threads: int = 1) -> dict:
    """A master on 127.0.0.1 port 0, `workers` registered, then wrk sending their heartbeats for `seconds`.

    The master's CPU share is its utime + stime over the wrk run's wall time (1.0 = one core).
    Afterwards the master must still hold every worker at the same epoch: a heartbeat of an
    unchanged worker changes nothing, and none expired.
    """
    require("wrk")
    reqs = heartbeat_requests(workers)
    procs: list = []
    try:
        url = ready(start(procs, clean_env(), "--log-level", "WARNING", "master", "--listen", "127.0.0.1:0",
                          "--startup-grace", "0"))
        pid = procs[0].pid
        conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
        for body, headers in reqs:
            conn.request("POST", "/workers", body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"registration: HTTP {resp.status} {resp.read()[:200]!r}")
            resp.read()
        conn.close()
        before = _health(url)
        if before["workers"] != workers:
            raise RuntimeError(f"the master holds {before['workers']} workers, not {workers}")
        with tempfile.NamedTemporaryFile("w", prefix="p2pcache-heartbeats-", suffix=".txt") as f:
            for body, headers in reqs:
                f.write("\t".join([body.hex(), *(f"{k}: {v}" for k, v in headers.items())]) + "\n")
            f.flush()
            cpu0, children0, wall0 = cpu_seconds(pid), _children_cpu(), time.monotonic()
            out = subprocess.run(
                ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                 "--timeout", "10s", "-s", str(WRK_SCRIPT), url],
                env=dict(os.environ, HEARTBEATS_FILE=f.name), capture_output=True, text=True,
                timeout=seconds + 60, preexec_fn=die_with_parent)
            wall = time.monotonic() - wall0
            cpu, generator = cpu_seconds(pid) - cpu0, _children_cpu() - children0
        line = next((l for l in out.stdout.splitlines() if l.startswith("JSON ")), None)
        if out.returncode or line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
        r = json.loads(line[5:])
        after = _health(url)
    finally:
        with held():
            stop_all(procs)
    if (after["workers"], after["epoch"]) != (before["workers"], before["epoch"]):
        raise RuntimeError(f"membership changed under heartbeats: {before} -> {after}")
    secs = r["duration_us"] / 1e6
    return {"workers": workers, "seconds": secs, "connections": connections, "threads": threads,
            "heartbeats": r["requests"], "heartbeats_s": r["requests"] / secs, "errors": r["errors"] + r["non2xx"],
            "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "master_cpu": cpu / wall, "per_master_cpu_second": r["requests"] / cpu if cpu else 0.0,
            "generator_cpu": generator / wall, "loadavg_end": os.getloadavg()[0]}


def _health(url: str) -> dict:
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
