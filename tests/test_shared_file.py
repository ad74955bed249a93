"""One open file of the loader client read by several threads, and a client used after fork()."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading

import pytest

from conftest import CHUNK, wait_until
from p2pcache import SyncClient


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def on_threads(count: int, work) -> list:
    """`work(i)` on `count` threads at once; what each returned or raised."""
    results: list = [None] * count

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: B036 (what the work ended with is the result)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # a bound on a hang, not a timing assertion
    assert not any(t.is_alive() for t in threads), "a read hung"
    return results


async def test_threads_sharing_a_file_each_read_the_bytes_at_one_position(cluster, s3_client, bucket):
    """Reads and seeks from four threads at once returned bytes of two positions mixed, bytes
    twice (more than the object held), KeyError and CancelledError: they shared the position
    and the chunk table with no lock."""
    body = put(s3_client, bucket, "f.bin", 8 * CHUNK + 123, seed=1)

    def scenario() -> None:
        with SyncClient(cluster.master.url, prefetch=2) as client:
            with client.open(bucket, "f.bin") as f:
                def seek_and_read(i: int) -> list[bytes]:
                    rnd = random.Random(i)
                    out = []
                    for _ in range(25):
                        f.seek(rnd.randrange(len(body)))
                        out.append(f.read(rnd.randrange(1000, CHUNK + 5000)))
                    return out

                results = on_threads(4, seek_and_read)
                assert all(isinstance(result, list) for result in results), results
                got = [data for result in results for data in result]
                # another thread's seek or read may come between a seek and its read (as with any
                # shared file): each read is the bytes at one position, or none past the end
                assert all(body.find(data) >= 0 for data in got)  # random bytes: a mix is not found
                assert sum(map(len, got)) > 25 * 1000
            with client.open(bucket, "f.bin") as f:
                def read_on(i: int) -> list[bytes]:
                    return list(iter(lambda: f.read(10_000), b""))

                pieces = [p for result in on_threads(4, read_on) for p in result]
            at = sorted((body.find(p), len(p)) for p in pieces)
            assert sum(n for _, n in at) == len(body)  # each byte once
            assert all(a == b + n for (a, _), (b, n) in zip(at[1:], at)) and at[0][0] == 0

    await asyncio.to_thread(scenario)


async def test_offsets_that_are_not_integers_are_a_type_error(cluster, s3_client, bucket):
    """A float offset failed deep in a read with ctypes' ArgumentError; a float seek passed, and
    the next read failed."""
    put(s3_client, bucket, "f.bin", 100, seed=2)

    def scenario() -> None:
        with SyncClient(cluster.master.url) as client:
            for call in (lambda: client.read(bucket, "f.bin", 1.5), lambda: client.read(bucket, "f.bin", 0, 2.5),
                         lambda: client.read_into(bucket, "f.bin", bytearray(10), 1.5)):
                with pytest.raises(TypeError, match="float"):
                    call()
            with client.open(bucket, "f.bin") as f:
                with pytest.raises(TypeError, match="float"):
                    f.seek(1.5)
                assert f.tell() == 0

    await asyncio.to_thread(scenario)


async def test_a_client_used_in_a_fork_child_fails_at_once(cluster, s3_client, bucket):
    """A SyncClient made before fork() (a DataLoader's workers fork): its loop's thread is not in
    the child, and every call there, a close, and a file's read of a new chunk waited for good."""
    body = put(s3_client, bucket, "f.bin", 4 * CHUNK, seed=3)

    def scenario() -> list[str]:
        with SyncClient(cluster.master.url, prefetch=0) as client:
            f = client.open(bucket, "f.bin")
            assert f.read(10) == body[:10]  # chunk 0 is in the file, in memory
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: only what is needed, then out, whatever happens
                lines = []
                for name, call in (("read", lambda: client.read(bucket, "f.bin")),
                                   ("file", lambda: f.seek(3 * CHUNK) and f.read(10)),
                                   ("held", lambda: f.seek(0) == 0 and f.read(10) == body[:10]),
                                   ("close", client.close)):
                    try:
                        lines.append(f"{name}: returned {call()!r}")
                    except BaseException as exc:  # noqa: B036
                        lines.append(f"{name}: {type(exc).__name__}: {exc}")
                os.write(write, "\n".join(lines).encode())
                os._exit(0)
            os.close(write)
            try:  # a bound on a hang, not a timing assertion
                wait_until(lambda: os.waitpid(pid, os.WNOHANG) != (0, 0), 30, "the child to end (it hung)")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)  # the child this test forked
                os.waitpid(pid, 0)
                raise
            with os.fdopen(read, "rb") as out:
                lines = out.read().decode().splitlines()
            assert f.read(10) == body[10:20]  # the parent's client and file go on
            return lines

    lines = await asyncio.to_thread(scenario)
    assert lines[0].startswith("read: RuntimeError: this SyncClient was made in process"), lines
    assert lines[1].startswith("file: RuntimeError: reading s3://"), lines
    assert "before a fork()" in lines[1]
    assert lines[2:] == ["held: returned True", "close: returned None"], lines
