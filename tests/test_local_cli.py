"""`p2pcache local` end to end: starts, serves the demo object to curl, exits cleanly."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
from p2pcache.local import DEMO_BUCKET, DEMO_KEY


def read_banner(proc: subprocess.Popen, timeout: float = 60) -> dict[str, list[str]]:
    """The URLs `p2pcache local` prints, by role (a thread reads, so no line is stuck in a buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    urls: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            assert proc.poll() is None, f"p2pcache local exited early with {proc.poll()}"
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith(":"):
            urls.setdefault(parts[0].rstrip(":"), []).append(parts[1])
        if "Press Ctrl-C" in line:
            return urls
    raise AssertionError("no banner from p2pcache local")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the master and the workers of `p2pcache local`)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_local_cluster_serves_the_demo_object_to_curl_and_stops_on_ctrl_c(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "local", "--port", "0", "--workers", "2",
         "--demo-size", "3MiB", "--chunk-size", "1MiB", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        urls = read_banner(proc)
        assert len(urls["worker"]) == 2 and len(urls["master"]) == 1
        secrets = set()
        for child in children(proc.pid):  # one generated secret, in the environment, never on a command line
            assert b"secret" not in Path(f"/proc/{child}/cmdline").read_bytes()
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            secrets |= {v for v in environ if v.startswith(b"P2PCACHE_CLUSTER_SECRET=")}
        assert len(secrets) == 1 and len(secrets.pop()) > len("P2PCACHE_CLUSTER_SECRET=") + 16
        s3 = boto3.client("s3", endpoint_url=urls["s3"][0], region_name="us-east-1",
                          aws_access_key_id="demo", aws_secret_access_key="demo")
        expected = s3.get_object(Bucket=DEMO_BUCKET, Key=DEMO_KEY, Range="bytes=1000-1500000")["Body"].read()
        for worker in urls["worker"]:
            out = tmp_path / "part"
            subprocess.run(["curl", "-sf", "-r", "1000-1500000", "-o", str(out),
                            f"{worker}/{DEMO_BUCKET}/{DEMO_KEY}"], check=True, timeout=60)
            assert out.read_bytes() == expected
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for url in urls["worker"] + urls["master"] + urls["s3"]:
            assert not port_open(url), f"{url} still listening after exit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_cluster_dies_with_p2pcache_local_even_when_it_is_killed(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "local", "--port", "0", "--workers", "1",
         "--demo-size", "1MiB", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        urls = read_banner(proc)
        proc.kill()  # no chance to clean up: the children must notice on their own
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(port_open(u) for u in urls["worker"] + urls["master"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(port_open(u) for u in urls["worker"] + urls["master"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
