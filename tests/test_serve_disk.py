"""Serving processes and the disk: slow readers keep no evicted chunk on disk, so disk use stays
under --capacity and the --min-free floor does not empty the cache (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket

import aiohttp

from conftest import CHUNK, metric, wait_for

CHUNK_FILE = CHUNK + 4096  # a chunk's file: its bytes and trailer (at most)
BIG = 1 << 20  # a chunk size whose objects outgrow the sockets' buffers (a read that stays open)
BIG_FILE = BIG + 4096


def _in_use(worker) -> int:
    """Bytes of chunk files on the worker's disk: those under its cache dir, and those deleted
    that one of its processes (the serving processes, the coordinator: this one) still holds open."""
    chunks = worker.store.root / "chunks"
    total = 0
    for f in chunks.glob("*/*"):
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
            total += f.stat().st_size
    under = os.path.realpath(chunks) + "/"
    for pid in [*worker.procs.pids, os.getpid()]:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(under) and target.endswith(" (deleted)"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
    return total


async def _slow_reader(url: str, key: str) -> socket.socket:
    """A GET of `key` whose reader takes its status line and then nothing (a tiny receive buffer)."""
    host, port = url.split("//")[1].split(":")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET /{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 200 "), head[:100]
    return sock


async def _fill_and_hold(http, url: str, s3_client, bucket: str, key: str, size: int) -> socket.socket:
    """Put `key`, read it whole twice (filled by the coordinator, then from the chunk files by a
    serving process), then leave a slow reader on it."""
    body = random.Random(key).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    for _ in range(2):
        async with http.get(f"{url}/{bucket}/{key}") as resp:
            assert resp.status == 200 and await resp.read() == body
    return await _slow_reader(url, f"{bucket}/{key}")


async def test_slow_readers_keep_no_evicted_chunk_on_disk(cluster_factory, s3_client, bucket):
    """Each serving process opened all of a read's chunk files before its status line and held
    them to its end: objects evicted under slow readers stayed on disk."""
    capacity = 12 * BIG_FILE
    cluster = await cluster_factory(1, chunk_size=BIG, serve_processes=2, capacity=capacity)
    worker = cluster.workers[0]
    readers = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for i in range(5):  # 5 objects of 8 chunks: 40 chunks through a cache of 12
                readers.append(await _fill_and_hold(http, worker.url, s3_client, bucket, f"o{i}", 8 * BIG))
                await wait_for(lambda: _in_use(worker) <= capacity, timeout=5,
                               what=f"disk in use {_in_use(worker)} to come under the capacity {capacity}")
            assert worker.store.used >= capacity - 2 * BIG_FILE  # evictions made room, the cache stayed full
            assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == 0
    finally:
        for sock in readers:
            sock.close()


async def test_the_free_space_floor_does_not_empty_the_cache_under_slow_readers(cluster_factory, s3_client,
                                                                                bucket, monkeypatch):
    """The volume's free space did not come back as the floor evicted (serving processes held the
    files open), so it evicted every chunk. A small volume, simulated: its free space is what the
    chunk files on it and those deleted but still open leave of 16 chunks."""
    volume = 16 * CHUNK_FILE
    real_usage = shutil.disk_usage

    def usage(path):
        used = _in_use(cluster.workers[0])
        return real_usage(path)._replace(total=volume, used=used, free=volume - used)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    cluster = await cluster_factory(1, serve_processes=2, min_free=4 * CHUNK_FILE)  # room for 12 chunks
    worker = cluster.workers[0]
    readers = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for i in range(6):  # 6 objects of 4 chunks through room for 12
                readers.append(await _fill_and_hold(http, worker.url, s3_client, bucket, f"f{i}", 4 * CHUNK))
            assert worker.store.used >= 8 * CHUNK_FILE, worker.store.used
            assert await metric(http, worker.url, "p2pcache_passthrough_bytes_total") == 0
            await wait_for(lambda: usage(worker.store.root).free >= worker.config.min_free, timeout=5,
                           what="the free space to come back above the floor")
    finally:
        for sock in readers:
            sock.close()
