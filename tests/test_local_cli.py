"""`p2pcache local` end to end: starts, serves the demo object to curl, exits cleanly."""

from __future__ import annotations

import os
import queue
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from conftest import cli_env, wait_until
from p2pcache.local import DEMO_BUCKET, DEMO_KEY, SECRET_FILE


def read_banner(proc: subprocess.Popen, timeout: float = 60, seen: list[str] | None = None) -> dict[str, list[str]]:
    """The URLs `p2pcache local` prints, by role (a thread reads, so no line is stuck in a buffer);
    every line in `seen`, if given."""
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
        if seen is not None:
            seen.append(line)
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
        secret_file = tmp_path / SECRET_FILE
        for child in children(proc.pid):  # a generated secret, in a file: not on a command line or in the environment
            assert b"secret" not in Path(f"/proc/{child}/cmdline").read_bytes()
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            assert f"P2PCACHE_CLUSTER_SECRET_FILE={secret_file}".encode() in environ
            assert not any(v.startswith(b"P2PCACHE_CLUSTER_SECRET=") for v in environ)
        assert len(secret_file.read_text().strip()) >= 32
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
        assert not secret_file.exists()  # a --data-dir stays, the secret of a stopped cluster does not
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_cluster_dies_with_p2pcache_local_even_when_it_is_killed(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "local", "--port", "0", "--workers", "1",
         "--demo-size", "1MiB", "--data-dir", str(tmp_path)],
        # The worker, its master gone with it, tries to announce its drain for its --drain-timeout
        # (the master may be restarting) and serves meanwhile: 1 s here, not the default 20.
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=os.environ | {"P2PCACHE_DRAIN_TIMEOUT": "1"})
    try:
        urls = read_banner(proc)
        proc.kill()  # no chance to clean up: the children must notice on their own
        proc.wait(timeout=10)
        wait_until(lambda: not any(port_open(u) for u in urls["worker"] + urls["master"]), 30,
                   "the children to close their ports")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def local(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pcache", "local", "--demo-size", "1KiB", *args],
                          capture_output=True, text=True, timeout=90, env=os.environ.copy())


@pytest.mark.parametrize(("args", "why"), [
    (["--capacity", "1XB"], "p2pcache local: error: argument --capacity: invalid size '1XB'"),
    (["--chunk-size", "1XB"], "p2pcache local: error: argument --chunk-size: invalid size '1XB'"),
    (["--workers", "0"], "p2pcache local: --workers must be from 1 to 100, not 0"),
    (["--workers", "3", "--port", "65535"], "p2pcache local: --port must be from 0 to 65532, not 65535"),
    (["--data-dir", __file__], f"p2pcache local: --data-dir {__file__} is not a directory"),
    (["--data-dir", f"{__file__}/caches"], f"p2pcache local: --data-dir {__file__}/caches: {__file__} is not a directory"),
])
def test_flags_local_cannot_start_with_stop_it_before_it_starts_anything(args, why):
    result = local("--port", "0", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith(why)


def test_a_process_that_does_not_start_is_named_with_its_exit_code_and_the_rest_stop(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = local("--port", str(port))
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert f"p2pcache master: cannot listen on 127.0.0.1:{port}: address already in use" in lines
    assert "p2pcache local: master did not become ready (exit code 1)" in lines
    # The master refuses a worker that cannot keep two chunks: the worker says why, local names it.
    result = local("--port", "0", "--workers", "2", "--chunk-size", "1MiB", "--capacity", "1MiB",
                   "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refused this worker: invalid worker registration: capacity must hold 2 chunks" in result.stderr
    assert "p2pcache local: worker worker-0 did not become ready (exit code 1)" in result.stderr.splitlines()


def test_with_another_s3_the_banner_offers_no_demo_object(s3, tmp_path):
    secret = "a-secret-given-to-p2pcache-local"  # used as given: no file written, never printed
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "local", "--port", "0", "--workers", "1", "--s3-endpoint", s3.url,
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env(P2PCACHE_CLUSTER_SECRET=secret))
    try:
        lines: list[str] = []
        urls = read_banner(proc, seen=lines)
        assert urls["s3"] == [s3.url] and len(urls["worker"]) == 1
        banner = "".join(lines)
        assert DEMO_KEY not in banner and f"curl -r 0-1048575 -o /tmp/part {urls['worker'][0]}/BUCKET/KEY" in banner
        assert secret not in banner and not (tmp_path / SECRET_FILE).exists()
        assert f"export P2PCACHE_MASTER={urls['master'][0]}   # and the P2PCACHE_CLUSTER_SECRET" in banner
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_local(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`p2pcache [--log-level ...] local --port 0 --workers 1 ...`: `args` are local's flags, or begin with
    `--log-level`."""
    before = list(args[:2]) if args[:1] == ("--log-level",) else []
    return subprocess.Popen([sys.executable, "-m", "p2pcache", *before, "local", "--port", "0", "--workers", "1",
                             "--demo-size", "1KiB", *args[len(before):]],
                            env=env or cli_env(), **{"stdout": subprocess.PIPE, "text": True} | popen)


@pytest.fixture
def temp_dir():
    """An empty TMPDIR for local, short: a worker's unix socket goes in a temp dir of its own, and
    pytest's tmp_path under xdist is too long a path for one (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="p2pl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def gone(pids: list[int]) -> bool:
    """None of `pids` runs any more (local waited for them, so none is left as a zombie)."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def signal_mask(pid: int, field: str) -> int:
    """`SigIgn` or `SigCgt` of /proc/PID/status: bit N-1 set for each signal N ignored, or caught."""
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(f"{field}:"))
    return int(line.split()[1], 16)


def test_sighup_stops_the_cluster_and_removes_its_temp_dir_unless_under_nohup(tmp_path, temp_dir):
    """Its terminal closed: stopped as by Ctrl-C, the temp dir (caches, secret) removed, exit 0.
    Started with SIGHUP ignored (`nohup`), it leaves it ignored."""
    temp = temp_dir
    proc = start_local(env=cli_env(TMPDIR=str(temp)), stderr=subprocess.DEVNULL)
    nohup = start_local("--data-dir", str(tmp_path / "nohup"), stderr=subprocess.DEVNULL,
                        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        read_banner(proc)
        cluster = children(proc.pid)
        assert len(cluster) == 2 and list(temp.glob("p2pcache-*/worker-0"))  # (and the worker's socket dir)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        assert gone(cluster) and list(temp.iterdir()) == []
        read_banner(nohup)
        hup, term = 1 << (signal.SIGHUP - 1), 1 << (signal.SIGTERM - 1)
        assert signal_mask(nohup.pid, "SigIgn") & hup and signal_mask(nohup.pid, "SigCgt") & term
        nohup.send_signal(signal.SIGINT)
        assert nohup.wait(timeout=60) == 0
    finally:
        stop(proc)
        stop(nohup)


def read_until(fd: int, text: bytes, timeout: float = 60) -> bytes:
    """What comes from `fd` until `text` has come."""
    data, deadline = b"", time.monotonic() + timeout
    while text not in data:
        assert time.monotonic() < deadline, f"no {text!r} in {data!r}"
        if select.select([fd], [], [], 0.5)[0]:
            piece = os.read(fd, 65536)
            assert piece, f"closed before {text!r}: {data!r}"
            data += piece
    return data


def test_a_closed_stdout_stops_neither_local_nor_its_cleanup(tmp_path):
    """`p2pcache local | tee log`, then Ctrl-C, which ends tee too: no BrokenPipeError, all stopped."""
    read_end, write_end = os.pipe()
    with open(tmp_path / "stderr", "w") as err:
        proc = start_local("--data-dir", str(tmp_path / "data"), stdout=write_end, stderr=err)
    os.close(write_end)
    try:
        try:
            read_until(read_end, b"Press Ctrl-C")
        finally:
            os.close(read_end)  # the reader is gone: "stopping the local cluster" has nowhere to go
        cluster = children(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "Traceback" not in (tmp_path / "stderr").read_text()
        assert gone(cluster) and not (tmp_path / "data" / SECRET_FILE).exists()
    finally:
        stop(proc)


def test_the_banner_says_how_status_reaches_the_cluster_without_printing_its_secret(tmp_path):
    proc = start_local("--data-dir", str(tmp_path), stderr=subprocess.DEVNULL)
    try:
        lines: list[str] = []
        urls = read_banner(proc, seen=lines)
        exports = [shlex.split(line) for line in lines if line.strip().startswith("export ")]
        assert len(exports) == 1 and exports[0][0] == "export"
        given = dict(word.split("=", 1) for word in exports[0][1:])
        secret_file = tmp_path / SECRET_FILE
        assert given == {"P2PCACHE_MASTER": urls["master"][0], "P2PCACHE_CLUSTER_SECRET_FILE": str(secret_file)}
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert secret_file.read_text().strip() not in "".join(lines)
        status = subprocess.run([sys.executable, "-m", "p2pcache", "status"], capture_output=True, text=True,
                                timeout=60, env=cli_env(**given))
        assert status.returncode == 0, status.stderr
        assert "worker-0" in status.stdout and urls["worker"][0] in status.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)


def test_the_log_level_of_local_is_its_masters_and_workers(tmp_path):
    with open(tmp_path / "stderr", "w") as err:
        proc = start_local("--log-level", "ERROR", "--data-dir", str(tmp_path / "data"), stderr=err)
    try:
        read_banner(proc)
        proc.send_signal(signal.SIGINT)  # the workers and the master log their stop at INFO
        assert proc.wait(timeout=60) == 0
        logged = (tmp_path / "stderr").read_text()
        assert " INFO " not in logged and " WARNING " not in logged, logged
    finally:
        stop(proc)


def test_ctrl_c_while_starting_stops_what_was_started_at_once(temp_dir):
    """The master is held stopped (SIGSTOP), so local cannot be past starting when Ctrl-C comes."""
    temp = temp_dir
    proc = start_local("--workers", "2", env=cli_env(TMPDIR=str(temp)), stderr=subprocess.DEVNULL)
    master = None
    try:
        def started_master() -> int | None:
            assert proc.poll() is None, "local exited before starting a master"
            return next((pid for pid in children(proc.pid)
                         if b"\0master\0" in Path(f"/proc/{pid}/cmdline").read_bytes()), None)

        master = wait_until(started_master, 60, "a master started", interval=0.01)
        os.kill(master, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        os.kill(master, signal.SIGCONT)  # now it may answer, and gets local's SIGTERM
        assert proc.wait(timeout=30) == 130
        assert "Press Ctrl-C" not in proc.stdout.read()  # never ready
        assert gone([master]) and list(temp.iterdir()) == []
    finally:
        if master is not None and not gone([master]):
            os.kill(master, signal.SIGKILL)
        stop(proc)
