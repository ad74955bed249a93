"""A minimal HTTP/1.1 GET client for plain-TCP workers: the body is received straight into the caller's buffer."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["RangeReader", "Answer", "MAX_HEAD"]

MAX_HEAD = 64 << 10  # bytes of status line and headers; a worker's are under 1 KiB
HEAD_BUFFER = 4 << 10  # each connection's first header buffer, doubled up to MAX_HEAD if needed
_IDLE, _HEAD, _BODY, _DONE, _DISCARD = range(5)


class Answer(NamedTuple):
    """A response's status and headers (an aiohttp response's names, for the error mapping)."""

    status: int
    reason: str
    headers: CIMultiDictProxy
    complete: bool  # the whole body is in the caller's buffer


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; `request` sends a GET and receives its body into `into`.

    While a body is expected, `get_buffer` hands the kernel the unfilled part of the caller's
    buffer, so bytes go from the socket to their destination in one copy (`recv_into`).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._head = bytearray(HEAD_BUFFER)
        self._state, self._filled, self._got = _IDLE, 0, 0
        self._into: memoryview | None = None
        self._want = 0
        self._answer: Answer | None = None
        self._waiter: asyncio.Future | None = None
        self.keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError(
                f"connection closed after {self._got} body bytes" if self._state == _BODY
                else f"connection closed before the answer was complete{f': {exc}' if exc else ''}"))

    def get_buffer(self, sizehint: int):
        if self._state == _BODY:
            return self._into[self._got:]
        if self._state == _HEAD:
            return memoryview(self._head)[self._filled:]
        return memoryview(self._head)  # unexpected or discarded bytes: dropped (the connection is not reused)

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == _BODY:
            self._got += nbytes
            if self._got == self._want:
                self._finish(_IDLE)
        elif self._state == _HEAD:
            self._filled += nbytes
            self._parse_head()
        else:
            self.keep_alive = False

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost tells a waiting request

    async def request(self, head: bytes, into: memoryview) -> Answer:
        """The answer; the body is in `into` if it is a 2xx whose Content-Length is len(into)."""
        self._state, self._filled, self._got, self._into, self._answer = _HEAD, 0, 0, into, None
        self._want = len(into)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        try:
            await self._waiter
            complete = self._state == _IDLE and self._got == self._want
        finally:
            self._waiter, self._into = None, None  # the caller's buffer is theirs again (an mmap can close)
            if self._state != _IDLE:  # cancelled, failed, or an answer without the body we wanted
                self.keep_alive = False
                self._state = _DISCARD
        return self._answer._replace(complete=complete)

    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n", 0, self._filled)
        if end < 0:
            if self._filled == len(self._head) == MAX_HEAD:
                self._fail(ValueError(f"response headers over {MAX_HEAD} bytes"))
            elif self._filled == len(self._head):  # a new object: the old one may still be exported
                self._head = self._head + bytearray(len(self._head))
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            return self._fail(ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}"))
        headers: CIMultiDict = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return self._fail(ValueError(f"malformed header line {line[:80]!r}"))
            headers.add(name.strip(), value.strip())
        self._answer = Answer(int(code), reason, CIMultiDictProxy(headers), False)
        if headers.get("Connection", "").lower() == "close" or version == "HTTP/1.0":
            self.keep_alive = False
        leftover = self._filled - end - 4
        length = headers.get("Content-Length", "")
        if 200 <= self._answer.status < 300 and length == str(len(self._into)) \
                and "Transfer-Encoding" not in headers and leftover <= len(self._into):
            self._into[:leftover] = self._head[end + 4:self._filled]
            self._got, self._state = leftover, _BODY
            if self._got == len(self._into):
                self._finish(_IDLE)
        else:  # an error or an unexpected body: the caller reads the headers, the connection goes
            self._finish(_DISCARD)

    def _finish(self, state: int) -> None:
        self._state = state
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self._state = _DISCARD
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class RangeReader:
    """Keep-alive connections: at most `per_host` idle per (host, port) and `max_idle` in all; one request each at a time."""

    def __init__(self, connect_timeout: float, read_timeout: float, per_host: int = 16,
                 max_idle: int | None = None) -> None:
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._per_host = per_host
        self._max_idle = 2 * per_host if max_idle is None else max_idle  # over all hosts
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self.closed = False

    async def get(self, host: str, port: int, target: str, headers: dict[str, str], into: memoryview) -> Answer:
        """GET `target` (already percent-encoded) with `headers` (Host among them); the body lands in `into`.

        Raises OSError, ValueError or TimeoutError when the connection or the answer's framing fails.
        """
        head = "".join([f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()),
                        "\r\n"]).encode("latin-1")
        async with asyncio.timeout(self._read_timeout):
            conn = self._take(host, port)
            if conn is not None:
                try:
                    return await self._run(host, port, conn, head, into)
                except ConnectionResetError:
                    if conn._answer is not None:  # the worker answered, then went: not a stale connection
                        raise
            # A new connection, or a reused one the worker had closed while it was idle.
            return await self._run(host, port, await self._connect(host, port), head, into)

    async def close(self) -> None:
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.transport.close()
        self._idle.clear()

    async def _run(self, host: str, port: int, conn: _Connection, head: bytes, into: memoryview) -> Answer:
        try:
            answer = await conn.request(head, into)
        except BaseException:
            conn.transport.close()
            raise
        for key, conns in list(self._idle.items()):  # forget connections the workers closed (at most max_idle)
            conns[:] = [c for c in conns if not c.lost]
            if not conns:
                del self._idle[key]
        idle = self._idle.get((host, port), [])
        if conn.keep_alive and not conn.lost and not self.closed and len(idle) < self._per_host and \
                sum(map(len, self._idle.values())) < self._max_idle:
            self._idle.setdefault((host, port), idle).append(conn)
        else:
            conn.transport.close()
        return answer

    def _take(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if conn.keep_alive and not conn.lost and not conn.transport.is_closing():
                return conn
            conn.transport.close()  # it sent bytes while idle, or is going
        self._idle.pop((host, port), None)  # no empty lists left behind for workers long gone
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(_Connection, host, port)
        return conn
