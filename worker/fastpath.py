"""A serving process's HTTP fast path: plain range GETs answered without aiohttp's machinery.

aiohttp spends ~110 us of Python on each request (its parser's objects, the request
and response classes, header serialisation); a 64 KiB read of a chunk in the page
cache needs ~30 us in all. So the serving processes' listener speaks HTTP/1.1
itself for the one request that matters, `GET /bucket/key` with at most a `Range`
and conditions, when `Reads.read` (worker/reads.py) can answer it (bytes on this worker's
disk or at the worker that holds them). Any other request, and anything this parser
is not sure of (escapes in the path, a query, a body, a repeated header, HTTP/1.0,
a head that is not ASCII, more header fields than aiohttp takes), hands the connection with all its unanswered bytes to
aiohttp, which answers it and the rest of the connection as before. Nothing is
answered differently: the same `read` decides, the same headers go out.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import re
import time
from http import HTTPStatus
from typing import Awaitable, Callable, NamedTuple

from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from p2pcache.errors import P2PError
from p2pcache.httpserver import HEAD_TIMEOUT, IDLE_TIMEOUT

__all__ = ["Head", "parse_head", "response_head", "FastPath", "MAX_FIELDS", "MAX_HEAD"]

log = logging.getLogger("p2pcache.worker.fastpath")
MAX_HEAD = 8 << 10  # a longer request head is aiohttp's to refuse
# aiohttp refuses (400) a head of more header fields than its connections' `max_headers` (128, the
# servers' default: they set none): its C parser counts fields, its Python one the request line and
# the blank line too. A head of more than this is aiohttp's to answer, whichever parser it has.
MAX_FIELDS = inspect.signature(RequestHandler.__init__).parameters["max_headers"].default - 2
_TARGET = re.compile(rb"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")  # no escapes, no query: those are aiohttp's
_DOTS = re.compile(rb"//|/\.\.?(/|$)")  # segments aiohttp's URL normalises
_FIELDS = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t]*)*")  # token: visible ASCII
_BODY = frozenset({"transfer-encoding", "expect", "upgrade", "te", "trailer", "http2-settings"})


class Head(NamedTuple):
    """A request head the fast path may answer: `GET <path> HTTP/1.1`, its headers."""

    path: str
    headers: CIMultiDict[str]
    close: bool  # the client sent `Connection: close`

    @property
    def method(self) -> str:
        return "GET"

    @property
    def raw_path(self) -> str:  # what the reader keys' signature check reads
        return self.path


def parse_head(head: bytes | bytearray) -> Head | None:
    """The request in `head` (up to, without, its blank line), or None: aiohttp's to parse."""
    line, crlf, fields = head.partition(b"\r\n")
    if not _FIELDS.fullmatch(head, len(line)):
        return None
    if fields.count(b"\r\n") >= MAX_FIELDS:  # the fields, less one
        return None
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    if not _TARGET.fullmatch(target) or _DOTS.search(target):
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    close = False
    for line in fields.decode("ascii").split("\r\n") if fields else ():  # ASCII: _FIELDS said so
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        if name in headers:
            return None
        key = name.lower()
        if key in _BODY or (key == "content-length" and value != "0"):
            return None
        if key == "connection":
            if value.lower() not in ("close", "keep-alive"):
                return None
            close = value.lower() == "close"
        headers[name] = value
    if "host" not in headers:  # HTTP/1.1 requires it: aiohttp's 400
        return None
    return Head(target.decode(), headers, close)


_PHRASES = {200: "OK", 206: "Partial Content"}
_date = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date[1]


def response_head(status: int, headers: dict[str, str], length: int, request_id: str,
                  close: bool) -> bytes | None:
    """The status line and headers, as aiohttp writes them; None if a header cannot be sent as is."""
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status) or HTTPStatus(status).phrase}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value:
            return None  # aiohttp's to refuse
        lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {length}", f"x-amz-request-id: {request_id}", f"Date: {_http_date()}",
              f"Server: {SERVER_SOFTWARE}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class FastPath(asyncio.Protocol):
    """One client connection: requests `answer_now` or `answer` can give are answered here, in
    order; the first one they cannot give hands the connection (that request's bytes and all
    after them) to the protocol `fallback()` makes, aiohttp's, for good. The next request is
    taken only once the answers before it are down to the transport's high-water mark, so a
    client that sends requests and reads nothing holds one answer's worth of memory here.
    A connection whose first whole request head is not in `head_timeout` seconds after it opened,
    or its next one `idle_timeout` seconds after an answer, is closed (p2pcache/httpserver.py:
    aiohttp's connections keep the same limits)."""

    def __init__(self, answer_now: Callable[[Head, int, "FastPath"], bool],
                 answer: Callable[[Head, int, "FastPath"], Awaitable[bool]],
                 fallback: Callable[[], asyncio.Protocol], live: set,
                 head_timeout: float = HEAD_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._answer_now = answer_now  # ServingProcess.answer_now: what needs no wait, at once
        self._answer = answer  # ServingProcess.answer_fast(head, bytes it used, self) -> answered?
        self._fallback = fallback
        self._live = live  # the process's fast connections, closed when it stops
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task | None = None
        self._writable: asyncio.Future | None = None
        self._paused = False  # writing: the transport's buffer is above its high-water mark
        self._on_drained: Callable[[], None] | None = None  # `after_drained`'s, until then
        self._held = False  # reading: paused while a request is answered and more piles up
        self._eof = False
        self._head_timeout, self._idle_timeout = head_timeout, idle_timeout
        self._idle: asyncio.TimerHandle | None = None
        self._due = 0.0  # loop time by which the next whole request head must be in

    @property
    def busy(self) -> bool:
        return self._task is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._live.add(self)
        self._wait_idle(self._head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._live.discard(self)
        self._transport = None
        self._stop_idle()
        if self._task is not None:
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the client went away"))
        self._call_drained()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._next()
        elif len(self._buf) > MAX_HEAD and not self._held:
            self._held = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return self._task is not None  # an answer under way is finished first; idle: close

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._call_drained()

    @property
    def paused(self) -> bool:
        """Whether what was written is above the transport's high-water mark."""
        return self._paused

    def after_drained(self, fn: Callable[[], None]) -> None:
        """Call `fn` once what was written is below the high-water mark (now, if it is) or the
        connection is gone: an answer written at once keeps its turn until then."""
        if self._paused and self._transport is not None:
            self._on_drained = fn
        else:
            fn()

    def _call_drained(self) -> None:
        fn, self._on_drained = self._on_drained, None
        if fn is not None:
            fn()

    def close(self) -> None:
        """Close the connection (the process stops); an answer under way is cut short."""
        if self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        """Answer the whole requests in the buffer, in order, or hand the connection over.
        What `answer_now` cannot answer at once becomes a task (`answer`)."""
        while self._transport is not None:
            if self._paused:  # the client is not reading what it asked for: wait for it
                self._task = asyncio.get_running_loop().create_task(self._drained())
                return
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:  # a head ended by bare LFs is aiohttp's to refuse, not to wait on
                if len(self._buf) > MAX_HEAD or b"\n\n" in self._buf or (self._eof and self._buf):
                    self._hand_over()
                elif self._eof:
                    self._transport.close()
                return
            head = parse_head(self._buf[:end]) if end <= MAX_HEAD else None
            if head is None:
                self._hand_over()
                return
            try:
                answered = self._answer_now(head, end + 4, self)
            except Exception:
                log.exception("bug: fast path failed for GET %r; answered by a task", head.path)
                answered = False
            if not answered:
                self._task = asyncio.get_running_loop().create_task(self._serve(head, end + 4))
                return
            if not self._after(head, True):
                return

    async def _serve(self, head: Head, used: int) -> None:
        try:
            sent = await self._answer(head, used, self)
        except asyncio.CancelledError:
            raise
        except P2PError:  # the coordinator is unreachable: aiohttp's answer says so
            sent = False
        except Exception:
            log.exception("bug: fast path failed for GET %r; aiohttp answers it", head.path)
            sent = False
        self._task = None
        if self._after(head, sent):
            self._next()

    async def _drained(self) -> None:
        try:
            await self.drain()
        except ConnectionError:
            return
        self._task = None
        self._next()

    def _after(self, head: Head, answered: bool) -> bool:
        """What follows an answer; True: go on to the next request."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if not answered:
            self._hand_over()
            return False
        if head.close:
            transport.close()
            return False
        if self._held:
            self._held = False
            transport.resume_reading()
        self._wait_idle(self._idle_timeout)
        return True

    def _wait_idle(self, limit: float) -> None:
        """Close the connection if no whole request comes within `limit` seconds from now (bytes
        trickling in do not extend it). One timer, moved on only when it fires."""
        loop = asyncio.get_running_loop()
        self._due = loop.time() + limit
        if self._idle is None or self._idle.when() > self._due:
            self._stop_idle()
            self._idle = loop.call_at(self._due, self._idle_check)

    def _idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._idle_timeout if self._task is not None else self._due - loop.time()
        self._idle = None
        if left <= 0.01:
            self.close()
        elif self._transport is not None:
            self._idle = loop.call_later(left, self._idle_check)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def take(self, used: int) -> None:
        """Drop the `used` bytes of the request being answered (its answer is about to go out)."""
        del self._buf[:used]

    def write(self, data) -> None:
        self._transport.write(data)

    def writelines(self, data) -> None:
        self._transport.writelines(data)

    async def drain(self) -> None:
        """Return once the transport's buffer is below its high-water mark."""
        if self._transport is None:
            raise ConnectionResetError("the client went away")
        if self._paused:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable

    def abort(self) -> None:
        """Cut an answer short (its headers went out; the rest cannot be read)."""
        if self._transport is not None:
            self._transport.abort()

    def _hand_over(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._live.discard(self)
        self._stop_idle()
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            handler.pause_writing()
        if self._held:
            transport.resume_reading()
        if self._buf:
            handler.data_received(bytes(self._buf))
        self._transport = None
        if self._eof and not handler.eof_received():  # nothing whole left to answer: as asyncio would
            transport.close()
