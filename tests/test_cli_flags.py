"""A service stops at startup with one line, never a traceback or a ready line: exit 2 for flags it cannot
work with (the line names the flag), 1 for an address it cannot listen on."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys

import pytest

from conftest import cli_env, worker_args
from master.config import MasterConfig
from p2pcache.cli import build_parser
from p2pcache.config import env_name
from p2pcache.local import spawn, stop_all, wait_joined, wait_ready
from worker.config import WorkerConfig, add_arguments
from worker.eviction import POLICIES

MASTER = "http://127.0.0.1:9"


ENV = cli_env()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`p2pcache ARGS` as its own process, with `env` added; one that does not stop by itself fails the test."""
    return subprocess.run([sys.executable, "-m", "p2pcache", *args], capture_output=True, text=True, timeout=30,
                          env=ENV | (env or {}))


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
    (["--master", MASTER, "--s3-endpoint", "notaurl"], "--s3-endpoint: 'notaurl' is not an http:// or https:// URL"),
    (["--master", MASTER, "--s3-endpoint", "http://h:99999"], "--s3-endpoint: 'http://h:99999' is not a URL"),
])
def test_worker_urls_and_ids_it_cannot_work_with_are_refused(tmp_path, flags, why):
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


def master_config(*flags: str) -> MasterConfig:
    return MasterConfig.from_args(build_parser().parse_args(["master", "--listen", "127.0.0.1:0", *flags]))


@pytest.mark.parametrize(("flags", "why"), [
    (["--chunk-size", "0"], "--chunk-size must be from 64KiB to 1GiB, not 0B"),
    (["--chunk-size", "1"], "--chunk-size must be from 64KiB to 1GiB, not 1B"),
    (["--chunk-size", "1.5"], "--chunk-size must be from 64KiB to 1GiB, not 1B"),
    (["--chunk-size", "65535"], "--chunk-size must be from 64KiB to 1GiB, not 65,535 bytes"),
    (["--vnodes", "0"], "--vnodes must be from 1 to 1000, not 0"),
    (["--vnodes", "-5"], "--vnodes must be from 1 to 1000, not -5"),
    (["--vnodes", "1001"], "--vnodes must be from 1 to 1000, not 1001"),
    (["--replicas", "0"], "--replicas must be from 1 to 1000, not 0"),
    (["--replicas", "-1"], "--replicas must be from 1 to 1000, not -1"),
    (["--worker-ttl", "-1"], "--worker-ttl must be from 1 to 3600, not -1"),
    (["--worker-ttl", "0"], "--worker-ttl must be from 1 to 3600, not 0"),
    (["--worker-ttl", "0.5"], "--worker-ttl must be from 1 to 3600, not 0.5"),
    (["--worker-ttl", "nan"], "--worker-ttl must be from 1 to 3600, not nan"),
    (["--startup-grace", "-1"], "--startup-grace must be from 0 to 3600, not -1"),
    (["--startup-grace", "inf"], "--startup-grace must be from 0 to 3600, not inf"),
])
def test_master_numbers_out_of_range_are_refused(flags, why):
    with pytest.raises(ValueError) as refused:
        master_config(*flags)
    assert str(refused.value) == why


def test_master_numbers_at_their_bounds_are_accepted():
    config = master_config("--chunk-size", "64KiB", "--vnodes", "1000", "--replicas", "1", "--worker-ttl", "1",
                           "--startup-grace", "0")
    assert (config.chunk_size, config.vnodes, config.replicas, config.worker_ttl) == (64 << 10, 1000, 1, 1.0)
    config = master_config("--chunk-size", "1GiB", "--vnodes", "1", "--replicas", "1000", "--worker-ttl", "3600",
                           "--startup-grace", "3600")
    assert (config.chunk_size, config.replicas, config.worker_ttl, config.startup_grace) == (1 << 30, 1000, 3600, 3600)
    assert master_config("--chunk-size", "8MB", "--vnodes", "1").chunk_size == 8_000_000  # not a block multiple


@pytest.mark.parametrize(("flags", "why"), [
    (["--weight", "0"], "--weight must be from 1 to 100, not 0"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval must be more than 0 and at most 86400, not 0"),
    (["--heartbeat-interval", "-2"], "--heartbeat-interval must be more than 0 and at most 86400, not -2"),
    (["--heartbeat-interval", "inf"], "--heartbeat-interval must be more than 0 and at most 86400, not inf"),
    (["--origin-read-timeout", "0"], "--origin-read-timeout must be more than 0 and at most 86400, not 0"),
    (["--origin-concurrency", "0"], "--origin-concurrency must be from 1 to 1000000, not 0"),
    (["--origin-concurrency", "-1"], "--origin-concurrency must be from 1 to 1000000, not -1"),
    (["--readahead", "0"], "--readahead must be from 1 to 1000000, not 0"),
    (["--drain-timeout", "-1"], "--drain-timeout must be from 0 to 86400, not -1"),
    (["--meta-ttl", "-1"], "--meta-ttl must be from 0 to 86400, not -1"),
    (["--meta-ttl", "nan"], "--meta-ttl must be from 0 to 86400, not nan"),
    (["--origin-deadline", "-1"], "--origin-deadline must be from 0 to 86400, not -1"),
    (["--origin-breaker", "-1"], "--origin-breaker must be from 0 to 1000000, not -1"),
    (["--heartbeat-interval", "1e300"], "--heartbeat-interval must be more than 0 and at most 86400, not 1e+300"),
    (["--drain-timeout", "86401"], "--drain-timeout must be from 0 to 86400, not 86401"),
    (["--meta-ttl", "1e300"], "--meta-ttl must be from 0 to 86400, not 1e+300"),
    (["--send-timeout", "1e12"], "--send-timeout must be from 0 to 86400, not 1e+12"),
    (["--readahead", "9" * 40], "--readahead must be from 1 to 1000000, not 1.00e+40"),
    (["--max-reads", "1000001"], "--max-reads must be from 0 to 1000000, not 1000001"),
])
def test_worker_numbers_out_of_range_are_refused(tmp_path, flags, why):
    with pytest.raises(ValueError) as refused:
        worker_config(tmp_path, "--master", MASTER, *flags)
    assert str(refused.value) == why


def test_worker_zeros_that_mean_something_are_accepted(tmp_path):
    config = worker_config(tmp_path, "--master", MASTER, "--capacity", "0", "--min-free", "0", "--drain-timeout",
                           "0", "--meta-ttl", "0", "--origin-deadline", "0", "--origin-breaker", "0",
                           "--egress-limit", "0", "--rebalance-rate", "0")
    assert (config.meta_ttl, config.origin_deadline, config.origin_breaker) == (0, 0, 0)


@pytest.mark.parametrize("deadline", ["0", "1", "15", "30", "31", "45", "600"])
def test_a_hung_earlier_holder_and_a_fill_from_s3_fit_in_the_peer_timeout(tmp_path, deadline):
    """A new owner's fill asks an earlier holder (a hung one costs it the holder timeout), then S3
    (up to --origin-deadline), while the peer that asked for the chunk waits the peer timeout: it
    must wait longer, or it fails the owner over for the holder's fault (test_serve_failures.py)."""
    config = worker_config(tmp_path, "--master", MASTER, "--origin-deadline", deadline)
    assert config.holder_timeout() + config.origin_deadline < config.peer_timeout()
    assert config.holder_timeout() <= 10


@pytest.mark.parametrize("deadline", ["0", "1", "15", "30", "31", "45", "600"])
def test_a_hung_primary_and_a_fill_from_s3_fit_in_the_peer_timeout(tmp_path, deadline):
    """A follower's fill asks its primary (a hung one costs it the primary timeout), then S3 (up
    to --origin-deadline), while the peer that asked it for the chunk waits the peer timeout: it
    must wait longer (test_serve_failures.py). A healthy primary may wait out a hung earlier holder
    before it asks S3: the follower waits for that, and for S3's first byte after it."""
    config = worker_config(tmp_path, "--master", MASTER, "--origin-deadline", deadline)
    assert config.primary_timeout() + config.origin_deadline < config.peer_timeout()
    assert config.primary_timeout() >= config.holder_timeout() + config.origin_read_timeout


def test_a_master_with_a_chunk_size_it_cannot_work_with_exits_with_one_line():
    result = run("master", "--listen", "127.0.0.1:0", "--chunk-size", "0")
    assert result.returncode == 2 and "ready" not in result.stdout
    assert result.stderr == "p2pcache master: --chunk-size must be from 64KiB to 1GiB, not 0B\n"


BIG = "9" * 400  # a float of it is infinite: sizes were parsed through float()
SIZE_RANGE = "must be from 0B to 2^63-1 bytes"


@pytest.mark.parametrize(("command", "flag", "value", "why"), [
    ("master", "--chunk-size", BIG, "must be from 64KiB to 1GiB, not 1.00e+400 bytes"),
    ("master", "--chunk-size", "100000000TiB", "must be from 64KiB to 1GiB, not 1.10e+20 bytes"),
    ("master", "--chunk-size", "2GiB", "must be from 64KiB to 1GiB, not 2GiB"),
    ("master", "--startup-grace", "1e12", "must be from 0 to 3600, not 1e+12"),
    ("master", "--worker-ttl", "1e12", "must be from 1 to 3600, not 1e+12"),
    ("master", "--replicas", BIG, "must be from 1 to 1000, not 1.00e+400"),
    ("master", "--vnodes", BIG, "must be from 1 to 1000, not 1.00e+400"),
    ("worker", "--capacity", BIG, f"{SIZE_RANGE}, not 1.00e+400 bytes"),
    ("worker", "--capacity", "100000000TiB", f"{SIZE_RANGE}, not 1.10e+20 bytes"),
    ("worker", "--capacity", str(1 << 63), f"{SIZE_RANGE}, not 9.22e+18 bytes"),
    ("worker", "--min-free", BIG, f"{SIZE_RANGE}, not 1.00e+400 bytes"),
    ("worker", "--egress-limit", BIG, f"{SIZE_RANGE}, not 1.00e+400 bytes"),
    ("worker", "--rebalance-rate", BIG, f"{SIZE_RANGE}, not 1.00e+400 bytes"),
    ("worker", "--weight", BIG, "must be from 1 to 100, not 1.00e+400"),
    ("local", "--chunk-size", BIG, "must be from 64KiB to 1GiB, not 1.00e+400 bytes"),
    ("local", "--capacity", BIG, f"{SIZE_RANGE}, not 1.00e+400 bytes"),
    ("local", "--demo-size", BIG, "must be from 0B to 5GiB, not 1.00e+400 bytes"),
    ("local", "--workers", BIG, "must be from 1 to 100, not 1.00e+400"),
])
@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_number_out_of_range_exits_2_with_one_line_naming_the_flag_and_its_range(tmp_path, command, flag, value,
                                                                                   why, given):
    args = {"master": ["master", "--listen", "127.0.0.1:0"], "worker": worker_args(tmp_path, "--master", MASTER),
            "local": ["local", "--port", "0"]}[command]
    result = run(*args, flag, value) if given == "flag" else run(*args, env={env_name(flag): value})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"p2pcache {command}: {flag} {why}\n"
    assert not (tmp_path / "cache").exists()


def test_a_master_at_the_largest_chunk_size_takes_a_worker_of_two_chunks(tmp_path):
    procs = []
    try:
        master = wait_ready(spawn(procs, ENV, "master", "--listen", "127.0.0.1:0", "--chunk-size", "1GiB",
                                  "--startup-grace", "0"))
        worker = wait_ready(spawn(procs, ENV, *worker_args(tmp_path, "--master", master, "--capacity", "2GiB",
                                                           "--min-free", "0", "--serve-processes", "1")))
        wait_joined([worker])
    finally:
        stop_all(procs)


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(("service", "processes"), [("master", None), ("worker", "1"), ("worker", "2")])
def test_a_service_that_cannot_listen_exits_with_one_line_and_releases_what_it_took(tmp_path, taken_port,
                                                                                    service, processes):
    extra = ["--master", MASTER, "--cache-dir", str(tmp_path), "--serve-processes", processes] if processes else []
    # 192.0.2.1 is a documentation address (RFC 5737): never one of this machine's.
    for listen, why in ((f"127.0.0.1:{taken_port}", "address already in use"),
                        ("192.0.2.1:29050", "cannot assign requested address")):
        result = run(service, "--listen", listen, *extra)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines()[-1] == f"p2pcache {service}: cannot listen on {listen}: {why}"
        assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr


def test_a_worker_restarts_on_its_port_with_serving_processes_after_running_without(tmp_path):
    """A worker of one process closes its idle connections when it stops: they wait in TIME_WAIT
    on its port for a minute. The same worker started again with serving processes reserves the
    port with SO_REUSEPORT, which a TIME_WAIT socket without it refused ("address already in
    use" for that minute): a one-process worker listens with SO_REUSEPORT too."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    procs = []
    try:
        master = wait_ready(spawn(procs, ENV, "master", "--listen", "127.0.0.1:0", "--startup-grace", "0"))
        flags = ["--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path), "--master", master,
                 "--drain-timeout", "0"]
        first = spawn(procs, ENV, "worker", *flags, "--serve-processes", "1")
        url = wait_ready(first)
        with socket.create_connection(("127.0.0.1", port)) as conn:  # kept alive: the worker closes it
            conn.sendall(b"GET /_p2p/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):  # all of it: unread bytes would make the close a reset
                answer += conn.recv(1000)
            assert answer.startswith(b"HTTP/1.1 200")
            first.terminate()
            assert first.wait(timeout=30) == 0
            assert conn.recv(100) == b""  # the worker closed first: its side waits in TIME_WAIT
        assert url.endswith(f":{port}")
        wait_ready(spawn(procs, ENV, "worker", *flags, "--serve-processes", "2"))
    finally:
        stop_all(procs)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_worker_does_not_share_a_port_another_workers_serving_processes_listen_on(tmp_path, processes):
    """SO_REUSEPORT lets sockets of one user share a port: the kernel would spread connections
    over both workers. A worker checks that the port is free first, with serving processes or
    without (a one-process worker listens with SO_REUSEPORT too)."""
    with socket.socket() as other:  # as another worker's serving process listens
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        listen = f"127.0.0.1:{other.getsockname()[1]}"
        result = run("worker", "--listen", listen, "--master", MASTER, "--cache-dir", str(tmp_path),
                     "--serve-processes", processes)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"p2pcache worker: cannot listen on {listen}: address already in use"


@pytest.mark.parametrize(("content", "why"), [
    (b"\xff\xfe\x00bad\n", "is not UTF-8 text"),
    (None, "cannot read the worker id file {path}: Is a directory"),  # a directory
    (b"", "holds '', not an id (id must be 1-128 characters of A-Z a-z 0-9 . _ -)"),
    (b"x/../w0\n", "holds 'x/../w0', not an id (id must be 1-128 characters of A-Z a-z 0-9 . _ -)"),
    (b"a" * 200, "holds '" + "a" * 40 + "...', not an id"),
])
def test_a_worker_whose_worker_id_file_is_bad_exits_with_one_line_naming_it(tmp_path, content, why):
    """The id kept in the cache dir follows --id's rule, before the worker registers: an id the
    master would refuse goes into its URLs too (its leave, `x/../w0`, was w0's)."""
    path = tmp_path / "cache" / "worker-id"
    path.parent.mkdir()
    path.mkdir() if content is None else path.write_bytes(content)
    result = run(*worker_args(tmp_path, "--master", MASTER))
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.splitlines()[-1]
    assert line.startswith("p2pcache worker: ") and why.format(path=path) in line, line
    assert str(path) in line and line.endswith(": remove it for a new id, or give --id")


def test_a_worker_the_master_refuses_exits_with_the_masters_reason(tmp_path):
    procs = []
    try:
        master = wait_ready(spawn(procs, ENV, "master", "--listen", "127.0.0.1:0", "--chunk-size", "1MiB",
                                  "--startup-grace", "0"))
        result = run(*worker_args(tmp_path, "--master", master, "--capacity", "1MiB", "--serve-processes", "2"))
    finally:
        stop_all(procs)
    assert result.returncode == 1 and "ready" not in result.stdout
    assert result.stderr.splitlines()[-1] == (
        f"p2pcache worker: the master at {master} refused this worker: invalid worker registration: "
        f"capacity must hold 2 chunks, {2 << 20} bytes at the master's --chunk-size 1MiB, not {1 << 20}")
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr


def test_the_eviction_help_names_every_policy():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (action,) = [a for a in parser._actions if "--eviction" in a.option_strings]
    assert set(action.choices) == set(POLICIES)
    assert all(re.search(rf"\b{name}\b", action.help) for name in POLICIES), action.help
