"""The client's own HTTP/1.1 range reader against a scripted server on loopback: framing, keep-alive, faults."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from p2pcache.errors import NotFound, ObjectChanged, PeerError, SignatureDoesNotMatch
from p2pcache.objects import ObjectInfo
from p2pcache.rangereader import RangeReader
from p2pcache.ring import WorkerInfo
from p2pcache.worker_client import WorkerClient

BODY = random.Random(5).randbytes(1 << 20)


class Scripted:
    """Answers each GET by the next step of `script`; counts connections and requests."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.connections, self.requests = list(script), 0, []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head.decode())
                step = self.script.pop(0) if self.script else "ok"
                n = len(BODY)
                ok = f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{n - 1}/{n}\r\nETag: \"e\"\r\n"
                if step == "ok":
                    writer.write(f"{ok}Content-Length: {n}\r\n\r\n".encode() + BODY)
                elif step == "big-head":  # over the first header buffer, under the limit
                    writer.write(f"{ok}X-Pad: {'p' * 20000}\r\nContent-Length: {n}\r\n\r\n".encode() + BODY)
                elif step == "trickle":  # head and body in small pieces
                    data = f"{ok}Content-Length: {n}\r\n\r\n".encode() + BODY
                    for i in range(0, len(data), 7919):
                        writer.write(data[i:i + 7919])
                        await writer.drain()
                elif step == "ok-close":  # answers, then closes: the next request needs a new connection
                    writer.write(f"{ok}Content-Length: {n}\r\n\r\n".encode() + BODY)
                    await writer.drain()
                    writer.close()
                    return
                elif step == "truncate":
                    writer.write(f"{ok}Content-Length: {n}\r\n\r\n".encode() + BODY[:1000])
                    await writer.drain()
                    writer.close()
                    return
                elif step == "wrong-length":
                    writer.write(f"{ok}Content-Length: {n - 1}\r\n\r\n".encode() + BODY[:-1])
                elif step == "error":
                    body = b"<Error><Code>NoSuchKey</Code></Error>"
                    writer.write(b"HTTP/1.1 404 Not Found\r\nX-P2P-Error: NoSuchKey\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                elif step == "other-etag":
                    other = ok.replace('ETag: "e"', 'ETag: "f"')
                    writer.write(f"{other}Content-Length: {n}\r\n\r\n".encode() + BODY)
                elif step == "other-range":
                    other = ok.replace("bytes 0-", "bytes 1-")
                    writer.write(f"{other}Content-Length: {n}\r\n\r\n".encode() + BODY)
                elif step == "denied":
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nX-P2P-Error: SignatureDoesNotMatch\r\n"
                                 b"Content-Length: 0\r\n\r\n")
                elif step == "garbage":
                    writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
                elif step == "huge-head":
                    writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


@pytest.fixture
async def server(request):
    servers = []

    async def make(script: list[str]) -> tuple[Scripted, int]:
        s = Scripted(script)
        servers.append(s)
        return s, await s.start()

    yield make
    for s in servers:
        await s.stop()


async def get(reader: RangeReader, port: int, buf: bytearray):
    return await reader.get("127.0.0.1", port, "/b/k%20x?q=1", {"Host": f"127.0.0.1:{port}", "Range": "bytes=0-"},
                            memoryview(buf))


async def test_bodies_land_in_the_buffer_over_one_kept_alive_connection(server):
    srv, port = await server(["ok", "trickle", "big-head", "ok"])
    reader = RangeReader(2, 10, per_host=4)
    for _ in range(4):
        buf = bytearray(len(BODY))
        answer = await get(reader, port, buf)
        assert answer.complete and answer.status == 206 and answer.headers["etag"] == '"e"'
        assert buf == BODY
    assert srv.connections == 1
    assert srv.requests[0].startswith("GET /b/k%20x?q=1 HTTP/1.1\r\n") and "Range: bytes=0-\r\n" in srv.requests[0]
    await reader.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(server):
    srv, port = await server(["ok-close", "ok"])
    reader = RangeReader(2, 10)
    for _ in range(2):
        buf = bytearray(len(BODY))
        assert (await get(reader, port, buf)).complete and buf == BODY
    assert srv.connections == 2
    await reader.close()


async def test_a_body_cut_short_raises_and_the_connection_is_not_reused(server):
    srv, port = await server(["truncate", "ok"])
    reader = RangeReader(2, 10)
    with pytest.raises(ConnectionResetError, match="after 1000 body bytes"):
        await get(reader, port, bytearray(len(BODY)))
    buf = bytearray(len(BODY))
    assert (await get(reader, port, buf)).complete and buf == BODY
    assert srv.connections == 2
    await reader.close()


@pytest.mark.parametrize("step, status", [("wrong-length", 206), ("error", 404)])
async def test_an_answer_without_the_expected_body_is_incomplete_and_its_connection_dropped(server, step, status):
    srv, port = await server([step, "ok"])
    reader = RangeReader(2, 10)
    answer = await get(reader, port, bytearray(len(BODY)))
    assert (answer.status, answer.complete) == (status, False)
    if step == "error":
        assert answer.headers["X-P2P-Error"] == "NoSuchKey"
    buf = bytearray(len(BODY))
    assert (await get(reader, port, buf)).complete and buf == BODY
    assert srv.connections == 2
    await reader.close()


async def test_idle_connections_are_bounded_over_all_workers(server):
    (a, port_a), (b, port_b) = await server([]), await server([])
    reader = RangeReader(2, 10, per_host=4, max_idle=1)
    for port in (port_a, port_b, port_a, port_b):  # b's connection is never kept: a's holds the one place
        buf = bytearray(len(BODY))
        assert (await get(reader, port, buf)).complete and buf == BODY
    assert (a.connections, b.connections) == (1, 2)
    await reader.close()


@pytest.mark.parametrize("step, message", [("garbage", "not an HTTP/1.x status line"),
                                           ("huge-head", "response headers over")])
async def test_malformed_answers_raise_value_error(server, step, message):
    _, port = await server([step])
    reader = RangeReader(2, 10)
    with pytest.raises(ValueError, match=message):
        await get(reader, port, bytearray(len(BODY)))
    await reader.close()


async def test_a_refused_connection_is_an_os_error():
    reader = RangeReader(2, 10)
    with pytest.raises(OSError):
        await reader.get("127.0.0.1", 9, "/", {"Host": "127.0.0.1:9"}, memoryview(bytearray(1)))


@pytest.mark.parametrize("step, error", [
    ("truncate", PeerError), ("wrong-length", PeerError), ("other-range", PeerError), ("garbage", PeerError),
    ("other-etag", ObjectChanged), ("error", NotFound), ("denied", SignatureDoesNotMatch),
])
async def test_the_worker_client_maps_each_bad_answer_and_then_reads_right(server, step, error):
    srv, port = await server([step, "ok"])
    worker = WorkerInfo("w0", f"http://127.0.0.1:{port}")
    info = ObjectInfo("b", "k x", '"e"', len(BODY), "", "")
    async with aiohttp.ClientSession() as session:
        client = WorkerClient(session, 2, 10, raw=RangeReader(2, 10))
        buf = bytearray(len(BODY))
        with pytest.raises(error):
            await client.get(worker, info, 0, len(BODY), memoryview(buf))
        assert await client.get(worker, info, 0, len(BODY)) == BODY  # a new bytes object, filled in place
    assert srv.requests[-1].startswith("GET /b/k%20x HTTP/1.1\r\n") and 'If-Match: "e"' in srv.requests[-1]
