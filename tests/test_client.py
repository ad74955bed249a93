"""The loader client: reads go to each chunk's owner, survive a worker dying, and `p2pcache get`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import mmap
import os
import random
import re
import signal
import sys
import threading
from collections import Counter
from unittest import mock

import aiohttp
import pytest

from conftest import CHUNK, cli_env, metric, p2pcache_get, wait_for
from master.config import MasterConfig
from master.server import Master
from p2pcache import Client, SyncClient
from p2pcache.errors import NotFound, ObjectChanged, Unavailable


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def owners_of(client: Client, info, chunks: range) -> list[str]:
    return [client.placement.owners(info.chunk(i, CHUNK))[0].id for i in chunks]


async def test_each_chunk_is_requested_from_its_owner(cluster, s3_client, bucket):
    size = 9 * CHUNK + 12345  # 10 chunks, the last one short
    body = put(s3_client, bucket, "model.bin", size, seed=1)
    async with Client(cluster.master.url) as client:
        assert client.placement.ring.version == cluster.master.membership.ring.version
        assert await client.read(bucket, "model.bin") == body
        info = await client.stat(bucket, "model.bin")
        owned = Counter()
        for i, owner in enumerate(owners_of(client, info, range(10))):
            owned[owner] += info.chunk(i, CHUNK).length
    assert len(owned) >= 2 and sum(owned.values()) == size
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:  # each owner filled exactly its chunks; no worker asked a peer
            assert await metric(http, w.url, "p2pcache_peer_bytes_total") == 0
            assert await metric(http, w.url, "p2pcache_origin_bytes_total") == owned[w.id]


async def test_ranges_are_clamped_and_split_at_chunk_boundaries(cluster, s3_client, bucket):
    size = 3 * CHUNK + 10
    body = put(s3_client, bucket, "r.bin", size, seed=2)
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    async with Client(cluster.master.url, concurrency=2) as client:
        for start, end in [(0, 1), (CHUNK - 1, CHUNK + 1), (5, 3 * CHUNK + 5), (size - 3, None),
                           (100, size + 1000), (size, None), (size + 5, size + 9), (7, 7)]:
            assert await client.read(bucket, "r.bin", start, end) == body[start:end]
        assert await client.read(bucket, "empty") == b""
        assert (await client.stat(bucket, "r.bin")).size == size


async def test_a_missing_object_or_bucket_is_not_found(cluster, bucket):
    async with Client(cluster.master.url) as client:
        with pytest.raises(NotFound) as exc:
            await client.read(bucket, "no/such/key")
        assert exc.value.code == "NoSuchKey"
        with pytest.raises(NotFound) as exc:
            await client.stat("no-such-bucket-p2p", "k")
        assert exc.value.code == "NoSuchBucket"


def busiest(cluster, owners: list[str]):
    """The worker owning the most of `owners` (a third of them at least, by pigeonhole)."""
    return max(cluster.workers, key=lambda w: owners.count(w.id))


async def test_a_read_survives_a_worker_stopping_part_way(cluster, s3_client, bucket):
    n = 24
    body = put(s3_client, bucket, "big.bin", n * CHUNK, seed=3)
    stopping: list[asyncio.Task] = []

    def progress(done: int, total: int) -> None:  # stop a worker a third of the way through
        if done >= total // 3 and not stopping:
            stopping.append(asyncio.ensure_future(victim.stop(leave=False)))

    async with Client(cluster.master.url, concurrency=1) as client:
        info = await client.stat(bucket, "big.bin")
        owners = owners_of(client, info, range(n))
        victim = busiest(cluster, owners[n // 2:])  # it owns chunks still to come when it stops
        out = cluster.root / "big.out"
        await client.download(bucket, "big.bin", out, progress)
        await stopping[0]
    assert not victim.running and out.read_bytes() == body
    async with aiohttp.ClientSession() as http:  # the victim's later chunks were filled by the others
        live = [w for w in cluster.workers if w is not victim]
        filled = sum([await metric(http, w.url, "p2pcache_origin_bytes_total") for w in live])
    assert filled > sum(CHUNK for o in owners if o != victim.id)


async def test_a_file_read_chunk_by_chunk_survives_a_worker_stopping(cluster, s3_client, bucket):
    n = 16
    body = put(s3_client, bucket, "seq.bin", n * CHUNK, seed=4)
    async with Client(cluster.master.url, concurrency=1, prefetch=1) as client:
        f = await client.open(bucket, "seq.bin")
        victim = busiest(cluster, owners_of(client, f.info, range(5, n)))  # chunks read after it stops
        head = [await asyncio.to_thread(f.read, CHUNK) for _ in range(4)]
        await victim.stop(leave=False)
        rest = await asyncio.to_thread(f.read)
        f.close()
    assert b"".join(head) + rest == body


async def test_file_object_seeks_reads_and_eof(cluster, s3_client, bucket):
    size = 5 * CHUNK + 777
    body = put(s3_client, bucket, "f.bin", size, seed=5)

    def scenario() -> None:  # synchronous code, as a loader would run it
        with SyncClient(cluster.master.url, prefetch=2) as client:
            with client.open(bucket, "f.bin") as f:
                assert f.seekable() and f.readable() and not f.writable() and f.size == size
                rnd = random.Random(6)
                for _ in range(60):
                    a, n = rnd.randrange(size + 10), rnd.randrange(2 * CHUNK)
                    assert f.seek(a) == a
                    assert f.read(n) == body[a:a + n]
                    assert f.tell() == max(a, min(a + n, size))
                f.seek(-5, io.SEEK_END)
                assert f.read(100) == body[-5:] and f.read(1) == b"" and f.read() == b""
                f.seek(size + 100)
                assert f.read(10) == b""
                f.seek(CHUNK - 2)
                assert f.read() == body[CHUNK - 2:]
            with io.BufferedReader(client.open(bucket, "f.bin"), buffer_size=64 << 10) as b:
                assert b.read(10) == body[:10]
                b.seek(CHUNK - 3)
                assert b.read(6) == body[CHUNK - 3:CHUNK + 3]
                assert b.readline() == body[CHUNK + 3:body.index(b"\n", CHUNK + 3) + 1]
                b.seek(2 * CHUNK)
                assert b.read() == body[2 * CHUNK:] and b.read() == b"" and b.tell() == size
            assert client.read(bucket, "f.bin", 100, 200) == body[100:200]

    await asyncio.to_thread(scenario)


async def test_a_file_read_on_its_clients_loop_raises_rather_than_deadlock(cluster, s3_client, bucket):
    put(s3_client, bucket, "x.bin", 1000, seed=7)
    async with Client(cluster.master.url) as client:
        with await client.open(bucket, "x.bin") as f:
            with pytest.raises(RuntimeError, match="thread other than"):
                f.read(10)


async def test_a_changed_object_is_never_mixed_with_the_old_one(cluster, s3_client, bucket):
    old = put(s3_client, bucket, "v.bin", 4 * CHUNK, seed=8)
    async with Client(cluster.master.url, prefetch=0) as client:
        f = await client.open(bucket, "v.bin")
        assert await asyncio.to_thread(f.read, 10) == old[:10]
        assert await client.read(bucket, "v.bin", 0, 10) == old[:10]  # caches the old ETag
        new = put(s3_client, bucket, "v.bin", 4 * CHUNK, seed=9)
        f.seek(3 * CHUNK)  # a chunk no one has read: only the new version is at S3
        with pytest.raises(ObjectChanged):
            await asyncio.to_thread(f.read, 10)
        # A plain read whose cached ETag went stale starts over on the new version.
        assert await client.read(bucket, "v.bin", 2 * CHUNK, 4 * CHUNK) == new[2 * CHUNK:]
        f.close()


async def test_download_writes_an_identical_file_and_reports_progress(cluster, s3_client, bucket, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    size = 7 * CHUNK + 3
    body = put(s3_client, bucket, "d.bin", size, seed=10)
    seen: list[tuple[int, int]] = []
    async with Client(cluster.master.url, concurrency=3) as client:
        info = await client.download(bucket, "d.bin", out / "d.bin", lambda d, t: seen.append((d, t)))
        await client.download(bucket, "d.bin", out / "part.bin", start=CHUNK - 1, end=3 * CHUNK + 1)
        with pytest.raises(NotFound):
            await client.download(bucket, "missing", out / "missing.bin")
        (out / "a-dir").mkdir()
        with pytest.raises(IsADirectoryError) as is_dir:  # refused before a byte is read, naming the target
            await client.download(bucket, "d.bin", out / "a-dir")
        assert is_dir.value.filename == str(out / "a-dir")
    assert (out / "d.bin").read_bytes() == body and info.size == size
    assert (out / "part.bin").read_bytes() == body[CHUNK - 1:3 * CHUNK + 1]
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sorted(p.name for p in out.iterdir()) == ["a-dir", "d.bin", "part.bin"]  # no temp files left


async def test_p2pcache_get_writes_the_object_or_a_range(cluster, s3_client, bucket, tmp_path):
    size = 3 * CHUNK + 99
    body = put(s3_client, bucket, "dir/g.bin", size, seed=11)
    master = ["--master", cluster.master.url]
    url = f"s3://{bucket}/dir/g.bin"

    code, _, err = await p2pcache_get(url, "-o", str(tmp_path / "all"), *master)
    assert (code, err) == (0, "") and (tmp_path / "all").read_bytes() == body
    code, _, err = await p2pcache_get(url, "-o", str(tmp_path / "r"), "--range", f"10-{CHUNK + 5}", *master)
    assert code == 0 and (tmp_path / "r").read_bytes() == body[10:CHUNK + 6]
    code, out, err = await p2pcache_get(url, "--range", f"{CHUNK - 1}-", "--progress", *master)
    assert code == 0 and out == body[CHUNK - 1:]
    assert err.startswith("\r") and err.endswith("\n") and "(100%)" in err  # a progress line on stderr
    code, out, _ = await p2pcache_get(url, "--range", "-5", *master)
    assert code == 0 and out == body[-5:]


@pytest.mark.parametrize("args, message", [
    (["s3://{bucket}/missing"], "no such object: s3://{bucket}/missing"),
    (["s3://no-such-bucket-p2p/k"], "no such bucket: no-such-bucket-p2p"),
    (["s3://{bucket}/g.bin", "--range", "999999-"], "range 999999- is outside the object (100 bytes)"),
    (["s3://{bucket}/g.bin", "-o", "/nonexistent-dir/out"], "No such file or directory"),
])
async def test_p2pcache_get_fails_with_one_line_and_exit_code_1(cluster, s3_client, bucket, args, message):
    put(s3_client, bucket, "g.bin", 100, seed=12)
    code, out, err = await p2pcache_get(*[a.format(bucket=bucket) for a in args], "--master", cluster.master.url)
    assert code == 1 and out == b""
    assert err.count("\n") == 1 and err.startswith("p2pcache get: ") and "Traceback" not in err
    assert message.format(bucket=bucket) in err


@pytest.mark.parametrize("args, message", [
    (["s3://{bucket}", "--master", "{master}"], "names no object: use s3://bucket/key"),
    (["s3://{bucket}/", "--master", "{master}"], "names no object: use s3://bucket/key"),
    (["{bucket}/g.bin", "--master", "{master}"], "'{bucket}/g.bin' is not an s3://bucket/key URL"),
    (["http://{bucket}/g.bin", "--master", "{master}"], "'http://{bucket}/g.bin' is not an s3://bucket/key URL"),
    (["s3://{bucket}/g.bin", "--master", "notaurl"], "--master: url 'notaurl' must be http:// or https://"),
    (["s3://{bucket}/g.bin", "--master", "{master}/x"], "--master: url '{master}/x' must not have a path"),
    (["s3://{bucket}/g.bin", "--master", "{master}", "--range", "x"], "invalid range 'x'"),
    (["s3://{bucket}/g.bin", "--master", "{master}", "--range", "5-2"], "range '5-2' selects no byte"),
    (["s3://{bucket}/g.bin", "--master", "{master}", "--range", "-0"], "range '-0' selects no byte"),
    (["s3://{bucket}/g.bin", "--master", "{master}", "--concurrency", "0"],
     "--concurrency: must be a whole number of at least 1, not '0'"),
    (["s3://{bucket}/g.bin", "--master", "{master}", "--concurrency", "-1"], "--concurrency: must be a whole number"),
])
async def test_p2pcache_get_with_bad_arguments_exits_2(cluster, s3_client, bucket, args, message):
    put(s3_client, bucket, "g.bin", 100, seed=12)  # there to be read, were the arguments taken
    code, out, err = await p2pcache_get(*[a.format(bucket=bucket, master=cluster.master.url) for a in args])
    assert (code, out) == (2, b"") and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("p2pcache get: error: argument ") and \
        message.format(bucket=bucket, master=cluster.master.url) in err, err


async def test_p2pcache_get_without_a_reachable_master_fails_with_one_line(bucket):
    code, _, err = await p2pcache_get(f"s3://{bucket}/k", "--master", "http://127.0.0.1:9")
    assert code == 1 and err == ("p2pcache get: master at http://127.0.0.1:9 unreachable: Cannot connect to host "
                                 "127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]\n")


async def test_an_empty_key_is_refused_at_once_without_blaming_a_worker(cluster, s3_client, bucket, caplog):
    """HEAD /bucket/ is S3's HeadBucket, whose answer has no ETag: no worker is asked for it."""
    put(s3_client, bucket, "k.bin", 10, seed=3)
    async with Client(cluster.master.url) as client:
        for call in (client.read(bucket, ""), client.stat(bucket, ""), client.read_into(bucket, "", bytearray(4)),
                     client.open(bucket, ""), client.download(bucket, "", "/nonexistent-dir/x")):
            with pytest.raises(ValueError, match=f"s3://{bucket}/ names no object: the key is empty"):
                await call
        assert await client.read(bucket, "k.bin", 0, 2)  # the client is fine
    assert "trying the next worker" not in caplog.text and "without ETag" not in caplog.text


async def test_many_concurrent_reads_share_one_client(cluster, s3_client, bucket):
    size = 6 * CHUNK
    body = put(s3_client, bucket, "c.bin", size, seed=13)
    async with Client(cluster.master.url, concurrency=4) as client:
        rnd = random.Random(14)
        ranges = [(a, a + rnd.randrange(3 * CHUNK)) for a in (rnd.randrange(size) for _ in range(40))]
        results = await asyncio.gather(*(client.read(bucket, "c.bin", a, b) for a, b in ranges))
    assert results == [body[a:b] for a, b in ranges]
    with pytest.raises(ValueError, match="closed"):
        await client.read(bucket, "c.bin")


async def test_keys_that_need_quoting_are_read_as_named(cluster, s3_client, bucket):
    keys = ["dir/a b+c.bin", "dir/%41 literal percent.bin", "unicodé/ß/файл.bin", "q?x=1#frag.bin"]
    bodies = {key: put(s3_client, bucket, key, CHUNK + 100 + i, seed=20 + i) for i, key in enumerate(keys)}
    async with Client(cluster.master.url) as client:
        for key, body in bodies.items():
            assert await client.read(bucket, key) == body, key


async def test_reads_go_on_without_the_master_and_the_client_follows_a_restarted_one(
        cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(2, heartbeat=0.2)
    body = put(s3_client, bucket, "m.bin", 3 * CHUNK, seed=30)
    port = int(cluster.master.url.rsplit(":", 1)[1])
    async with Client(cluster.master.url) as client:
        old = client.placement.ring.master_id
        await cluster.master.stop()
        assert await client.read(bucket, "m.bin") == body  # the master is never on the data path
        cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=0.5,
                                             cluster_secret=cluster.secret))
        await cluster.master.start()
        await wait_for(lambda: client.placement.ring.master_id != old and len(client.placement.workers) == 2,
                       what="the client to follow the restarted master")
        assert await client.read(bucket, "m.bin", 5, 2 * CHUNK) == body[5:2 * CHUNK]


async def test_read_into_fills_a_callers_buffer_chunk_by_chunk(cluster, s3_client, bucket):
    size = 4 * CHUNK + 321
    body = put(s3_client, bucket, "into.bin", size, seed=21)
    async with Client(cluster.master.url, concurrency=3) as client:
        buf = bytearray(size + 100)
        assert await client.read_into(bucket, "into.bin", buf) == size
        assert buf[:size] == body and buf[size:] == bytes(100)
        with mmap.mmap(-1, 2 * CHUNK) as m:  # any writable buffer: the body lands in its place
            assert await client.read_into(bucket, "into.bin", m, CHUNK - 7) == 2 * CHUNK
            assert m[:] == body[CHUNK - 7:3 * CHUNK - 7]
        assert await client.read_into(bucket, "into.bin", bytearray(10), size) == 0
        with pytest.raises(ValueError, match="writable"):
            await client.read_into(bucket, "into.bin", b"read-only")

    def sync_read_into() -> tuple[int, bytearray]:
        with SyncClient(cluster.master.url, raw_http=False) as sync:  # the aiohttp path fills buffers too
            buf = bytearray(size)
            return sync.read_into(bucket, "into.bin", buf), buf

    assert await asyncio.to_thread(sync_read_into) == (size, body)


async def test_p2pcache_get_into_a_directory_fails_naming_it_and_leaves_nothing(cluster, s3_client, bucket, tmp_path):
    put(s3_client, bucket, "g.bin", 3 * CHUNK, seed=12)
    target = tmp_path / "out" / "d"
    target.mkdir(parents=True)
    code, _, err = await p2pcache_get(f"s3://{bucket}/g.bin", "-o", str(target), "--master", cluster.master.url)
    assert code == 1 and err == f"p2pcache get: Is a directory: {target}\n"
    assert [p.name for p in target.parent.iterdir()] == ["d"] and not list(target.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_p2pcache_get_stopped_by_a_signal_removes_its_temp_file(
        cluster_factory, fault_proxy, s3_client, bucket, tmp_path, sig):
    fault_proxy.script = ["stall"] * 100  # S3 stalls every body: the download stays under way
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put(s3_client, bucket, "s.bin", 2 * CHUNK, seed=15)
    out = tmp_path / "out"
    out.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "get", f"s3://{bucket}/s.bin", "-o", str(out / "s.bin"),
        "--master", cluster.master.url, stderr=asyncio.subprocess.PIPE)
    await wait_for(lambda: fault_proxy.stalling and list(out.glob(".s.bin.*.part")), what="the download to start")
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + sig and err == b"" and not list(out.iterdir())


async def test_a_cancelled_download_write_ends_before_its_file_can_be_closed():
    """`download` closes its temp file when cancelled; a write still running in its thread on that
    descriptor number could land in whatever file reuses it. `_on_fd` returns only once it ended,
    however often it is cancelled."""
    from p2pcache.client import _on_fd

    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def slow_write(fd: int) -> None:
        started.set()
        release.wait(5)  # a write still running when its caller is cancelled
        ended.set()

    task = asyncio.ensure_future(_on_fd(slow_write, 99))
    await asyncio.to_thread(started.wait, 5)
    for _ in range(2):  # a second cancellation (a runner cancelling what is left) waits too
        task.cancel()
        await asyncio.sleep(0)  # the cancellation is delivered
        assert not task.done()  # it waits for the write
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()


@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_download_cancelled_while_its_temp_file_opens_ends_after_the_undo(cluster, s3_client, bucket,
                                                                                   tmp_path, cancels):
    """Cancelled while its temp file opens in a thread, the download ends only once that open has
    ended and been undone, however often it is cancelled meanwhile (a runner cancelling what is
    left): a process that exits as soon as it has stopped a download (fsspec's get cancels the rest
    of a batch when one copy fails) leaves no .part behind."""
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    started, release = threading.Event(), threading.Event()
    real_open, out = os.open, tmp_path / "downloads"
    out.mkdir()

    def slow_open(path, flags, mode=0o777):
        if str(path).endswith(".part"):
            started.set()
            release.wait(5)  # an open still running when its caller is cancelled
        return real_open(path, flags, mode)

    async with Client(cluster.master.url) as client:
        with mock.patch("os.open", slow_open):
            task = asyncio.ensure_future(client.download(bucket, "empty", out / "empty"))
            await asyncio.to_thread(started.wait, 5)
            for _ in range(cancels):
                task.cancel()
                for _ in range(3):  # deliver the cancellation
                    await asyncio.sleep(0)
                assert not task.done()  # it waits for its open
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert list(out.iterdir()) == []  # at once: nothing queued still to undo


@pytest.mark.parametrize(("url", "options", "why"), [
    ("http://127.0.0.1:7070/ring", {}, "master_url: url 'http://127.0.0.1:7070/ring' must not have a path, query or "
                                       "fragment"),
    ("127.0.0.1:7070", {}, "master_url: url '127.0.0.1:7070' must be http:// or https://"),
    ("http://127.0.0.1:7070", {"concurrency": 0}, "concurrency must be at least 1, not 0"),
    ("http://127.0.0.1:7070", {"prefetch": -1}, "prefetch must be at least 0, not -1"),
    ("http://127.0.0.1:7070", {"chunk_timeout": 0}, "chunk_timeout must be more than 0, not 0"),
])
def test_client_arguments_are_refused_as_the_cli_refuses_its_flags_not_clamped(url, options, why):
    with pytest.raises(ValueError) as refused:
        Client(url, **options)
    assert str(refused.value) == why


def test_a_trailing_slash_of_the_master_url_is_dropped():
    assert Client("http://127.0.0.1:7070/").master_url == "http://127.0.0.1:7070"


async def test_p2pcache_get_explains_a_wrong_master_and_reads_a_suffix_of_an_empty_object(
        cluster, s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    code, out, err = await p2pcache_get(f"s3://{bucket}/empty", "--range", "-5", "--master", cluster.master.url)
    assert (code, out, err) == (0, b"", "")  # as S3 answers: 200, all of nothing
    for url, answered in ((cluster.workers[0].url, "it answered as a worker: "), (s3.url, "it answered 404 ")):
        code, _, err = await p2pcache_get(f"s3://{bucket}/empty", "--master", url)
        assert code == 1 and err.startswith(f"p2pcache get: {url} did not answer as a p2pcache master ({answered}")
        assert err.endswith("is it the master's URL?\n") and err.count("\n") == 1, err


async def test_a_worker_given_as_the_master_whose_ring_bucket_answers_is_named_by_get_sync_and_fsspec(
        cluster, s3_client, tmp_path):
    """With a bucket named "ring", the worker answers GET /ring with 200 and its listing: `get` said
    "unpack(b) received extra data." and exited 2, as for bad arguments."""
    import fsspec

    with contextlib.suppress(s3_client.exceptions.BucketAlreadyOwnedByYou):
        s3_client.create_bucket(Bucket="ring")
    worker = cluster.workers[0].url
    said = (f"{worker} did not answer as a p2pcache master (it answered 200 with no ring: not msgpack: "
            "'<?xml version=")
    code, _, err = await p2pcache_get("s3://ring/k", "-o", os.devnull, "--master", worker)
    assert code == 1 and err.startswith(f"p2pcache get: {said}") and err.endswith("is it the master's URL?\n"), err
    assert err.count("\n") == 1, err
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "p2pcache", "sync", "s3://ring/", str(tmp_path),
                                                "--master", worker, env=cli_env(), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and err.decode().startswith(f"p2pcache sync: {said}") and err.count(b"\n") == 1, err
    fs = fsspec.filesystem("p2pcache", master=worker, skip_instance_cache=True)
    try:
        with pytest.raises(Unavailable, match=re.escape(said)):
            await asyncio.to_thread(fs.cat_file, "ring/k")
    finally:
        await asyncio.to_thread(fs.close)


async def test_a_name_no_bucket_can_have_is_refused_at_once_without_blaming_a_worker(cluster, bucket, caplog):
    """`_p2p/health` is a worker's own route (bucket names have no "_"): its HEAD answer has no ETag."""
    async with Client(cluster.master.url) as client:
        for call in (client.read("_p2p", "health"), client.stat("Bad_Bucket", "k"), client.list("_p2p"),
                     client.download("_p2p", "health", "/nonexistent-dir/x")):
            with pytest.raises(ValueError, match="invalid bucket name '(_p2p|Bad_Bucket)'"):
                await call
    assert "trying the next worker" not in caplog.text and "without ETag" not in caplog.text
