"""The serving processes' HTTP fast path (worker/fastpath.py): what it answers, what it hands
to aiohttp, and that a connection moved to aiohttp goes on answering."""

from __future__ import annotations

import asyncio
import fcntl
import random
import socket
import struct
import termios
from urllib.parse import urlsplit

import aiohttp
import pytest

from conftest import CHUNK, wait_for
from rawhttp import exchange, request_bytes
from test_serve_processes import _metric_sum
from worker.fastpath import MAX_FIELDS, parse_head, response_head

FAST = "p2pcache_fast_path_requests_total"


def test_parse_head_takes_a_plain_ranged_get():
    head = parse_head(b"GET /b/model-00001.safetensors HTTP/1.1\r\nHost: w:7070\r\nRange: bytes=0-9\r\n"
                      b"If-Match: \"abc\"\r\nContent-Length: 0\r\nConnection: keep-alive")
    assert head is not None and head.path == "/b/model-00001.safetensors" and not head.close
    assert head.headers["range"] == "bytes=0-9" and head.headers["IF-MATCH"] == '"abc"'
    assert parse_head(b"GET /b/k HTTP/1.1\r\nHost: x\r\nConnection: close").close


@pytest.mark.parametrize("raw", [
    b"HEAD /b/k HTTP/1.1\r\nHost: x",  # other methods
    b"GET /b/k HTTP/1.0\r\nHost: x",  # other versions
    b"GET /b/k?partNumber=1 HTTP/1.1\r\nHost: x",  # a query
    b"GET /b/a%20b HTTP/1.1\r\nHost: x",  # escapes: aiohttp decodes them
    b"GET /b/../k HTTP/1.1\r\nHost: x",  # dot segments: aiohttp normalises them
    b"GET /b//k HTTP/1.1\r\nHost: x",
    b"GET http://x/b/k HTTP/1.1\r\nHost: x",  # absolute form
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nrange: bytes=5-9",  # a repeated header
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",  # a body
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5",
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nConnection: Upgrade",
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nX-Meta: caf\xc3\xa9",  # not ASCII
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n folded",  # obsolete line folding
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nBad Name: 1",
    b"GET /b/k HTTP/1.1\r\nHost: x\r\nNoColon",
    b"GET  /b/k HTTP/1.1\r\nHost: x",
    b"GET /b/k HTTP/1.1\r\nRange: bytes=0-1",  # no Host
])
def test_parse_head_leaves_everything_else_to_aiohttp(raw):
    assert parse_head(raw) is None


def test_parse_head_leaves_more_fields_than_aiohttp_takes_to_it():
    def head(fields: int) -> bytes:
        return b"GET /b/k HTTP/1.1\r\nHost: x" + b"".join(b"\r\nX-H%d: v" % i for i in range(fields - 1))

    assert parse_head(head(MAX_FIELDS)) is not None
    assert parse_head(head(MAX_FIELDS + 1)) is None and parse_head(head(129)) is None  # aiohttp's 400 at 129


async def test_a_head_of_more_fields_than_aiohttp_takes_is_refused_on_every_path(cluster_factory, s3_client, bucket):
    """aiohttp refuses more than 128 header fields (400), as the worker without serving processes
    does; the fast path, with only its 8 KiB limit, answered the same bytes 206 (an object on disk)
    or 400 (not yet): now aiohttp answers them."""
    cluster = await cluster_factory(1, serve_processes=2)
    await cluster.add_worker(serve_processes=1)
    await cluster.wait_converged()
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    many = "".join(f"X-H{i}: v\r\n" for i in range(140))
    for url in [w.url for w in cluster.workers] * 2:  # the second time with the object known to every process
        warm = await exchange(url, request_bytes("GET", f"/{bucket}/k", {"Range": "bytes=0-1"}))
        assert (warm.status, warm.body) == (206, b"01")
        crowded = await exchange(url, f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n{many}"
                                      "Connection: close\r\n\r\n".encode(), timeout=5)
        assert crowded.status == 400 and b"Too many headers" in crowded.body, crowded


def test_response_head_is_what_aiohttp_would_send_or_nothing():
    top = response_head(206, {"ETag": '"e"', "Content-Range": "bytes 0-9/100"}, 10, "RID", close=True)
    lines = top.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 206 Partial Content" and top.endswith(b"\r\n\r\n")
    assert {"ETag: \"e\"", "Content-Range: bytes 0-9/100", "Content-Length: 10", "x-amz-request-id: RID",
            "Connection: close"} <= set(lines)
    assert response_head(200, {"x-amz-meta-a": "1\r\nSet-Cookie: x"}, 1, "RID", close=False) is None


async def _responses(reader: asyncio.StreamReader, methods: list[str]) -> list[tuple[int, dict, bytes]]:
    """The responses to pipelined requests, in order."""
    out = []
    for method in methods:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines if l)}
        body = b"" if method == "HEAD" else await reader.readexactly(int(headers["content-length"]))
        out.append((int(status_line.split()[1]), headers, body))
    return out


def _unread(sock) -> int:
    """Bytes the kernel holds for `sock`, not yet read."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def _get(target: str, rng: tuple[int, int] | None = None, extra: str = "") -> bytes:
    r = f"Range: bytes={rng[0]}-{rng[1]}\r\n" if rng else ""
    return f"GET {target} HTTP/1.1\r\nHost: w\r\n{r}{extra}\r\n".encode()


async def test_a_connection_answers_fast_then_moves_to_aiohttp_and_goes_on(cluster_factory, s3_client,
                                                                            bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    size = 3 * CHUNK + 77
    body = random.Random(5).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    url = cluster.workers[0].url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/{bucket}/m.bin") as resp:  # fills every chunk
            assert await resp.read() == body
        before = await _metric_sum(http, url, FAST)
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        small, large = (100, 100 + 1000), (CHUNK - 5, 2 * CHUNK + 40)  # in one chunk; across three
        other = (3 * CHUNK + 3, 3 * CHUNK + 50)  # in the last chunk, a short one
        target = f"/{bucket}/m.bin"
        # One write, seven requests: four the fast path answers (the second small one at once:
        # its process knows the object by then), then a HEAD, which hands the connection to
        # aiohttp with the rest of the bytes, then the same ranged GETs again.
        writer.write(_get(target, small) + _get(target, other) + _get(target, large) + _get(target) +
                     f"HEAD {target} HTTP/1.1\r\nHost: w\r\n\r\n".encode() + _get(target, large) +
                     _get(target, other))
        got = await _responses(reader, ["GET", "GET", "GET", "GET", "HEAD", "GET", "GET"])
        writer.close()
        assert [g[0] for g in got] == [206, 206, 206, 200, 200, 206, 206]
        assert got[0][2] == body[small[0]:small[1] + 1]
        assert got[1][2] == got[6][2] == body[other[0]:other[1] + 1]
        assert got[2][2] == got[5][2] == body[large[0]:large[1] + 1]
        assert got[3][2] == body
        assert got[4][1]["content-length"] == str(size)
        # The fast path's answers carry what aiohttp's do (but for the request id and date).
        same = {"x-amz-request-id", "date"}
        for fast, slow in ((got[2], got[5]), (got[1], got[6])):
            assert {k: v for k, v in fast[1].items() if k not in same} == \
                   {k: v for k, v in slow[1].items() if k not in same}
        assert got[2][1]["content-range"] == f"bytes {large[0]}-{large[1]}/{size}"
        # Four answered on the fast path: the counter fails if every request went to aiohttp.
        async def fast() -> float | None:
            n = await _metric_sum(http, url, FAST) - before
            return n if n >= 4 else None

        assert await wait_for(fast, what="fast-path reports") == 4


async def test_fast_path_answers_match_s3_for_conditions_and_errors(cluster_factory, s3_client, bucket):
    cluster = await cluster_factory(1, serve_processes=2)
    size = 2 * CHUNK + 5
    body = random.Random(6).randbytes(size)
    etag = s3_client.put_object(Bucket=bucket, Key="c.bin", Body=body)["ETag"]
    url = f"{cluster.workers[0].url}/{bucket}/c.bin"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert await resp.read() == body
        cases = [  # (headers, status, bytes) on keep-alive connections that start on the fast path
            ({"Range": "bytes=10-19"}, 206, body[10:20]),
            ({"Range": f"bytes=-{CHUNK + 3}"}, 206, body[-(CHUNK + 3):]),
            ({"Range": "bytes=10-19", "If-Match": etag}, 206, body[10:20]),
            ({"Range": "bytes=10-19", "If-Match": '"other"'}, 412, None),
            ({"If-None-Match": etag}, 304, b""),
            ({"Range": f"bytes={size}-"}, 416, None),
            ({"Range": "bytes=oops"}, 200, body),  # S3 ignores a Range it cannot parse
            ({}, 200, body),
        ]
        for _ in range(2):
            for headers, status, data in cases:
                async with http.get(url, headers=headers) as resp:
                    got = await resp.read()
                    assert resp.status == status, (headers, resp.status, got[:200])
                    if data is not None:
                        assert got == data, headers
                    if status == 206:
                        assert resp.headers["ETag"] == etag
        async with http.get(f"{url}.missing", headers={"Range": "bytes=0-1"}) as resp:
            assert resp.status == 404 and b"<Code>NoSuchKey</Code>" in await resp.read()


async def test_pipelined_requests_a_client_reads_late_are_all_answered_in_order(cluster_factory, s3_client,
                                                                                bucket):
    # 192 requests of 128 KiB in one write, read only after all were sent: the fast path takes the
    # next request only once the answers before it have drained, and every answer arrives whole.
    cluster = await cluster_factory(1, serve_processes=2)
    size = 2 * CHUNK
    body = random.Random(7).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="p.bin", Body=body)
    url = cluster.workers[0].url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/{bucket}/p.bin") as resp:
            assert await resp.read() == body
    rnd = random.Random(8)
    piece = 128 << 10  # inside one chunk: answered at once, one after the other, with no wait
    ranges = [(a, a + piece - 1) for a in (rnd.randrange(2) * CHUNK + rnd.randrange(CHUNK - piece)
                                           for _ in range(192))]
    parts = urlsplit(url)
    # Nothing read until the client's socket buffer (kept small) is full of answers: the worker
    # meets a full one, with most of the answers still to send.
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    await loop.sock_sendall(sock, b"".join(_get(f"/{bucket}/p.bin", r) for r in ranges))
    await wait_for(lambda: _unread(sock) >= 32 << 10, what="answers queued at the client")
    reader, writer = await asyncio.open_connection(sock=sock)
    got = await _responses(reader, ["GET"] * len(ranges))
    writer.close()
    assert all(st == 206 and data == body[a:b + 1] for (st, _, data), (a, b) in zip(got, ranges))


async def test_heads_the_fast_path_does_not_parse_get_aiohttps_400(cluster_factory):
    cluster = await cluster_factory(1, serve_processes=2)
    garbage = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
               b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
               b"GET /b/k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
               b"GET /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"]
    for data in garbage * 2:
        assert (await exchange(cluster.workers[0].url, data)).status == 400, data[:40]


@pytest.mark.parametrize("serve_processes", [1, 2])
async def test_a_head_ended_by_bare_lfs_or_without_host_is_answered_at_once(cluster_factory, s3_client, bucket,
                                                                          serve_processes):
    """The fast path waited for a CRLF CRLF that never came (75 s, then an empty reply), and
    answered a request without Host, which HTTP/1.1 requires: both are aiohttp's 400 now."""
    cluster = await cluster_factory(1, serve_processes=serve_processes)
    url = cluster.workers[0].url
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    for _ in range(2):  # the second time with the object known to every process
        warm = await exchange(url, request_bytes("GET", f"/{bucket}/k", {"Range": "bytes=0-1"}))
        assert (warm.status, warm.body) == (206, b"01")
        bare = f"GET /{bucket}/k HTTP/1.1\nHost: x\nRange: bytes=0-1\nConnection: close\n\n".encode()
        assert (await exchange(url, bare, timeout=5)).status == 400
        hostless = f"GET /{bucket}/k HTTP/1.1\r\nRange: bytes=0-1\r\nConnection: close\r\n\r\n".encode()
        assert (await exchange(url, hostless, timeout=5)).status == 400
