"""Flags a service cannot work with stop it at startup: exit 2 and one line naming the flag, never a ready line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p2pcache.cli import build_parser
from worker.config import WorkerConfig

MASTER = "http://127.0.0.1:9"


def run(*args: str) -> subprocess.CompletedProcess:
    """`p2pcache ARGS` as its own process; one that does not stop by itself fails the test."""
    return subprocess.run([sys.executable, "-m", "p2pcache", *args], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("P2PCACHE_")})


def worker_args(tmp_path, *flags: str) -> list[str]:
    return ["worker", "--listen", "127.0.0.1:0", "--cache-dir", str(tmp_path / "cache"), *flags]


def worker_config(tmp_path, *flags: str) -> WorkerConfig:
    return WorkerConfig.from_args(build_parser().parse_args(worker_args(tmp_path, *flags)))


@pytest.mark.parametrize(("flags", "why"), [
    (["--master", "notaurl"], "--master: url 'notaurl' must be http:// or https://"),
    (["--master", "127.0.0.1:29000"], "--master: url '127.0.0.1:29000' must be http:// or https://"),
    (["--master", "http://127.0.0.1:29000/ring"], "--master: url 'http://127.0.0.1:29000/ring' must not have a path"),
    (["--master", MASTER, "--advertise", "foo"], "--advertise: url 'foo' must be http:// or https://"),
    (["--master", MASTER, "--advertise", "http://127.0.0.1:29060/path"],
     "--advertise: url 'http://127.0.0.1:29060/path' must not have a path"),
    (["--master", MASTER, "--id", "bad id!"], "--id: id must be 1-128 characters of A-Z a-z 0-9 . _ -"),
    (["--master", MASTER, "--id", "a" * 200], "--id: id must be 1-128 characters"),
])
def test_a_worker_the_master_would_refuse_is_refused_by_its_flags(tmp_path, flags, why):
    with pytest.raises(ValueError) as refused:
        worker_config(tmp_path, *flags)
    assert str(refused.value).startswith(why)


def test_a_trailing_slash_is_not_a_path(tmp_path):
    config = worker_config(tmp_path, "--master", MASTER + "/", "--advertise", "http://w0:7071/", "--id", "w0")
    assert (config.master_url, config.advertise, config.worker_id) == (MASTER, "http://w0:7071", "w0")


def test_a_worker_that_could_never_join_exits_with_one_line(tmp_path):
    result = run(*worker_args(tmp_path, "--master", "127.0.0.1:29000"))
    assert result.returncode == 2 and "ready" not in result.stdout
    assert result.stderr == "p2pcache worker: --master: url '127.0.0.1:29000' must be http:// or https://\n"
    assert not (tmp_path / "cache").exists()
