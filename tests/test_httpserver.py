"""Connection limits (p2pcache/httpserver.py): every server the project runs closes a connection
that sends no whole request head in time, on its fast path as on aiohttp's."""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

import aiohttp
import pytest

from conftest import CHUNK
from master.config import MasterConfig
from master.server import Master

HEAD, IDLE = 2.0, 2.5  # the limits these tests give (30 s and 75 s by default)
# How long a test waits for a close: the old servers never closed these connections.
CLOSED_WITHIN = 15.0


async def _sent_until_closed(url: str, data: bytes) -> bytes:
    """Connect, send `data`, and return everything the server sends until it closes the connection."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), CLOSED_WITHIN)
    finally:
        writer.close()


def _request(method: str, target: str, extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: w\r\n{extra}\r\n".encode()


async def _trickled(url: str, path: str) -> list[bytes]:
    """The answers to a GET of `path` whose head comes in slowly (well within HEAD), then to another."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = _request("GET", path)
        for i in range(0, len(head), 8):
            writer.write(head[i:i + 8])
            await asyncio.sleep(0.05)  # the client's pace: under 0.3 s for the head
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN)
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), CLOSED_WITHIN)
        writer.write(_request("GET", path, "Connection: close\r\n"))
        return [first, await asyncio.wait_for(reader.read(), CLOSED_WITHIN)]
    finally:
        writer.close()


async def _closes_slow_connections(url: str, health: str, answered: list[bytes]) -> None:
    """A connection that sends nothing, half a head, or, after each request in `answered`, nothing
    more or half the next head: each is closed, having had its answer (and only that). One whose
    head trickles in within the limit is served, and its next request too."""
    half = f"GET {health} HTTP/1.1\r\nHost: w\r\n".encode()
    cases = [b"", half] + [r for req in answered for r in (req, req + half)]
    slow, *got = await asyncio.gather(_trickled(url, health), *(_sent_until_closed(url, data) for data in cases))
    assert [answer[:13] for answer in slow] == [b"HTTP/1.1 200 "] * 2
    assert got[:2] == [b"", b""]
    for data in got[2:]:
        assert data.startswith(b"HTTP/1.1 200 ") or data.startswith(b"HTTP/1.1 206 "), data[:200]
        assert data.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_worker_closes_connections_without_a_whole_request_in_time(cluster_factory, s3_client, bucket,
                                                                          processes):
    cluster = await cluster_factory(1, serve_processes=processes, head_timeout=HEAD, idle_timeout=IDLE)
    body = random.Random(9).randbytes(CHUNK + 10)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = cluster.workers[0].url
    async with aiohttp.ClientSession() as http, http.get(f"{url}/{bucket}/m.bin") as resp:
        assert await resp.read() == body  # cached: with serving processes, a ranged GET is the fast path's
    target = f"/{bucket}/m.bin"
    await _closes_slow_connections(url, "/_p2p/health", [
        _request("GET", target, "Range: bytes=0-99\r\n"),  # the fast path (serving processes)
        _request("HEAD", target),  # a connection the fast path hands to aiohttp
        _request("GET", "/_p2p/health"),
    ])


async def test_the_master_closes_connections_without_a_whole_request_in_time():
    master = Master(MasterConfig(head_timeout=HEAD, idle_timeout=IDLE))
    await master.start()
    try:
        await _closes_slow_connections(master.url, "/health", [_request("GET", "/health")])
    finally:
        await master.stop()


@pytest.mark.parametrize("server", ["master", "worker", "serving processes"])
async def test_a_new_connection_has_the_head_timeout_to_send_its_first_request(cluster_factory, server):
    """The first request's limit is its own (aiohttp has no such timer, or its keep-alive one)."""
    if server == "master":
        master = Master(MasterConfig(head_timeout=HEAD, idle_timeout=60.0))
        await master.start()
        url, path, stop = master.url, "/health", master.stop
    else:
        cluster = await cluster_factory(1, serve_processes=2 if server == "serving processes" else 1,
                                        head_timeout=HEAD, idle_timeout=60.0)
        url, path, stop = cluster.workers[0].url, "/_p2p/health", None
    try:
        half = f"GET {path} HTTP/1.1\r\nHost: w\r\n".encode()
        assert await asyncio.gather(_sent_until_closed(url, b""), _sent_until_closed(url, half)) == [b"", b""]
    finally:
        if stop is not None:
            await stop()
