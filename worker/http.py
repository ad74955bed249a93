"""HTTP handlers: range reads of objects, and the peer chunk route."""

from __future__ import annotations

import logging
import re
import uuid
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web
from xml.sax.saxutils import escape

from p2pcache.errors import BadRequest, P2PError, Unsupported
from p2pcache.httplog import OncePer
from p2pcache.objects import ObjectInfo
from p2pcache.ranges import ByteRange, parse_range

from .inputs import parse_hop
from .limits import TokenBucket
from .peer import ERROR_HEADER, HOP_HEADER, REASON_HEADER, chunk_from_params

__all__ = ["CLIENT", "REQUEST_ID", "answered", "client_address", "object_headers", "object_answer", "error_response",
           "error_answer", "log_error", "header_text", "body_response", "RequestLine", "send_body", "prepend",
           "parse_peer_request"]

log = logging.getLogger("p2pcache.http")
ERROR_LOG_PERIOD = 10.0  # seconds between two log lines of answers with one status and code (log_error)
_errors = OncePer(ERROR_LOG_PERIOD)
REQUEST_ID = web.RequestKey("request_id", str)
CLIENT = web.RequestKey("client", str)  # the address of the reader a serving process passed this request on for


def client_address(request: web.BaseRequest) -> str:
    """Who sent `request`: the reader a serving process passed it on for (its address), else the
    connection's peer (on the coordinator's unix socket, that is empty)."""
    return request.get(CLIENT) or str(request.remote)


async def answered(request: web.BaseRequest,
                   handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """`handle(request)`'s response, or the answer to what it raised: a P2PError as S3's error
    (logged if it is the server's), aiohttp's own (404, 405) as a plain response, a client gone
    before the status line as 499, anything else as a logged 500. An unprepared response gets
    the request's id, and closes the connection if an upload body is left unread (it must not
    be parsed as the next request). The worker's and its serving processes' one error mapping."""
    try:
        resp = await handle(request)
    except P2PError as exc:
        log_error(request.method, request.path, exc)
        resp = error_response(request, exc)
    except web.HTTPException as exc:
        resp = web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
    except ConnectionError:  # nobody to answer
        resp = web.Response(status=499)
    except Exception:
        log.exception("bug: unhandled error for %s %r", request.method, request.path)
        resp = web.Response(status=500, text="internal error, see the worker's log\n")
    if not resp.prepared:
        resp.headers["x-amz-request-id"] = request[REQUEST_ID]
        if request.method not in ("GET", "HEAD") and request.can_read_body:
            resp.force_close()
    return resp


def object_headers(info: ObjectInfo, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """What S3 sends with the object: its stored headers, then the request's `response-*` overrides."""
    headers = {"ETag": info.etag, "Accept-Ranges": "bytes", "Content-Type": info.content_type}
    if info.last_modified:
        headers["Last-Modified"] = info.last_modified
    headers.update(info.headers)
    if overrides:
        headers.update(overrides)
    return headers


def object_answer(info: ObjectInfo, range_header: str | None, part, overrides: dict[str, str]
                  ) -> tuple[int, dict[str, str], int, int]:
    """Status, headers and bytes `[start, stop)` of a GET or HEAD: the part `part` (a PartSpan),
    else the `Range`, else the whole object."""
    headers = object_headers(info, overrides)
    if part is not None:
        if part.count is not None:
            headers["x-amz-mp-parts-count"] = str(part.count)
        rng = ByteRange(part.start, part.stop, info.size) if part.stop > part.start else None
    else:
        rng = parse_range(range_header, info.size)
    if rng is None:
        return 200, headers, 0, info.size
    headers["Content-Range"] = rng.content_range()
    return 206, headers, rng.start, rng.stop


def log_error(method: str, path: str, exc: P2PError) -> None:
    """Log an error answered to a request if it is the server's: one line per status and code
    every ERROR_LOG_PERIOD seconds. One cause (a failing disk, S3 down) fails every request
    meanwhile, hundreds a second; its own warning and the metrics tell the rest."""
    if exc.status >= 500 and not isinstance(exc, Unsupported) and _errors.due(f"{exc.status} {exc.code}"):
        log.warning("%s %r -> %d %s (answers with this code are logged once per %g s)",
                    method, path, exc.status, exc, ERROR_LOG_PERIOD)


def error_response(request: web.BaseRequest, exc: P2PError) -> web.Response:
    """S3's XML error form, plus the code and reason in headers for peers and HEAD."""
    headers, body = error_answer(exc, request.path, request.get(REQUEST_ID) or uuid.uuid4().hex[:16].upper())
    return web.Response(status=exc.status, body=body, headers=headers)


def error_answer(exc: P2PError, path: str, request_id: str) -> tuple[dict[str, str], bytes]:
    """The headers and body of `error_response` (the fast path sends them itself)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{exc.code}</Code><Message>{_xml_text(exc.message)}</Message>"
        + "".join(f"<{k}>{_xml_text(v)}</{k}>" for k, v in exc.details.items())
        + f"<Resource>{_xml_text(path)}</Resource><RequestId>{request_id}</RequestId></Error>\n"
    )
    headers = {"Content-Type": "application/xml; charset=utf-8", ERROR_HEADER: exc.code,
               REASON_HEADER: header_text(exc.message)[:500], **exc.headers}
    return headers, body.encode()


def header_text(text: str) -> str:
    """Printable ASCII for a header: a reason may quote a key with CR, LF, NUL or non-ASCII in it."""
    return text.encode("unicode_escape").decode("ascii")


def _xml_text(text: str) -> str:
    """Escaped for XML 1.0, whose documents cannot hold most control characters even as references."""
    return escape(_XML_INVALID.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text))


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def body_response(request: web.BaseRequest, status: int, headers, length: int) -> web.StreamResponse:
    """An object's answer whose `length` bytes the caller writes, with its request id (set
    here: `answered` can no longer add it once the response is prepared)."""
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = length
    resp.headers["x-amz-request-id"] = request[REQUEST_ID]
    return resp


class RequestLine:
    """`request`'s connection, as a turn watches it (worker/turns.py)."""

    __slots__ = ("_request",)

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request

    @property
    def paused(self) -> bool:
        protocol = self._request.protocol
        return protocol is not None and protocol.writing_paused

    def abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.abort()


async def send_body(request: web.BaseRequest, resp: web.StreamResponse, pieces, on_piece,
                    egress: TokenBucket | None = None, *, length: int) -> Exception | None:
    """Send the body, `length` bytes; on failure return why it was cut short (the handler
    still returns `resp`).

    The status line is gone, so a failure now (a peer dying with no one to
    resume from, the object changing at the origin) can only close the
    connection: the client sees fewer bytes than Content-Length, never wrong
    bytes. So do pieces that end early, at once rather than when the client
    gives up waiting. A client that hangs up (ConnectionError) is not logged.
    """
    sent = 0
    try:
        async for piece in pieces:
            if egress is not None:
                await egress.take(len(piece))
            await resp.write(piece)
            on_piece(len(piece))
            sent += len(piece)
        if sent != length:
            raise P2PError(f"the body ended after {sent} of its {length} bytes")
        await resp.write_eof()
        return None
    except ConnectionError as exc:
        return exc
    except (P2PError, OSError) as exc:
        log.warning("aborting %s %s after headers: %s", request.method, request.path, exc)
        if request.transport is not None:
            request.transport.close()
        return exc


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


def parse_peer_request(request: web.BaseRequest, max_hops: int):
    """The chunk, byte range within it and hop count of a peer request; 400 if malformed."""
    try:
        c = chunk_from_params(request.query)
    except (KeyError, ValueError) as exc:
        raise BadRequest(f"malformed peer chunk request: {exc!r}") from None
    hop = parse_hop(request.headers.get(HOP_HEADER), max_hops)
    rng = parse_range(request.headers.get("Range"), c.length)
    if rng is None and "Range" in request.headers:
        raise BadRequest(f"malformed Range {request.headers['Range']!r}")
    start, stop = (rng.start, rng.stop) if rng else (0, c.length)
    return c, start, stop - start, hop

