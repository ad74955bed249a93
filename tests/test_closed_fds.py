"""Commands started with stdin, stdout or stderr closed (`<&-`) run as usual: libuv aborted the process
(`uv__close: Assertion 'fd > STDERR_FILENO' failed`, exit 134) when a socket took one of those numbers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys

import pytest

from conftest import cli_env

UNREACHABLE = "http://127.0.0.1:9"
NO_ADDRESS = "192.0.2.1:29050"  # a documentation address (RFC 5737): never one of this machine's


def run(closed: int, *args: str) -> subprocess.CompletedProcess:
    """`p2pcache ARGS` as its own process, started with fd `closed` closed."""
    return subprocess.run([sys.executable, "-m", "p2pcache", *args], capture_output=True, timeout=60,
                          env=cli_env(), preexec_fn=lambda: os.close(closed))


GET = ["get", "s3://b/k", "--master", UNREACHABLE, "-o", "{tmp}/out"]


@pytest.mark.parametrize("closed, args, line", [
    (0, GET, "p2pcache get: master at http://127.0.0.1:9"),
    (1, GET, "p2pcache get: master at http://127.0.0.1:9"),
    (2, GET, ""),
    (0, ["sync", "s3://b/p/", "{tmp}/d", "--master", UNREACHABLE], "p2pcache sync: master at http://127.0.0.1:9"),
    (0, ["master", "--listen", NO_ADDRESS], f"p2pcache master: cannot listen on {NO_ADDRESS}"),
    (1, ["worker", "--listen", NO_ADDRESS, "--master", UNREACHABLE, "--cache-dir", "{tmp}/c",
         "--serve-processes", "1"], f"p2pcache worker: cannot listen on {NO_ADDRESS}"),
], ids=["get-stdin", "get-stdout", "get-stderr", "sync-stdin", "master-stdin", "worker-stdout"])
def test_a_command_with_a_standard_fd_closed_fails_or_runs_as_it_would_with_it_open(tmp_path, closed, args, line):
    result = run(closed, *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""  # what goes to a closed stderr is not written to stdout either
    if line:
        assert result.stderr.decode().splitlines()[-1].startswith(line), result.stderr


async def test_p2pcache_get_to_a_closed_stdout_fails_and_to_a_file_works(cluster, s3_client, bucket, tmp_path):
    body = random.Random(3).randbytes(1000)
    s3_client.put_object(Bucket=bucket, Key="k", Body=body)
    url, master = f"s3://{bucket}/k", ["--master", cluster.master.url]
    result = await asyncio.to_thread(run, 1, "get", url, *master)
    assert result.returncode == 1 and result.stderr == b"p2pcache get: [Errno 9] stdout is closed: give -o FILE\n"
    for closed in (0, 1, 2):
        result = await asyncio.to_thread(run, closed, "get", url, *master, "-o", str(tmp_path / f"out{closed}"))
        assert result.returncode == 0 and (tmp_path / f"out{closed}").read_bytes() == body, result.stderr

