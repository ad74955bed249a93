"""aiohttp's servers with the project's connection limits: a request head or body not whole in time closes its connection.

A connection is closed when no whole request head has come HEAD_TIMEOUT seconds after it
opened, or IDLE_TIMEOUT seconds after the end of its previous answer; bytes trickling in
extend neither, so a client that opens connections and sends nothing, or half a head, holds
each file descriptor for a bounded time. aiohttp's keep-alive timer is the second limit (its
default is an hour); the first is `Connection`'s own: older aiohttp starts no timer before a
first request (3.14.5 starts its keep-alive one). A connection a serving process's fast path
hands over starts its first limit then; the fast path keeps both itself (worker/fastpath.py).

A client that half-closes after its requests (`shutdown(SHUT_WR)`, as `nc -N` does) has each
request it sent whole answered, then the connection is closed (aiohttp dropped them unanswered).
One that closed both ways looks the same until bytes reach it: its side answers them with a reset.
So once an answer has waited PEER_CHECK seconds unbegun, a `100 Continue` (which an HTTP/1.1
client skips) goes ahead of it, and a reset found then cancels the handler, as a client that hangs
up always does (a fill nobody waits for is not retried).

aiohttp never times a body: every handler that reads one does so with `read_body`, which
has the head's limit from the start of the read; a body not whole by then is answered 408
(`RequestTimeout`), and the connection is closed after that answer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .errors import RequestTimeout

__all__ = ["HEAD_TIMEOUT", "IDLE_TIMEOUT", "PEER_CHECK", "Connection", "Server", "AppRunner", "read_body"]

HEAD_TIMEOUT = 30.0  # seconds a new connection has to send its first whole request head
IDLE_TIMEOUT = 75.0  # seconds a connection may wait for its next whole request head (nginx's keepalive_timeout)
MOMENT = 0.01  # seconds in-flight requests get at a shutdown past its deadline
PEER_CHECK = 0.5  # seconds between checks that a half-closed client is still there to answer
_PROBE = b"HTTP/1.1 100 Continue\r\n\r\n"  # an interim answer: an HTTP/1.1 client must skip it


class Connection(RequestHandler):
    """aiohttp's protocol for one connection, closed if its first request head is not whole
    within `head_timeout` of connecting; a body read has as long (`read_body`). After a half-close
    its whole requests are answered, then it closes."""

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._first_head: asyncio.TimerHandle | None = None
        self._answered = 0  # requests whose handlers returned (aiohttp's `_request_count`: those parsed)
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._peer_check: asyncio.TimerHandle | None = None
        self._probed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._first_head = asyncio.get_running_loop().call_later(self._head_timeout, self._head_due)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._first_head is not None:
            self._first_head.cancel()
            self._first_head = None
        if self._peer_check is not None:
            self._peer_check.cancel()
            self._peer_check = None
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        """The client sends nothing more. True (the connection stays open to answer) if a request
        it sent whole is not answered yet; False if none is, or a body was cut short (never to be
        whole), or on TLS (no half-close): asyncio closes the connection, cancelling a handler."""
        if self._eof:  # again: aiohttp paused and resumed reading
            return True
        body = self._last_body()
        if (self._answered >= self._request_count or (body is not None and not body.is_eof())
                or self.ssl_context is not None):
            return False
        self._eof = True
        self._peer_check = self._loop.call_later(PEER_CHECK, self._check_peer)
        return True

    def _last_body(self) -> Any:
        """The body (aiohttp's payload) of the last request parsed: one waiting its turn, else the
        one being answered."""
        if self._messages:
            return self._messages[-1][1]
        return self._current_request.content if self._current_request is not None else None

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        done = await super()._handle_request(request, start_time, request_handler)
        self._answered += 1
        if self._eof and self._answered >= self._request_count:
            self.close()  # the last answer the half-closed client can want: close after it
        return done

    def _check_peer(self) -> None:
        """While answers are due to a half-closed client: cut the connection if its side reset it
        (it had closed both ways); else send one probe ahead of an answer not yet begun."""
        self._peer_check = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            transport.abort()  # connection_lost: the handler is cancelled
            return
        request = self._current_request
        if (not self._probed and request is not None and request.version >= (1, 1)
                and request.writer.output_size == 0):
            transport.write(_PROBE)
            self._probed = True
        self._peer_check = self._loop.call_later(PEER_CHECK, self._check_peer)

    @property
    def body_timeout(self) -> float:
        return self._head_timeout

    def drop_body(self) -> None:
        """Close the connection once the current request is answered, without reading the rest of its
        body. aiohttp reads on for up to `lingering_time` (10 s), and keeps a keep-alive connection
        if the rest comes; with none, a body left unread closes the connection at once."""
        self._lingering_time = 0.0

    def _head_due(self) -> None:
        self._first_head = None
        # aiohttp counts each request head its parser completed (a malformed one too: it is answered 400)
        if self._request_count == 0:
            self.force_close()


class Server(web.Server):
    """`web.Server` whose connections keep HEAD_TIMEOUT and IDLE_TIMEOUT (or the given limits)."""

    def __init__(self, handler: Any, *, head_timeout: float | None = None, idle_timeout: float | None = None,
                 request_factory: Any = None, handler_cancellation: bool = False, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation,
                         **kwargs)
        self._connection_kwargs = kwargs | {
            "keepalive_timeout": IDLE_TIMEOUT if idle_timeout is None else idle_timeout,
            "head_timeout": HEAD_TIMEOUT if head_timeout is None else head_timeout,
        }

        self._finish_by: float | None = None

    def __call__(self) -> Connection:
        return Connection(self, loop=asyncio.get_running_loop(), **self._connection_kwargs)

    def finish_by(self, when: float) -> None:
        """At shutdown, in-flight requests get until loop time `when` at the latest, however long the
        runner's `shutdown_timeout`: a stop that already waited for other connections waits no longer in all."""
        self._finish_by = when

    async def shutdown(self, timeout: float | None = None) -> None:
        """Let requests in flight end within `timeout` seconds (or by `finish_by`'s time, if sooner),
        then cut them. aiohttp's own shutdown waits up to its timeout for them, then cancels them and
        waits up to its timeout again, which a handler writing to a reader who takes nothing sits out
        to the end (the cancel reaches its request, not its task): each wait gets half."""
        if self._finish_by is not None:
            left = self._finish_by - asyncio.get_running_loop().time()
            timeout = left if timeout is None else min(timeout, left)
        if timeout is not None:  # aiohttp waits without a limit for a timeout of 0 or less
            timeout = max(MOMENT, timeout / 2)
        await super().shutdown(timeout)


class AppRunner(web.AppRunner):
    """`web.AppRunner` serving its application on a `Server`: `kwargs` are the server's."""

    def __init__(self, app: web.Application, *, handle_signals: bool = False, shutdown_timeout: float = 60.0,
                 **kwargs: Any) -> None:
        super().__init__(app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout)
        self._server_kwargs = kwargs

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts and freezes the application
        return Server(plain.request_handler, request_factory=plain.request_factory, **self._server_kwargs)


async def read_body(request: web.BaseRequest) -> bytes:
    """`request`'s body (as `request.read()`), whole within its connection's limit (HEAD_TIMEOUT by
    default), else RequestTimeout (408): that answer is the connection's last."""
    protocol = request.protocol
    limit = protocol.body_timeout if isinstance(protocol, Connection) else HEAD_TIMEOUT
    try:
        async with asyncio.timeout(limit):
            return await request.read()
    except TimeoutError:
        if isinstance(protocol, Connection):
            protocol.drop_body()
        raise RequestTimeout(f"the request body did not come whole within {limit:g} s") from None
