"""`--serve-processes N`: N real serving processes on one port, one coordinator per worker."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import re
import signal

import aiohttp
import pytest

from conftest import CHUNK, metric, wait_for
from p2pcache.objects import ObjectInfo
from p2pcache.ranges import chunk_count
from rawhttp import exchange, request_bytes
from worker import procs


async def _get(http: aiohttp.ClientSession, url: str, rng: tuple[int, int] | None = None) -> tuple[int, bytes]:
    headers = {"Range": f"bytes={rng[0]}-{rng[1]}"} if rng else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


async def _metric_sum(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets)."""
    async with http.get(f"{url}/_p2p/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{", ","))


async def _process_counts(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/_p2p/metrics") as resp:
        text = await resp.text()
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("p2pcache_process_requests_total{")}


async def test_processes_serve_the_same_chunks_filled_once(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(2, serve_processes=2)
    size = 6 * CHUNK + 1234
    body = random.Random(3).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    before, rnd = s3.get_bytes, random.Random(4)
    ranges = [(a, min(size - 1, a + rnd.randrange(1, 2 * CHUNK))) for a in (rnd.randrange(size) for _ in range(48))]
    urls = [f"{w.url}/{bucket}/m.bin" for w in cluster.workers]
    # A connection per request: SO_REUSEPORT spreads connections, not requests, over the processes.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        cold = await asyncio.gather(*(_get(http, urls[i % 2], r) for i, r in enumerate(ranges)))
        assert all(st == 206 and got == body[a:b + 1] for (st, got), (a, b) in zip(cold, ranges))
        # Counted by the S3 server: every chunk filled once, across both workers' processes.
        assert s3.get_bytes - before == size
        warm = await asyncio.gather(*(_get(http, urls[i % 2], r) for i, r in enumerate(ranges * 2)))
        assert all(st == 206 and got == body[a:b + 1] for (st, got), (a, b) in zip(warm, ranges * 2))
        assert (await _get(http, urls[0])) == (200, body)
        assert s3.get_bytes - before == size
        # A worker reads its own chunks from their files: each of its processes answers some.
        etag = s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"]
        info = ObjectInfo(bucket, "m.bin", etag, size)
        for w in cluster.workers:
            own = [i for i in range(chunk_count(size, CHUNK) - 1)  # whole chunks
                   if w.placement.owner(info.chunk(i, CHUNK)).id == w.id]
            reads = [(i * CHUNK + j, i * CHUNK + j + 999) for i in own for j in range(0, 32 * 1000, 1000)]
            base = await _process_counts(http, w.url)
            # The kernel places connections (SO_REUSEPORT), and on loopback it sometimes sends a
            # whole burst to one process: a few bursts, until each process has answered some.
            for _ in range(8):
                done = await _process_counts(http, w.url)
                results = await asyncio.gather(*(_get(http, f"{w.url}/{bucket}/m.bin", r) for r in reads))
                assert all(got == (206, body[a:b + 1]) for got, (a, b) in zip(results, reads))
                counts = await wait_for(lambda: _served(http, w.url, done, len(reads)), what="the reads' reports")
                if all(counts.get(p, 0) > base.get(p, 0) for p in ("0", "1")):
                    break
            assert all(counts.get(p, 0) > base.get(p, 0) for p in ("0", "1")), (base, counts)
        assert s3.get_bytes - before == size


async def _served(http, url, base: dict, n: int):
    counts = await _process_counts(http, url)
    return counts if sum(counts.values()) - sum(base.values()) >= n else None


async def _busy(http, url):
    counts = await _process_counts(http, url)
    return counts if len([n for n in counts.values() if n > 0]) == 2 else None


async def test_metrics_add_up_across_processes(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    body = random.Random(5).randbytes(3 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="c.bin", Body=body)
    url = cluster.workers[0].url
    n, length = 40, 1000
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert (await _get(http, f"{url}/{bucket}/c.bin"))[0] == 200  # filled by the coordinator
        base_bytes = await _metric_sum(http, url, "p2pcache_bytes_served_total")
        results = await asyncio.gather(*(_get(http, f"{url}/{bucket}/c.bin", (i * 7, i * 7 + length - 1))
                                         for i in range(n)))
        assert all(st == 206 and got == body[i * 7:i * 7 + length] for i, (st, got) in enumerate(results))
        # Every ranged GET counted once, every byte served counted once, whichever process answered.
        await wait_for(lambda: _equals(http, url, "p2pcache_bytes_served_total", base_bytes + n * length),
                       what="bytes served to add up")
        await wait_for(lambda: _equals(http, url, 'p2pcache_requests_total{method="GET",status="206"}', n),
                       what="requests to add up")
        counts = await _process_counts(http, url)
        assert sum(counts.values()) == n and len(counts) == 2


async def _equals(http, url, name, want):
    got = await _metric_sum(http, url, name)
    assert got <= want, f"{name} {got}: more than the {want} sent"
    return got == want


async def test_a_killed_serving_process_is_replaced_and_reads_go_on(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(6).randbytes(2 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="k.bin", Body=body)
    url = f"{worker.url}/{bucket}/k.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, url) == (200, body)
        victim = worker.procs.pids[0]
        os.kill(victim, signal.SIGKILL)  # a process this test's worker started
        async def replaced() -> bool:  # reads meanwhile: the other process answers
            assert await _get(http, url, (100, 5000)) == (206, body[100:5001])
            return worker.procs.pids[0] not in (None, victim)

        await wait_for(replaced, what="the killed process to be replaced")
        assert await _metric_sum(http, worker.url, "p2pcache_serve_process_restarts_total") == 1
        assert await metric(http, worker.url, "p2pcache_serve_processes") == 2
        results = await asyncio.gather(*(_get(http, url, (i, i + 999)) for i in range(32)))
        assert all(r == (206, body[i:i + 1000]) for i, r in enumerate(results))
        await wait_for(lambda: _busy(http, worker.url), what="the new process to answer reads")


async def test_a_stuck_serving_process_is_killed_and_replaced(cluster_factory, s3_client, bucket, monkeypatch):
    """Stopped (SIGSTOP: as a process whose event loop is blocked), it still holds its share of
    the port: the kernel gives it new connections, which hang. It stops reporting, and after
    STUCK seconds of silence the coordinator kills it; the process started in its place answers."""
    monkeypatch.setattr(procs, "STUCK", 2.0)
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(8).randbytes(2 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="k.bin", Body=body)
    url = f"{worker.url}/{bucket}/k.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=20)) as http:
        assert await _get(http, url) == (200, body)
        victim = worker.procs.pids[0]
        os.kill(victim, signal.SIGSTOP)  # a process this test's worker started
        try:
            await wait_for(lambda: worker.procs.pids[0] not in (None, victim), what="the stuck process to be replaced")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        results = await asyncio.gather(*(_get(http, url, (i, i + 999)) for i in range(32)))
        assert all(r == (206, body[i:i + 1000]) for i, r in enumerate(results))
        assert await _metric_sum(http, worker.url, "p2pcache_serve_process_restarts_total") == 1


async def test_capacity_holds_with_serving_processes(cluster_factory, s3_client, bucket):
    chunk_file = CHUNK + 4096  # a chunk's file: its bytes and trailer
    cluster = await cluster_factory(1, serve_processes=2, capacity=4 * chunk_file)
    worker = cluster.workers[0]
    body = random.Random(7).randbytes(12 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="big.bin", Body=body)
    url = f"{worker.url}/{bucket}/big.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for i in range(12):  # each chunk filled, then read from its file, then never again
            for a in (i * CHUNK + 10, i * CHUNK + 5000, i * CHUNK + 9000):
                assert await _get(http, url, (a, a + 999)) == (206, body[a:a + 1000])
                assert worker.store.used <= worker.config.capacity
        on_disk = lambda: sum(f.stat().st_size for f in (worker.store.root / "chunks").glob("*/*"))
        assert on_disk() <= worker.config.capacity
    # The serving processes close evicted chunks' files: the disk's blocks are freed.
    chunks = str(worker.store.root / "chunks")
    await wait_for(lambda: not _open_deleted(worker.procs.pids, chunks), what="evicted files to be closed")


def _open_deleted(pids, under: str) -> list[str]:
    """Deleted files under `under` that the processes `pids` hold open."""
    found = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith(under) and target.endswith(" (deleted)"):
                found.append(target)
    return found


async def test_reads_from_files_are_uses_the_eviction_policy_sees(cluster_factory, s3, s3_client, bucket):
    """A chunk read again through the serving processes survives a scan larger than the cache (S3-FIFO)."""
    chunk_file = CHUNK + 4096
    cluster = await cluster_factory(1, serve_processes=2, capacity=8 * chunk_file)
    worker = cluster.workers[0]
    body = random.Random(8).randbytes(20 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="scan.bin", Body=body)
    url = f"{worker.url}/{bucket}/scan.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for i in range(3):  # chunks 0, 1, 2 filled by the coordinator
            assert await _get(http, url, (i * CHUNK, i * CHUNK + 99)) == (206, body[i * CHUNK:i * CHUNK + 100])
        hits = await _metric_sum(http, worker.url, "p2pcache_cache_hits_total")
        for a in (1000, 2000, 3000, 4000):  # chunk 0 again, from its file
            assert await _get(http, url, (a, a + 99)) == (206, body[a:a + 100])
        await wait_for(lambda: _equals(http, worker.url, "p2pcache_cache_hits_total", hits + 4),
                       what="the serving processes' hits to be reported")
        assert sum((await _process_counts(http, worker.url)).values()) >= 4
        for i in range(3, 20):  # a scan: each chunk once
            a = i * CHUNK
            assert await _get(http, url, (a, a + 99)) == (206, body[a:a + 100])
        before = s3.get_bytes
        assert await _get(http, url, (5000, 5099)) == (206, body[5000:5100])
        assert s3.get_bytes == before  # chunk 0 survived the scan
        assert await _get(http, url, (CHUNK + 5000, CHUNK + 5099)) == (206, body[CHUNK + 5000:CHUNK + 5100])
        assert s3.get_bytes > before  # chunk 1, read once, did not


async def test_a_corrupt_chunk_file_is_never_served_by_a_serving_process(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(9).randbytes(2 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="bad.bin", Body=body)
    url = f"{worker.url}/{bucket}/bad.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(4):  # filled, then read from its file by the serving processes
            assert await _get(http, url, (1000, 1999)) == (206, body[1000:2000])
        [path] = [p for p in (worker.store.root / "chunks").glob("*/*") if p.name.endswith(f"-0-{CHUNK}")]
        with open(path, "r+b") as f:  # flip a byte in place: open fds see it too
            f.seek(1500)
            byte = f.read(1)
            f.seek(1500)
            f.write(bytes([byte[0] ^ 0xFF]))
        for _ in range(8):
            assert await _get(http, url, (1000, 1999)) == (206, body[1000:2000])
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") >= 1
        assert await _get(http, url) == (200, body)


async def test_the_coordinators_local_routes_are_not_reachable_from_the_port(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    url = cluster.workers[0].url
    report = '{"process": 0, "touched": {}, "corrupt": [], "requests": {"GET 200": 1000}, "bytes": 5, "hits": 5}'
    async with aiohttp.ClientSession() as http:
        for path in ("/_p2p/local/report", "/_p2p/x/../local/report", "/_p2p/local/object"):
            async with http.post(url + path, data=report, headers={"X-P2P-Local": "guess"}) as resp:
                assert resp.status in (404, 405), path
            async with http.get(url + path + "?bucket=b&key=k&max_age=1") as resp:
                assert resp.status == 404, path
        assert await _metric_sum(http, url, "p2pcache_bytes_served_total") == 0
        assert await _metric_sum(http, url, 'p2pcache_requests_total{method="GET",status="200"}') < 1000


async def test_the_loader_client_reads_from_the_serving_processes(cluster_factory, s3_client, bucket):
    """The client's owner-direct reads carry If-Match: those that hold are answered from chunk files."""
    from p2pcache.client import Client

    cluster = await cluster_factory(2, serve_processes=2)
    body = random.Random(10).randbytes(5 * CHUNK + 77)
    s3_client.put_object(Bucket=bucket, Key="model.bin", Body=body)
    async with Client(cluster.master.url) as client:
        assert await client.read(bucket, "model.bin") == body  # cold: filled by the owners' coordinators
        assert await client.read(bucket, "model.bin") == body  # warm: from the owners' chunk files
    async with aiohttp.ClientSession() as http:
        async def served():
            return sum([sum((await _process_counts(http, w.url)).values()) for w in cluster.workers])
        await wait_for(lambda: _ge(served(), chunk_count(len(body), CHUNK)), what="reads from chunk files")
        url = f"{cluster.workers[0].url}/{bucket}/model.bin"
        async with http.get(url, headers={"If-Match": '"not-the-etag"', "Range": "bytes=0-9"}) as resp:
            assert resp.status == 412  # a condition that fails is the coordinator's to answer
        async with http.get(url, headers={"If-None-Match": s3_client.head_object(
                Bucket=bucket, Key="model.bin")["ETag"]}) as resp:
            assert resp.status == 304


async def _ge(value, want) -> bool:
    return await value >= want


async def test_the_reserved_port_takes_no_connections_and_listeners_share_it():
    from worker.procs import reserve_port

    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        try:  # bound, not listening: a connection is refused, not queued for nobody
            await asyncio.open_connection("127.0.0.1", port)
            raise AssertionError("the reserved port accepted a connection")
        except ConnectionRefusedError:
            pass
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True) for _ in range(2)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        finally:
            for server in servers:
                server.close()
    finally:
        reserved.close()


def test_a_port_one_worker_reserved_is_in_use_for_another_until_it_lets_go():
    """Two workers started at once on one port: the second does not share it (before its serving
    processes listen, the first holds the port with its reservation alone)."""
    from worker.procs import reserve_port

    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    with pytest.raises(OSError) as taken:
        reserve_port("127.0.0.1", port)
    assert taken.value.errno == errno.EADDRINUSE
    reserved.close()
    reserve_port("127.0.0.1", port).close()  # a worker restarted on the port takes it


async def test_peers_chunk_requests_are_answered_from_chunk_files(cluster_factory, s3, s3_client, bucket):
    cluster = await cluster_factory(2, serve_processes=2)
    size = 4 * CHUNK
    body = random.Random(11).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="p.bin", Body=body)
    etag = s3_client.head_object(Bucket=bucket, Key="p.bin")["ETag"]
    info = ObjectInfo(bucket, "p.bin", etag, size)
    by_id = {w.id: w for w in cluster.workers}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, f"{cluster.workers[0].url}/{bucket}/p.bin") == (200, body)  # filled by owners
        before = s3.get_bytes
        for i in range(4):
            owner = by_id[cluster.workers[0].placement.owner(info.chunk(i, CHUNK)).id]
            other = next(w for w in cluster.workers if w is not owner)
            base = await _process_counts(http, owner.url)
            peer_bytes = await _metric_sum(http, owner.url, "p2pcache_peer_bytes_served_total")
            a = i * CHUNK + 4096
            assert await _get(http, f"{other.url}/{bucket}/p.bin", (a, a + 9999)) == (206, body[a:a + 10000])
            await wait_for(lambda: _served(http, owner.url, base, 1), what="the owner's serving process to answer")
            await wait_for(lambda: _grew(http, owner.url, "p2pcache_peer_bytes_served_total", peer_bytes),
                           what="peer bytes to be counted")
        assert s3.get_bytes == before
        unsigned = f"{cluster.workers[0].url}/_p2p/chunk?bucket={bucket}&key=p.bin&etag={etag}&size={size}" \
                   f"&chunk_size={CHUNK}&index=0"
        async with http.get(unsigned) as resp:
            assert resp.status == 401  # the coordinator's answer: a serving process answers signed requests only


async def _grew(http, url, name, base) -> bool:
    return await _metric_sum(http, url, name) > base


async def test_a_corrupt_chunk_met_mid_answer_is_read_again_by_the_coordinator(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(12).randbytes(3 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="mid.bin", Body=body)
    url = f"{worker.url}/{bucket}/mid.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, url) == (200, body)
        [path] = [p for p in (worker.store.root / "chunks").glob("*/*") if p.name.endswith(f"-1-{CHUNK}")]
        with open(path, "r+b") as f:  # chunk 1 of 3: the status line and chunk 0 are out before it is read
            f.seek(CHUNK - 10)
            byte = f.read(1)
            f.seek(CHUNK - 10)
            f.write(bytes([byte[0] ^ 0xFF]))
        for _ in range(4):
            assert await _get(http, url) == (200, body)
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") == 1


async def test_a_serving_process_reads_other_workers_chunks_from_them(cluster_factory, s3, s3_client, bucket):
    """A read at a worker that does not own the chunks is answered by its serving processes, which
    ask the owners themselves (not passed on through the coordinator); S3 is read once."""
    cluster = await cluster_factory(3, serve_processes=2)
    size = 9 * CHUNK + 777
    body = random.Random(11).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    before = s3.get_bytes
    reader, url = cluster.workers[0], f"{cluster.workers[0].url}/{bucket}/m.bin"
    etag = s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"]
    info = ObjectInfo(bucket, "m.bin", etag, size)
    others = [i for i in range(chunk_count(size, CHUNK) - 1)  # whole chunks
              if reader.placement.owner(info.chunk(i, CHUNK)).id != reader.id]
    assert len(others) >= 3
    rnd = random.Random(12)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for w in cluster.workers:  # every chunk filled by its owner
            assert await _get(http, f"{w.url}/{bucket}/m.bin") == (200, body)
        assert s3.get_bytes - before == size
        first = others[0] * CHUNK
        await wait_for(lambda: _answered_by_a_process(http, url, (first, first)),
                       what="the serving processes to learn the ring")
        reads = [(i * CHUNK + rnd.randrange(CHUNK // 2), i * CHUNK + CHUNK // 2 + rnd.randrange(CHUNK // 2))
                 for i in others]  # inside one chunk another worker owns
        reads += [(others[0] * CHUNK, size - 1), (0, size - 1)]  # across chunks, some local
        base = await _process_counts(http, reader.url)
        results = await asyncio.gather(*(_get(http, url, r) for r in reads))
        bad = [(r, st, len(got)) for (st, got), r in zip(results, reads) if (st, got) != (206, body[r[0]:r[1] + 1])]
        assert not bad
        # Answered by the serving processes: a request passed on to the coordinator is not counted there.
        await wait_for(lambda: _served(http, reader.url, base, len(reads)), what="the reads' reports")
    assert s3.get_bytes - before == size


async def _answered_by_a_process(http, url: str, rng: tuple[int, int]) -> bool:
    """Whether a read of `rng` is answered by a serving process (not passed on to the coordinator)."""
    worker = url.rsplit("/", 2)[0]
    base = await _process_counts(http, worker)
    await _get(http, url, rng)
    try:  # the serving processes report every 0.2 s
        await wait_for(lambda: _served(http, worker, base, 1), timeout=2.5, what="a serving process's report")
    except AssertionError:
        return False
    return True


async def test_a_serving_process_passes_a_read_on_when_the_owner_is_gone(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(3, serve_processes=2, worker_ttl=30.0)
    size = 9 * CHUNK + 5
    body = random.Random(13).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = f"{cluster.workers[0].url}/{bucket}/m.bin"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await _get(http, url) == (200, body)
        await cluster.workers[1].stop(leave=False)  # still in the ring: its chunks' reads fail over
        for _ in range(4):
            assert await _get(http, url) == (200, body)
            assert await _get(http, url, (CHUNK - 10, 3 * CHUNK + 10)) == (206, body[CHUNK - 10:3 * CHUNK + 11])


async def test_a_corrupt_report_drops_only_a_copy_that_is_corrupt(cluster_factory, s3_client, bucket):
    """A serving process's report of a corrupt chunk may arrive after the coordinator dropped and
    refilled it: the coordinator checks the copy it has now, and keeps it if it is good."""
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(21).randbytes(3 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    info = ObjectInfo(bucket, "m.bin", s3_client.head_object(Bucket=bucket, Key="m.bin")["ETag"], len(body))
    name = info.chunk(1, CHUNK).name
    sock = f"{worker.procs._dir}/coordinator.sock"
    report = {"process": 0, "touched": {}, "corrupt": [name], "requests": {}, "bytes": 0, "hits": 0}
    async with aiohttp.ClientSession() as http, \
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as local:
        assert await _get(http, f"{worker.url}/{bucket}/m.bin") == (200, body)
        assert name in worker.store

        async def send_report() -> None:
            async with local.post("http://coordinator/_p2p/local/report", json=report,
                                  headers={"X-P2P-Local": worker.procs._token}) as resp:
                assert resp.status == 200

        await send_report()  # stale: the copy on disk is good
        assert name in worker.store
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") == 0
        with open(worker.store.path(name), "r+b") as f:  # now it is bad
            f.seek(CHUNK // 2)
            byte = f.read(1)
            f.seek(CHUNK // 2)
            f.write(bytes([byte[0] ^ 1]))
        await send_report()
        assert name not in worker.store
        assert await metric(http, worker.url, "p2pcache_corrupt_chunks_total") == 1
        assert await _get(http, f"{worker.url}/{bucket}/m.bin") == (200, body)


@pytest.mark.parametrize("processes", [1, 2])
async def test_every_answer_names_the_etag_header_as_s3_does(cluster_factory, s3_client, bucket, processes):
    cluster = await cluster_factory(1, serve_processes=processes)
    etag = s3_client.put_object(Bucket=bucket, Key="e.bin", Body=b"x" * 1000)["ETag"]
    target = f"/{bucket}/e.bin"
    # With serving processes, the first GET, the HEAD and the 304 are the coordinator's answers passed
    # on; the ranged GET can be the fast path's, from the chunk file the first one filled.
    for method, headers, status in (("GET", {}, 200), ("GET", {"Range": "bytes=0-9"}, 206), ("HEAD", {}, 200),
                                    ("GET", {"If-None-Match": etag}, 304)):
        reply = await exchange(cluster.workers[0].url, request_bytes(method, target, headers), head=method == "HEAD")
        assert reply.status == status
        assert re.findall(rb"(?im)^etag: [^\r]*", reply.raw_head) == [b"ETag: " + etag.encode()], reply.raw_head


async def test_a_tmpdir_too_long_for_a_unix_socket_path_does_not_stop_the_worker(cluster_factory, s3_client, bucket,
                                                                                  tmp_path, monkeypatch):
    """The coordinator's socket goes in a private temp dir; a $TMPDIR so long that the socket's path
    would pass 107 bytes (pytest-xdist's tmp_path can) kept the worker from starting."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    cluster = await cluster_factory(1, serve_processes=2)
    worker = cluster.workers[0]
    body = random.Random(7).randbytes(CHUNK + 10)
    s3_client.put_object(Bucket=bucket, Key="k.bin", Body=body)
    async with aiohttp.ClientSession() as http:
        assert await _get(http, f"{worker.url}/{bucket}/k.bin") == (200, body)
    assert not any(deep.iterdir())  # under /tmp instead
