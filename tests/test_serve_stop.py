"""Stopping a worker's serving processes: reads in flight on both paths get `--drain-timeout` once."""

from __future__ import annotations

import asyncio
import random
import socket

import aiohttp

from conftest import CHUNK


async def _connect_small(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is small: an answer it does not read stalls at once."""
    parts = url.split("//", 1)[1].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts[0], int(parts[1])))
    return await asyncio.open_connection(sock=sock)


async def _ask(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str, host: str) -> str:
    """GET the first 100 bytes at `path`, read the answer, and return the prefix of its request
    id (which names the serving process that answered)."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-99\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).decode()
    headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
    await reader.readexactly(int(headers["Content-Length"]))
    return headers["x-amz-request-id"][:8]


async def test_a_stopping_serving_process_waits_for_reads_on_both_paths_until_one_deadline(
        cluster_factory, s3_client, bucket):
    """A read the fast path is sending and one on a connection it handed to aiohttp (its first
    request's path had an escape), in one serving process, both stalled by readers that take
    nothing: when the process stops, both get until `--drain-timeout` after the stop, together;
    then both are cut. They had until the fast path's reads were done, and then twice
    `--drain-timeout` for aiohttp's (it waits, cancels, and waits again)."""
    drain = 3.0
    cluster = await cluster_factory(1, serve_processes=2, drain_timeout=drain)
    worker = cluster.workers[0]
    body = random.Random(12).randbytes(64 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="big.bin", Body=body)
    path, host = f"/{bucket}/big.bin", worker.url.split("//", 1)[1]
    async with aiohttp.ClientSession() as http:  # warm: the fast path answers only from chunk files
        async with http.get(f"{worker.url}{path}") as resp:
            assert resp.status == 200 and await resp.read() == body
    connections = []
    fast: dict[str, tuple] = {}
    handed: dict[str, tuple] = {}
    try:
        for _ in range(40):  # the kernel picks each connection's process: pairs until one process has both
            conn = await _connect_small(worker.url)
            connections.append(conn)
            fast.setdefault(await _ask(conn, path, host), conn)  # the fast path's
            conn = await _connect_small(worker.url)
            connections.append(conn)
            escaped = path.replace(".", "%2E")  # the same key; an escape is aiohttp's to decode
            handed.setdefault(await _ask(conn, escaped, host), conn)  # aiohttp's now
            both = fast.keys() & handed.keys()
            if both:
                break
        assert both, "no serving process took both kinds of connection"
        process = both.pop()
        stalled = (fast[process], handed[process])
        for reader, writer in stalled:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)  # answered, and stalled after it
        loop = asyncio.get_running_loop()
        start = loop.time()
        await worker.procs.stop()
        took = loop.time() - start
        for reader, _ in stalled:  # cut: the rest of the connection, all of it, is less than the body
            rest = await asyncio.wait_for(reader.read(), 20)
            assert len(rest) < len(body)
        assert drain - 0.1 <= took < 2 * drain - 1, took  # the old code's: 8.0 s, killed at drain + 5 s
    finally:
        for _, writer in connections:
            writer.close()
