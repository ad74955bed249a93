"""SIGTERM stops every benchmark entry point as Ctrl-C does: each process it started ends, each temp dir goes.

A benchmark killed by SIGTERM used to die on the spot: nginx and wrk (which do not die with
their parent) kept running, reparented to init, and its temp dirs stayed behind. SIGKILL,
which no clean-up survives, left nginx and wrk running too; now they die with their parent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
TINY_CLUSTER = ["--size", "1MiB", "--repeats", "1000"]

# name -> (argv after the interpreter, a process name to wait for among its descendants, how many)
CASES = {
    "bench": (["-m", "p2pcache", "--log-level", "WARNING", "bench", "--smoke", "--scenarios", "serving",
               "--serving-ranges", "64KiB", "--seconds", "30"], "wrk", 1),
    "serve_bench": (["-m", "loadtests.serve_bench", "--size", "1MiB", "--seconds", "30", "--repeats", "1",
                     "--connections", "2", "--ranges", "64KiB"], "wrk", 1),
    "client_bench": (["-m", "loadtests.client_bench", *TINY_CLUSTER, "--workers", "1", "--chunk-size", "1MiB"],
                     "nginx", 1),
    "sigv4_bench": (["-m", "loadtests.sigv4_bench", "--size", "1MiB", "--seconds", "30", "--repeats", "1",
                     "--connections", "2"], "wrk", 1),
    "drain_bench": (["-m", "loadtests.drain_bench", "--size", "1MiB", "--workers", "2", "--repeats", "1000"],
                    "python", 3),
    "nonowner_bench": (["-m", "loadtests.nonowner_bench", *TINY_CLUSTER, "--serve-processes", "1"], "curl", 1),
    "fill_profile": (["-m", "loadtests.fill_profile", *TINY_CLUSTER, "--chunk-size", "64KiB"], "python", 2),
    "simulate": (["-m", "loadtests.simulate", "--smoke", "--workers", "2", "--models", "1",
                  "--heartbeat-seconds", "30"], "wrk", 1),
    "pagecache": (["-m", "loadtests.pagecache", "--size", "64MiB", "--repeats", "1000"], None, 0),
}


def _name(proc: psutil.Process) -> str:
    name = proc.name()
    return "python" if name.startswith("python") else name


def _started(pid: int, seen: dict[int, psutil.Process]) -> list[str]:
    """Adds `pid`'s descendants to `seen` (Process objects, which tell a reused pid apart); their names."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass
    names = []
    for proc in seen.values():
        try:
            names.append(_name(proc))
        except psutil.NoSuchProcess:
            pass
    return names


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start(name: str, tmp: Path, out_dir: Path, preexec_fn=None) -> subprocess.Popen:
    """Benchmark `name`, its temp files in `tmp`, its output in `out_dir`."""
    env = os.environ | {"TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    # Files, not pipes: a process left behind would hold a pipe open, and reading it would hang.
    with open(out_dir / "out", "w") as out, open(out_dir / "err", "w") as err:
        return subprocess.Popen([sys.executable, *CASES[name][0]], cwd=ROOT, env=env, stdout=out, stderr=err,
                                preexec_fn=preexec_fn)


def _into_run(name: str, proc: subprocess.Popen, tmp: Path, out_dir: Path, seen: dict[int, psutil.Process]) -> None:
    """Return once `proc` started what CASES names and is into its run; `seen` then holds every
    process it started."""
    _, wanted, how_many = CASES[name]

    def started() -> bool:
        assert proc.poll() is None, (out_dir / "err").read_text()[-3000:]
        return _started(proc.pid, seen).count(wanted) >= how_many if wanted else any(tmp.iterdir())

    wait_until(started, 90, f"{name} to start {wanted or 'its run'}")
    time.sleep(0.5)  # into its run (wrk started, a read under way)
    _started(proc.pid, seen)


def _end_left_over(proc: subprocess.Popen, seen: dict[int, psutil.Process], tmp: Path) -> None:
    """What the old code left behind: ended by pid, only the processes this test started."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for p in seen.values():
        if _running(p):
            p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def _private_tmp() -> Path:
    """The benchmark's temp dir, empty again once it has stopped. Not under tmp_path, which is
    private: nginx's workers (another user) could not read the files it serves from there."""
    tmp = Path(tempfile.mkdtemp(prefix="p2pcache-sigterm-"))
    tmp.chmod(0o755)
    return tmp


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("name", "preexec_fn"), [
    *((name, None) for name in CASES),
    # started in the background of a script (`bench &`), which ignores SIGINT: SIGTERM, turned
    # into a SIGINT, was lost, and the run went on to its end
    ("serve_bench", _ignore_sigint),
], ids=[*CASES, "serve_bench-in-the-background"])
def test_sigterm_stops_everything_the_benchmark_started(name, preexec_fn, tmp_path):
    tmp = _private_tmp()
    seen: dict[int, psutil.Process] = {}
    proc = _start(name, tmp, tmp_path, preexec_fn)
    try:
        _into_run(name, proc, tmp, tmp_path, seen)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        assert [(p.pid, _name(p)) for p in seen.values() if _running(p)] == []
        assert list(tmp.iterdir()) == []
        assert not Path(f"/dev/shm/p2pcache-bench-{proc.pid}.bin").exists()  # client_bench's tmpfs file
        stderr = (tmp_path / "err").read_text()
        assert status == 128 + signal.SIGTERM, stderr[-3000:]
        assert stderr.splitlines()[-1].endswith("stopped by SIGTERM; what it started has stopped")
    finally:
        _end_left_over(proc, seen, tmp)


def test_sigkill_stops_the_servers_and_load_the_benchmark_started(tmp_path):
    """SIGKILL runs no clean-up, but nginx and wrk get SIGTERM from the kernel as their parent
    dies (PR_SET_PDEATHSIG), as the cluster's processes always did (those drain first, up to
    their --drain-timeout: not waited for here). nginx and wrk ran on, reparented to init,
    nginx for good. (Its temp dirs stay: nothing can remove them.)"""
    tmp = _private_tmp()
    seen: dict[int, psutil.Process] = {}
    proc = _start("serve_bench", tmp, tmp_path)
    try:
        _into_run("serve_bench", proc, tmp, tmp_path, seen)
        assert {"nginx", "wrk", "python"} <= {_name(p) for p in seen.values()}
        proc.kill()
        proc.wait()
        wait_until(lambda: not [p for p in seen.values() if _running(p) and _name(p) in ("nginx", "wrk")], 20,
                   "nginx and wrk to end with their benchmark")
    finally:
        _end_left_over(proc, seen, tmp)
