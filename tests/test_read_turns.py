"""A process sends at most --max-reads answers at once; the next wait for a turn (503 SlowDown
after --read-wait), and a reader that takes nothing for --send-timeout seconds is cut, so it
cannot keep its turn, its memory and its chunk's pin for as long as it keeps the connection."""

from __future__ import annotations

import asyncio
import random
import socket
from urllib.parse import urlsplit

import aiohttp
import pytest

from conftest import metric, wait_for

CHUNK = 1 << 20
SIZE = 24 * CHUNK


async def stalled_reader(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A GET whose reader reads the status line and headers, then nothing (a tiny receive buffer)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    return reader, writer, head


async def rest(reader: asyncio.StreamReader) -> int:
    """Bytes until the server ends the connection (a cut may come as a reset)."""
    got = 0
    try:
        while data := await asyncio.wait_for(reader.read(1 << 20), 20):
            got += len(data)
    except ConnectionError:
        pass
    return got


@pytest.mark.parametrize("processes", [1, 2])
async def test_past_max_reads_a_reader_waits_then_gets_slow_down(cluster_factory, s3_client, bucket, processes):
    """One turn per process: readers that take nothing hold them; with every process's turn held
    (the kernel spreads connections over the serving processes), the next gets 503 SlowDown."""
    cluster = await cluster_factory(1, chunk_size=CHUNK, max_reads=1, read_wait=0.5, send_timeout=0,
                                    serve_processes=processes)
    body = random.Random(1).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = f"{cluster.workers[0].url}/{bucket}/m.bin"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:  # cached: the reads below wait on nothing but their readers
            assert await resp.read() == body
        readers, heads = [], []
        for _ in range(processes + 1):  # a process holds at most one: one of these meets a full one
            reader, writer, head = await stalled_reader(url)
            readers.append(writer)
            heads.append(head)
            if head.startswith(b"HTTP/1.1 503"):
                break
        assert sum(h.startswith(b"HTTP/1.1 200") for h in heads) <= processes
        assert heads[-1].startswith(b"HTTP/1.1 503") and b"Retry-After: 1\r\n" in heads[-1]
        assert b"<Code>SlowDown</Code>" in await asyncio.wait_for(reader.readuntil(b"</Error>"), 20)
        async with http.head(url) as resp:  # no bytes to send: no turn needed
            assert resp.status == 200
        for writer in readers:  # the readers leave: their turns go to the next
            writer.close()
        for _ in range(50):
            async with http.get(url) as resp:
                if resp.status == 200:
                    assert await resp.read() == body
                    break
                assert resp.status == 503
        else:
            raise AssertionError("the turns never came back")


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_reader_that_takes_nothing_is_cut_and_the_next_gets_its_turn(cluster_factory, s3_client, bucket,
                                                                            processes):
    cluster = await cluster_factory(1, chunk_size=CHUNK, max_reads=1, read_wait=30, send_timeout=1,
                                    serve_processes=processes)
    worker = cluster.workers[0]
    body = random.Random(2).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = f"{worker.url}/{bucket}/m.bin"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert await resp.read() == body
        reader, writer, head = await stalled_reader(url)
        assert head.startswith(b"HTTP/1.1 200")
        async with http.get(url) as resp:  # on the stalled one's process, it waits for the cut
            assert resp.status == 200 and await resp.read() == body
        name = "p2pcache_stalled_readers_cut_total"

        async def cut_once() -> bool:  # a serving process reports it within a second
            return await metric(http, worker.url, name) == 1

        await wait_for(cut_once, what=name)
        assert await rest(reader) < SIZE  # cut short, never completed
        writer.close()
