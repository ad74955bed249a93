"""Closing a client while other threads read: `SyncClient.close()` fails each call in flight with the
closed client's error once it has unwound, and no file it was reading waits for a chunk that cannot
come; nor does a file of an async `Client` that closes."""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import pytest

from conftest import CHUNK, wait_until
from p2pcache import Client, SyncClient


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def outcome(call) -> BaseException | str:
    try:
        call()
        return "returned"
    except BaseException as exc:  # noqa: B036 (what the call ended with is the result)
        return exc


def in_threads(calls: dict) -> tuple[dict, list[threading.Thread]]:
    """Each of `calls` started on a thread of its own; their outcomes land in the dict as they end."""
    results: dict = {}
    threads = [threading.Thread(target=lambda n=name, c=call: results.__setitem__(n, outcome(c)), daemon=True)
               for name, call in calls.items()]
    for t in threads:
        t.start()
    return results, threads


def ended(threads: list[threading.Thread]) -> bool:
    for t in threads:
        t.join(15)  # a bound on a hang (they hung for good), not a timing assertion
    return not any(t.is_alive() for t in threads)


async def test_close_fails_the_calls_in_flight_on_other_threads_once_unwound(
        cluster_factory, fault_proxy, s3_client, bucket, tmp_path, caplog):
    """A download and a read were under way when close() was called: they hung for good, the
    download's temp file stayed, and the loop's pending tasks were destroyed with tracebacks."""
    fault_proxy.get_mode = "stall"  # S3 stalls every body: the calls stay under way
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put(s3_client, bucket, "d.bin", 2 * CHUNK, seed=1)
    put(s3_client, bucket, "r.bin", 2 * CHUNK, seed=2)
    out = tmp_path / "out"
    out.mkdir()

    def scenario() -> dict:
        client = SyncClient(cluster.master.url)
        results, threads = in_threads({"download": lambda: client.download(bucket, "d.bin", out / "d.bin"),
                                       "read": lambda: client.read(bucket, "r.bin")})
        wait_until(lambda: fault_proxy.stalling >= 4 and list(out.glob(".d.bin.*.part")), 15,
                   "both calls to wait on S3")
        client.close()
        assert ended(threads), results
        results["after"] = outcome(lambda: client.read(bucket, "r.bin"))
        return results

    results = await asyncio.to_thread(scenario)
    for name, result in results.items():
        assert isinstance(result, ValueError) and str(result) == "the client is closed", (name, result)
    assert list(out.iterdir()) == []  # the download's temp file went before it failed
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_a_files_chunk_being_fetched_when_its_client_closes_fails_the_read(
        cluster_factory, fault_proxy, s3_client, bucket):
    """The chunk's fetch was left pending on a closed loop: the read waited for it forever."""
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put(s3_client, bucket, "f.bin", 6 * CHUNK, seed=3)

    def scenario() -> tuple[dict, dict]:
        client = SyncClient(cluster.master.url, prefetch=2)
        assert client.read(bucket, "f.bin", 0, 1)  # chunk 0 is cached; S3 stalls any other
        fault_proxy.get_mode = "stall"
        f = client.open(bucket, "f.bin")
        assert len(f.read(1)) == 1  # and chunks 1 and 2 are being fetched
        wait_until(lambda: fault_proxy.stalling >= 2, 15, "the next chunks to wait on S3")
        client.close()
        results, threads = in_threads({"fetching": lambda: f.seek(CHUNK + 5) and f.read(10),
                                       "never started": lambda: f.seek(5 * CHUNK) and f.read(10)})
        assert ended(threads), results
        return results

    for name, result in (await asyncio.to_thread(scenario)).items():
        assert isinstance(result, ValueError), (name, result)
        assert str(result) == f"reading s3://{bucket}/f.bin: the client is closed", (name, result)


def test_bad_arguments_are_refused_before_a_loop_thread_starts():
    """The thread was started first, and ran on with nothing to stop it."""
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        SyncClient("http://127.0.0.1:1", concurrency=0)
    assert not [t for t in set(threading.enumerate()) - before if t.name == "p2pcache-client"]


async def test_an_async_clients_file_fails_its_read_in_flight_when_the_client_closes(
        cluster_factory, fault_proxy, s3_client, bucket):
    """`Client.close()` (async) while another thread's read of an open file waits for a chunk:
    the read fails with the closed client's error, as with SyncClient. The fetch ran on after the
    close and ended in whatever the closed session gave it first."""
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put(s3_client, bucket, "f.bin", 4 * CHUNK, seed=4)
    async with Client(cluster.master.url, prefetch=0) as client:
        assert await client.read(bucket, "f.bin", 0, 1)  # chunk 0 is cached; S3 stalls any other
        fault_proxy.get_mode = "stall"
        f = await client.open(bucket, "f.bin")
        reading = asyncio.create_task(asyncio.to_thread(lambda: outcome(lambda: f.seek(CHUNK + 5) and f.read(10))))
        await asyncio.to_thread(wait_until, lambda: fault_proxy.stalling >= 1, 15, "the chunk to wait on S3")
    result = await asyncio.wait_for(reading, 15)  # a bound on a hang, not a timing assertion
    assert isinstance(result, ValueError), result
    assert str(result) == f"reading s3://{bucket}/f.bin: the client is closed"
