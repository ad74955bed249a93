"""Parallel ranged readers, run in their own process: a model loader's reads through the cluster or straight from S3.

    python -m loadtests.readers < plan.json      # prints one JSON line: seconds, bytes, requests, ...

A plan is `{"mode": "cluster" | "s3", "files": [[bucket, key, size], ...], "parts": [[file, start,
length], ...], "concurrency": N, "timeout": seconds}` plus, for the cluster, `"urls"`, `"master"` and
`"routing"` (`spread`: parts dealt over the workers in turn; `owner`: each part to its chunk's owner,
computed from the ring; `client`: `p2pcache.Client.read`, the loader client) and, for S3,
`"endpoint"`; optionally `"start_at"`, a wall-clock time (`time.time()`) to wait for once set up,
so that several readers start together. Every part is checked for its status and length; any
failure ends the run with an error. The reader runs in a process of its own so that it does not
share a GIL with the embedded S3 server or the harness.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .datasets import File

__all__ = ["run_reader", "run_readers", "main"]

PIECE = 1 << 20


def run_reader(plan: dict) -> dict:
    """Run a plan in a child process (bounded by the plan's timeout) and return its result."""
    return run_readers([plan])[0]


def run_readers(plans: list[dict]) -> list[dict]:
    """Each plan in a child process of its own, all at once; their results, in order.

    Whatever stops the wait (a reader failing, its timeout, Ctrl-C, SIGTERM) kills every reader
    still running: the threads that wait for them cannot be interrupted, the readers can.
    """
    from .harness import held

    procs: list[subprocess.Popen] = []
    pool = ThreadPoolExecutor(len(plans))
    try:
        for _ in plans:
            with held():
                procs.append(_start_reader())
        return list(pool.map(_reader_result, procs, plans))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        pool.shutdown()


def _start_reader() -> subprocess.Popen:
    from p2pcache.service import die_with_parent

    from .harness import ROOT, clean_env

    env = clean_env() | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "loadtests.readers"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True,
                            preexec_fn=die_with_parent)


def _reader_result(proc: subprocess.Popen, plan: dict) -> dict:
    plan = plan | {"files": [[f.bucket, f.key, f.size] for f in plan["files"]]}
    try:
        out, err = proc.communicate(json.dumps(plan), timeout=plan["timeout"] + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"reader still running after {plan['timeout'] + 30} s") from None
    if proc.returncode:
        raise RuntimeError(f"reader failed ({proc.returncode}): {err.strip()[-1500:]}")
    return json.loads(out.strip().splitlines()[-1])


def _check(status: int, got: int, want: int, where: str) -> None:
    if status not in (200, 206) or got != want:
        raise RuntimeError(f"{where}: status {status}, {got} bytes instead of {want}")


async def _read_with_client(plan: dict, files: list[File]) -> int:
    from p2pcache import Client

    queue = list(reversed(plan["parts"]))
    total = 0

    async def one_stream(client: Client) -> None:
        nonlocal total
        while queue:
            i, start, length = queue.pop()
            f = files[i]
            data = await client.read(f.bucket, f.key, start, start + length)
            _check(206, len(data), length, f"Client.read {f.path} [{start}, {start + length})")
            total += len(data)

    async with Client(plan["master"], concurrency=plan["concurrency"]) as client:
        await asyncio.wait_for(asyncio.gather(*(one_stream(client) for _ in range(plan["concurrency"]))),
                               plan["timeout"])
    return total


def _owner_routes(plan: dict, files: list[File]) -> list[str]:
    """The owner's URL for each part, computed from the master's ring (each part inside one chunk)."""
    from .placement import Owners

    owners = Owners(plan["master"], plan["urls"][0], files)
    return [owners.owner(files[i], start) for i, start, _ in plan["parts"]]


async def _read_cluster(plan: dict, files: list[File], routes: list[str] | None) -> int:
    import aiohttp

    if plan["routing"] == "client":
        return await _read_with_client(plan, files)
    urls = plan["urls"]
    if routes is not None:
        route = lambda n, f, start: routes[n]  # noqa: E731
    else:
        route = lambda n, f, start: urls[n % len(urls)]  # noqa: E731
    queue = list(enumerate(plan["parts"]))
    queue.reverse()
    total = 0

    async def one_stream(session: aiohttp.ClientSession) -> None:
        nonlocal total
        while queue:
            n, (i, start, length) = queue.pop()
            f = files[i]
            url = f"{route(n, f, start)}{f.path}"
            headers = {"Range": f"bytes={start}-{start + length - 1}"}
            async with session.get(url, headers=headers) as resp:
                got = 0
                async for piece in resp.content.iter_chunked(PIECE):
                    got += len(piece)
                _check(resp.status, got, length, f"GET {url} {headers['Range']}")
            total += got

    conn = aiohttp.TCPConnector(limit=plan["concurrency"], limit_per_host=plan["concurrency"])
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False) as session:
        await asyncio.wait_for(asyncio.gather(*(one_stream(session) for _ in range(plan["concurrency"]))),
                               plan["timeout"])
    return total


def _s3_client(plan: dict):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=plan["endpoint"], region_name="us-east-1",
                        config=Config(max_pool_connections=plan["concurrency"], retries={"max_attempts": 1}))


def _read_s3(plan: dict, files: list[File], client) -> int:
    lock, total = threading.Lock(), [0]

    def part(i: int, start: int, length: int) -> None:
        f = files[i]
        rng = f"bytes={start}-{start + length - 1}"
        resp = client.get_object(Bucket=f.bucket, Key=f.key, Range=rng)
        got, body = 0, resp["Body"]
        while piece := body.read(PIECE):
            got += len(piece)
        _check(resp["ResponseMetadata"]["HTTPStatusCode"], got, length, f"S3 GET {f.path} {rng}")
        with lock:
            total[0] += got

    pool = ThreadPoolExecutor(plan["concurrency"])
    futures = [pool.submit(part, *p) for p in plan["parts"]]
    done, pending = wait(futures, timeout=plan["timeout"], return_when=FIRST_EXCEPTION)
    for fut in done:
        fut.result()  # the first error, if any
    if pending:
        raise TimeoutError(f"{len(pending)} ranges still unread after {plan['timeout']}s")
    pool.shutdown()
    return total[0]


def main() -> int:
    plan = json.load(sys.stdin)
    files = [File(*f) for f in plan["files"]]
    # Set up before the clock starts, as a running loader would be: the S3 client (boto3
    # loads its service model), or the modules of the cluster readers and the owners.
    if plan["mode"] == "s3":
        client = _s3_client(plan)
        read = lambda: _read_s3(plan, files, client)  # noqa: E731
    else:
        uvloop = importlib.import_module("uvloop")
        for name in ("aiohttp", "p2pcache.client" if plan["routing"] == "client" else "p2pcache.ring"):
            importlib.import_module(name)
        routes = _owner_routes(plan, files) if plan["routing"] == "owner" else None
        read = lambda: uvloop.run(_read_cluster(plan, files, routes))  # noqa: E731
    if plan.get("start_at"):
        time.sleep(max(0.0, plan["start_at"] - time.time()))
    started_at, start = time.time(), time.perf_counter()
    total = read()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "bytes": total, "requests": len(plan["parts"]),
                      "bytes_s": total / seconds, "routing": plan.get("routing", "direct"),
                      "started_at": started_at, "ended_at": started_at + seconds}), flush=True)
    return 0

if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line for the harness, not a traceback per thread
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)  # do not wait for the pool's threads
