"""Connection limits (p2pcache/httpserver.py): every server the project runs closes a connection
that sends no whole request head in time, on its fast path as on aiohttp's, and answers a body
that does not come whole in time with 408."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
from urllib.parse import urlsplit

import aiohttp
import msgpack
import pytest
from aiohttp import web

from conftest import CHUNK, SECRET, wait_for
from master.config import MasterConfig
from master.server import Master
from p2pcache.auth import Signer
from p2pcache.httpserver import PEER_CHECK, Server

HEAD, IDLE = 2.0, 2.5  # the limits these tests give (30 s and 75 s by default)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what goes ahead of an answer to a half-closed client that waits
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


async def _body_cut(url: str, path: str, after: bytes) -> tuple[bytes, bytes]:
    """POST `path` declaring a 100-byte body and sending 3 bytes of it; returns the answer (head and
    body), then what else the server sends before it closes, after the client sends the rest of that
    body and `after` (a next request, not to be answered: the connection is done)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(_request("POST", path, "Content-Length: 100\r\n") + b"\x81\xa5n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer = head + await asyncio.wait_for(reader.readexactly(length), CLOSED_WITHIN)
        writer.write(b"x" * 97 + after)
        try:
            rest = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)
        except ConnectionResetError:  # the server closed before what came after its answer: closed
            rest = b""
        return answer, rest
    finally:
        writer.close()


async def _trickled_body(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """The status and body of the answer to a POST of `body` sent in pieces (well within HEAD)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(_request("POST", path, f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}"))
        for i in range(0, len(body), 4):
            await asyncio.sleep(0.05)  # the client's pace: under 0.5 s for the body
            writer.write(body[i:i + 4])
        answer = await asyncio.wait_for(reader.read(), CLOSED_WITHIN)
        return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]
    finally:
        writer.close()


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_worker_answers_a_body_not_whole_in_time_with_408_and_closes(cluster_factory, processes, caplog):
    """A peer route reads its body before it checks the signature: half a body, unsigned, held
    the connection and its handler for good. Now 408 `RequestTimeout`, and the connection is closed
    (with serving processes, by the one that passes the request on); others are answered meanwhile,
    and a body that comes slowly within the limit is read."""
    cluster = await cluster_factory(1, serve_processes=processes, head_timeout=HEAD, idle_timeout=60.0)
    w = cluster.workers[0]
    cut = asyncio.create_task(_body_cut(w.url, "/_p2p/has", _request("GET", "/_p2p/health", "Connection: close\r\n")))
    body = msgpack.packb({"names": ["a", "b"]})
    signed = Signer(SECRET).headers("POST", "/_p2p/has", None, body, to=w.id)
    async with aiohttp.ClientSession() as http, http.get(f"{w.url}/_p2p/health") as resp:
        assert resp.status == 200
    assert await _trickled_body(w.url, "/_p2p/has", signed, body) == (
        200, msgpack.packb({"present": [False, False], "kept": [False, False]}))
    answer, rest = await cut
    assert answer.startswith(b"HTTP/1.1 408 ") and b"X-P2P-Error: RequestTimeout" in answer, answer
    assert b"<Code>RequestTimeout</Code>" in answer
    assert rest == b""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "closed"])
async def test_the_master_answers_a_body_not_whole_in_time_with_408_and_closes(secret, caplog):
    """With a secret the master read every body before its signature check; without one the
    heartbeat and the admin routes read theirs: each waited for good for the rest of a body."""
    master = Master(MasterConfig(head_timeout=HEAD, idle_timeout=60.0, cluster_secret=secret))
    await master.start()
    try:
        after = _request("GET", "/health", "Connection: close\r\n")
        cuts = [asyncio.create_task(_body_cut(master.url, path, after)) for path in ("/workers", "/preload")]
        async with aiohttp.ClientSession() as http, http.get(f"{master.url}/health") as resp:
            assert resp.status == 200
        (heartbeat, rest), (preload, rest2) = await asyncio.gather(*cuts)
        assert heartbeat.startswith(b"HTTP/1.1 408 ") and preload.startswith(b"HTTP/1.1 408 "), (heartbeat, preload)
        assert secret is not None or b'"error": "RequestTimeout"' in preload  # the admin API's JSON errors
        assert [rest, rest2] == [b"", b""]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        await master.stop()


@pytest.mark.parametrize("shutdown_timeout, finish_in", [(3.0, None), (60.0, 3.0)],
                         ids=["shutdown_timeout", "finish_by"])
async def test_a_stopping_server_cuts_an_answer_nobody_reads_at_its_limit_not_twice_it(shutdown_timeout, finish_in):
    """aiohttp's shutdown waits its timeout for a request in flight, cancels the request, and
    waits its timeout again, which a handler writing to a reader who takes nothing sits out: a
    server stopping with `shutdown_timeout` (or an earlier `finish_by`) of 3 s took 6 s."""
    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(256):
            await resp.write(bytes(1 << 20))
        return resp

    server = Server(stream, handler_cancellation=True)
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answer stalls at once
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(_request("GET", "/"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if finish_in is not None:
            server.finish_by(start + finish_in)
        await asyncio.wait_for(runner.cleanup(), CLOSED_WITHIN)
        took = loop.time() - start
        assert len(await asyncio.wait_for(reader.read(), CLOSED_WITHIN)) < 256 << 20  # cut
        assert 2.9 <= took < 5.0, took
    finally:
        writer.close()


async def _half_closed(url: str, data: bytes) -> list[int]:
    """Send `data`, half-close (`shutdown(SHUT_WR)`, as `nc -N` does), and return the statuses of
    the answers that come before the server closes the connection (none: an empty list)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        writer.write_eof()
        got = (await asyncio.wait_for(reader.read(), CLOSED_WITHIN)).replace(CONTINUE, b"")
        return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", got)]  # bodies here hold no status line
    finally:
        writer.close()


@pytest.mark.parametrize("server", ["master", "worker", "serving processes"])
async def test_a_half_closed_connection_has_its_requests_answered_then_closes(cluster_factory, s3_client, bucket,
                                                                             server):
    """aiohttp closed a connection at the client's half-close, cancelling the handler: nothing was
    answered (the fast path answered). Now every request sent whole is, and then the connection is
    closed, not left to its idle limit (60 s here): one the fast path handed to aiohttp too."""
    if server == "master":
        master = Master(MasterConfig(idle_timeout=60.0))
        await master.start()
        try:
            assert await asyncio.gather(
                _half_closed(master.url, _request("GET", "/health")),
                _half_closed(master.url, _request("GET", "/health") + _request("GET", "/ring?format=json"))
            ) == [[200], [200, 200]]
        finally:
            await master.stop()
        return
    cluster = await cluster_factory(1, serve_processes=2 if server == "serving processes" else 1, idle_timeout=60.0)
    url = cluster.workers[0].url
    s3_client.put_object(Bucket=bucket, Key="d.txt", Body=b"0123456789" * 1000)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/{bucket}/d.txt") as resp:
        assert resp.status == 200  # cached: with serving processes, a ranged GET is the fast path's
    target = f"/{bucket}/d.txt"
    ranged = _request("GET", target, "Range: bytes=0-3\r\n")
    cases = {
        "GET": (_request("GET", target), [200]),
        "ranged GET": (ranged, [206]),
        "HTTP/1.0": (f"GET {target} HTTP/1.0\r\n\r\n".encode(), [200]),
        "HEAD": (_request("HEAD", target), [200]),
        "listing": (_request("GET", f"/{bucket}?list-type=2&max-keys=1"), [200]),
        "no such key": (_request("GET", f"/{bucket}/nokey"), [404]),
        "health": (_request("GET", "/_p2p/health"), [200]),
        # the fast path's, then a HEAD it hands to aiohttp with the rest
        "pipelined": (ranged + _request("HEAD", target) + ranged + _request("GET", "/_p2p/health"), [206, 200, 206, 200]),
        "half a head": (ranged + b"GET /_p2p/health HTTP/1.1\r\n", [206]),
    }
    got = await asyncio.gather(*(_half_closed(url, data) for data, _ in cases.values()))
    assert dict(zip(cases, got)) == {name: statuses for name, (_, statuses) in cases.items()}


async def test_a_half_closed_client_gets_its_late_answer_one_gone_has_its_handler_cancelled():
    """A client that half-closed waits for its answer, which a 100 (Continue) goes ahead of once it
    is PEER_CHECK late (aiohttp cancelled the handler: nothing came). One that closed both ways looks
    the same until that 100 reaches it: its reset cancels the handler, as a hang-up did before."""
    started: dict[str, asyncio.Event] = {"/late": asyncio.Event(), "/gone": asyncio.Event()}
    gate = asyncio.Event()
    cancelled = []

    async def handler(request):
        started[request.path].set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(request.path)
            raise
        return web.Response(text="late")

    server = Server(handler, handler_cancellation=True)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        late_r, late_w = await asyncio.open_connection("127.0.0.1", port)
        gone_r, gone_w = await asyncio.open_connection("127.0.0.1", port)
        for writer, path in ((late_w, "/late"), (gone_w, "/gone")):
            writer.write(_request("GET", path))
            await asyncio.wait_for(started[path].wait(), CLOSED_WITHIN)
        late_w.write_eof()
        gone_w.close()  # both ways
        assert await asyncio.wait_for(late_r.readexactly(len(CONTINUE)), CLOSED_WITHIN + PEER_CHECK) == CONTINUE
        await wait_for(lambda: cancelled == ["/gone"], what="the gone client's handler cancelled")
        gate.set()
        answer = await asyncio.wait_for(late_r.read(), CLOSED_WITHIN)  # then closed
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nlate"), answer
        late_w.close()
    finally:
        gate.set()
        await runner.cleanup()
