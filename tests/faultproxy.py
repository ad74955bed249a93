"""A fault-injecting HTTP proxy for tests, between the workers and the S3 server (or in front
of a worker, as the URL it advertises to its peers).

On ranged GETs it injects a seeded share of faults, each kind in turn: a connection reset, a 503
SlowDown, a 500, a body cut short, a body that stalls after its headers (and,
on request, a 403, a 206 without its Content-Range, a body that trickles at `trickle_rate`
bytes a second, a request never answered: a hung server, or a 200 HTML page in place of the
answer, as a misconfigured ingress gives: `page`; answers held back: `hold`; a fault chosen per
request: `by_request`). `script` lists
the faults of the next ranged GETs, in order; `get_mode` applies one fault to every ranged
GET (HEADs and listings pass), `mode` to every request (an outage). It
counts what it forwards, so a test can bound what S3 sent. One request per connection
(`Connection: close` both ways) keeps the relay simple and exact.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from typing import Callable
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "FAULTS", "on_nth"]

FAULTS = ("reset", "slowdown", "error", "truncate", "stall")
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "error": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "throttle": (429, "Too Many Requests", "TooManyRequests", "Please reduce your request rate."),
}


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, faults: tuple[str, ...] = FAULTS,
                 seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)  # (host, port) it relays to
        self.rate, self.faults = rate, faults
        self.mode: str | None = None  # a fault for every request: an outage
        self.get_mode: str | None = None  # a fault for every ranged GET of an object
        self.get_delay = 0.0  # seconds each ranged GET of an object waits before it is relayed (a slow S3)
        self.trickle_rate = 16 << 10  # bytes a second of a "trickle" body: some every tenth of a second
        self.hold: tuple[str, float] | None = None  # (target prefix, seconds): their answers wait that long
        self.by_request: Callable[[str, str], str | None] | None = None  # (method, target) -> its fault
        self.set_headers: dict[str, str | None] = {}  # the `headers` fault: replaced (None: removed)
        self.junk = b"\x99" * 6000  # the `junk` fault: what follows the answer's body
        self.script: list[str | None] = []  # faults for the next ranged GETs (None: none)
        self.ranges: list[str] = []  # the Range header of each ranged GET
        self._rng = random.Random(seed)
        self._turn = -1
        self.injected: Counter[str] = Counter()
        self.requests = 0  # every request, any method
        self.targets: list[str] = []  # the target of each request
        self.gets = 0  # ranged GETs of objects
        self.body_bytes = 0  # body bytes sent to clients for GETs of objects
        self.times: list[float] = []  # when each request arrived (monotonic)
        self.stall_waits: list[float] = []  # seconds a stalled client waited before hanging up
        self.stalling = 0  # stalls begun
        self._server: asyncio.AbstractServer | None = None
        self._conns: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.url = ""

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        for task, writer in self._conns.items():  # a relay may wait on its upstream (a long poll)
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    def requests_since(self, t: float) -> int:
        return sum(1 for x in self.times if x >= t)

    def _choose(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if self.mode:
            return self.mode
        if self.by_request and (fault := self.by_request(method, path)):
            return fault
        if method != "GET" or "range" not in headers or "/" not in path.strip("/").split("?")[0]:
            return None
        self.gets += 1
        self.ranges.append(headers["range"])
        if self.script:
            return self.script.pop(0)
        if self.get_mode:
            return self.get_mode
        if self._rng.random() < self.rate:
            self._turn += 1
            return self.faults[self._turn % len(self.faults)]
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns[task] = writer
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            self.requests += 1
            self.targets.append(target)
            self.times.append(time.monotonic())
            fault = self._choose(method, target, headers)
            if fault:
                self.injected[fault] += 1
            is_object = method == "GET" and "/" in target.split("?")[0].strip("/")
            if fault == "reset":
                _reset(writer)
                return
            if fault == "hang":  # as a stopped process whose kernel still accepts: nothing, ever
                await reader.read()
                return
            if fault == "page":
                page = b"<html><body><h1>Welcome</h1>the ingress has no such service</body></html>\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(page), page))
                await writer.drain()
                return
            if fault in _ERRORS:
                self._error(writer, method, *_ERRORS[fault], is_object)
                await writer.drain()
                return
            if self.get_delay and is_object and "range" in headers:
                await asyncio.sleep(self.get_delay)
            await self._relay(lines, body, fault, is_object, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            del self._conns[task]
            writer.close()

    def _error(self, writer, method: str, status: int, reason: str, code: str, message: str,
               counted: bool) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
               f"<Message>{message}</Message><RequestId>FAULTPROXY</RequestId></Error>").encode()
        body = b"" if method == "HEAD" else xml
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        if counted:
            self.body_bytes += len(body)

    async def _relay(self, lines: list[str], body: bytes, fault: str | None, counted: bool,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            request = [l for l in lines[1:] if l and not l.lower().startswith("connection:")]
            up_writer.write(("\r\n".join([lines[0], *request, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body)
            head = await up_reader.readuntil(b"\r\n\r\n")
            if self.hold and lines[0].split(" ")[1].startswith(self.hold[0]):
                await asyncio.sleep(self.hold[1])
            length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")
                           if l.lower().startswith(b"content-length:")), None)
            status = int(head.split(b" ", 2)[1])
            if fault == "norange":
                head = b"\r\n".join(l for l in head.split(b"\r\n") if not l.lower().startswith(b"content-range:"))
            if fault == "headers":
                head = _with_headers(head, self.set_headers)
            if fault == "junk":  # the whole answer and the junk in one segment, as on a kept-alive connection
                head = _with_headers(head, {"Connection": None}) + await up_reader.read() + self.junk
            writer.write(head)
            limit = None
            if fault in ("truncate", "stall") and status == 206 and length:
                limit = self._rng.randrange(max(1, length // 2 if fault == "stall" else length))
            sent, trickle = 0, fault == "trickle" and status == 206
            step = max(1, self.trickle_rate // 10) if trickle else 64 << 10
            while limit is None or sent < limit:
                data = await up_reader.read(step if limit is None else min(step, limit - sent))
                if not data:
                    break
                writer.write(data)
                sent += len(data)
                if counted:
                    self.body_bytes += len(data)
                await writer.drain()
                if trickle:  # bytes keep coming, too few to ever trip a read timeout's silence
                    await asyncio.sleep(0.1)
            await writer.drain()
            if fault == "stall" and limit is not None:
                began = time.monotonic()
                self.stalling += 1
                await reader.read()  # nothing more comes from the client until it hangs up
                self.stall_waits.append(time.monotonic() - began)
        finally:
            up_writer.close()


def on_nth(n: int, fault: str, method: str = "GET", prefix: str = "/") -> Callable[[str, str], str | None]:
    """A `by_request` giving `fault` to the `n`th request (from 1) of `method` to a target under `prefix`."""
    seen = 0

    def choose(m: str, target: str) -> str | None:
        nonlocal seen
        if m != method or not target.startswith(prefix):
            return None
        seen += 1
        return fault if seen == n else None
    return choose


def _with_headers(head: bytes, changes: dict[str, str | None]) -> bytes:
    """A response head with the headers in `changes` replaced, or removed where None."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    drop = {k.lower().encode() for k in changes}
    kept = [lines[0]] + [l for l in lines[1:] if l.split(b":", 1)[0].strip().lower() not in drop]
    added = [f"{k}: {v}".encode("latin-1") for k, v in changes.items() if v is not None]
    return b"\r\n".join(kept + added) + b"\r\n\r\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a crashed or overloaded server does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
