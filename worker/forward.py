"""A serving process's channel to its coordinator: HTTP over a unix socket.

Whatever a serving process does not answer from a chunk file (a miss, a fill,
listings, HEAD, errors, every /_p2p/ route) is passed on as is, signature
headers included, and the coordinator's answer sent back as it comes. A
hop-by-hop header is not passed on unless a reader's signature covers it (a
client may sign `Content-Length: 0`): the coordinator checks the signature
against the headers the client sent (`passed_on`). The client's address goes with it
(`CLIENT_HEADER`, with the coordinator's token): the coordinator logs refusals by it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl
from xml.sax.saxutils import unescape

import aiohttp
from aiohttp import web
from yarl import URL

from p2pcache.errors import ORIGIN_HEADER, Relayed, Unavailable
from p2pcache.httpserver import read_body
from p2pcache.objects import ChunkId, ObjectInfo

from .peer import ERROR_HEADER, HOP_HEADER, REASON_HEADER, chunk_params

__all__ = ["CLIENT_HEADER", "CoordinatorClient", "DOWN_PATH", "HOP_BY_HOP", "ID_PATH", "LOCAL_PREFIX", "OBJECT_PATH",
           "REFILL_PATH", "REPORT_PATH", "REST_PATH", "RING_PATH", "TOKEN_HEADER", "passed_on", "sigv4_signed_headers"]

log = logging.getLogger("p2pcache.worker.forward")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-connection", "proxy-authenticate", "proxy-authorization", "content-length"})
_NOT_PASSED_BACK = HOP_BY_HOP | {"date", "server"}
_BASE = "http://coordinator"
LOCAL_PREFIX = "/_p2p/local/"  # the coordinator's routes for its serving processes (unix socket only)
OBJECT_PATH, REPORT_PATH, REST_PATH = LOCAL_PREFIX + "object", LOCAL_PREFIX + "report", LOCAL_PREFIX + "rest"
RING_PATH, DOWN_PATH = LOCAL_PREFIX + "ring", LOCAL_PREFIX + "down"
REFILL_PATH = LOCAL_PREFIX + "refill"  # the rest of a peer's answer from a chunk file that failed its sums
ID_PATH = LOCAL_PREFIX + "id"  # the worker's id: peers sign their requests for it
TOKEN_HEADER = "X-P2P-Local"  # the coordinator's token for its local routes
CLIENT_HEADER = "X-P2P-Client"  # on a request passed on: "<token> <the client's address>"
# What an error answer may set; its reason as given (escaped once: worker/http.py `header_text`).
_ERROR_HEADERS = ("Retry-After", ORIGIN_HEADER, "ETag", "Content-Range", REASON_HEADER)
_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^\s,]*)")


class CoordinatorClient:
    def __init__(self, socket_path: str, local_headers: dict[str, str]) -> None:
        self._local_headers = local_headers  # on the coordinator's local routes only
        self._token = local_headers.get(TOKEN_HEADER, "")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path, limit=0),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def close(self) -> None:
        await self._session.close()

    async def get_json(self, path: str, params: dict[str, str]) -> Any:
        """The coordinator's JSON answer to a local route; an error it answered is raised as it
        gave it (`Relayed`), so it reaches the reader without being asked again."""
        try:
            async with self._session.get(_BASE + path, params=params, headers=self._local_headers) as resp:
                if resp.status != 200:
                    raise _relayed(resp.status, resp.headers, await resp.text())
                return await resp.json()
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _unavailable(exc) from exc

    async def post_json(self, path: str, body: Any) -> Any | None:
        """The coordinator's JSON answer, or None if it answered an error (logged)."""
        try:
            async with self._session.post(_BASE + path, data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"} | self._local_headers) as resp:
                if resp.status != 200:
                    log.warning("coordinator answered %d to %s", resp.status, path)
                    return None
                return await resp.json()
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _unavailable(exc) from exc

    def rest(self, info: ObjectInfo, start: int, stop: int, counted: int = 0) -> AsyncIterator[bytes]:
        """Bytes `[start, stop)` of the version `info`, read by the coordinator (REST_PATH);
        a P2PError if it cannot send them all. The chunks that begin before `counted` were
        counted (hits, misses) here: the coordinator does not count them again."""
        params = {"bucket": info.bucket, "key": info.key, "etag": info.etag, "size": str(info.size),
                  "start": str(start), "stop": str(stop), "counted": str(counted)}
        return self._bytes(REST_PATH, params, {}, stop - start, "the rest of a read")

    def refill(self, c: ChunkId, start: int, stop: int, hop: int) -> AsyncIterator[bytes]:
        """Bytes `[start, stop)` of chunk `c` for a peer's answer this process began from a chunk
        file that failed its checksums, from the coordinator (REFILL_PATH), which refills the chunk
        as its own answer would have (`hop`: the peer request's); a P2PError if it cannot send them all."""
        headers = {"Range": f"bytes={start}-{stop - 1}", HOP_HEADER: str(hop)}
        return self._bytes(REFILL_PATH, chunk_params(c), headers, stop - start, "the rest of a peer's chunk")

    async def _bytes(self, path: str, params: dict[str, str], headers: dict[str, str], length: int,
                     what: str) -> AsyncIterator[bytes]:
        """The `length` bytes of the coordinator's 206 to a local route; Unavailable if it sends fewer."""
        got = 0
        try:
            async with self._session.get(_BASE + path, params=params, headers=headers | self._local_headers) as resp:
                if resp.status != 206:
                    raise Unavailable(f"the coordinator answered {resp.status} "
                                      f"{resp.headers.get(REASON_HEADER, '')} for {what}")
                async for data in resp.content.iter_chunked(1 << 20):
                    got += len(data)
                    yield data
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(exc) from exc
        if got != length:
            raise Unavailable(f"the coordinator sent {got} of {length} bytes")

    async def forward(self, request: web.BaseRequest) -> web.StreamResponse:
        """Pass `request` on and stream the answer back (a cut answer cuts the client's connection)."""
        body = await read_body(request) if request.can_read_body else None
        headers = passed_on(request.headers.items(), request.headers.get("Authorization"),
                            request.raw_path.partition("?")[2], self._local_headers)
        headers.append((CLIENT_HEADER, f"{self._token} {request.remote or ''}"))
        url = URL(_BASE + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(request.method, url, headers=headers, data=body,
                                                   allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(exc) from exc
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.raw_headers:  # as sent: aiohttp's parser would name ETag `Etag`
                k = name.decode("utf-8", "surrogateescape")
                if k.lower() not in _NOT_PASSED_BACK:
                    resp.headers.add(k, value.decode("utf-8", "surrogateescape"))
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            if request.method == "HEAD":
                await resp.write_eof()
                return resp
            try:
                async for data in upstream.content.iter_chunked(1 << 20):
                    await resp.write(data)
            except ConnectionError:  # the client hung up
                return resp
            except aiohttp.ClientError as exc:  # the coordinator cut its answer: so must we
                log.warning("coordinator cut %s %s: %r", request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write_eof()
            return resp
        finally:
            upstream.release()


def sigv4_signed_headers(authorization: str | None, raw_query: str) -> frozenset[str]:
    """The names (lower case) of the headers a reader's SigV4 signature covers: its Authorization
    header's `SignedHeaders`, or a presigned URL's `X-Amz-SignedHeaders`; none if it is unsigned.
    Lenient: a malformed signature is the coordinator's to refuse."""
    names = ""
    if authorization:
        found = _SIGNED_HEADERS.search(authorization)
        names = found[1] if found else ""
    elif "X-Amz-SignedHeaders=" in raw_query:
        names = next((v for k, v in parse_qsl(raw_query, keep_blank_values=True) if k == "X-Amz-SignedHeaders"), "")
    return frozenset(n.strip().lower() for n in names.split(";") if n.strip())


def passed_on(headers, authorization: str | None, raw_query: str, local: dict[str, str]) -> list[tuple[str, str]]:
    """The headers of a client's request (`headers`: its (name, value) pairs) to pass on to the
    coordinator: not the hop-by-hop ones, unless the reader signed them (the coordinator checks the
    signature against what the client sent), nor one of the coordinator's own (`local`: a client
    that sends one does not reach a local route; CLIENT_HEADER: nor does it name another client)."""
    signed = sigv4_signed_headers(authorization, raw_query)
    own = {name.lower() for name in local} | {CLIENT_HEADER.lower()}
    return [(k, v) for k, v in headers
            if (k.lower() not in HOP_BY_HOP or k.lower() in signed) and k.lower() not in own]


def _relayed(status: int, headers, body: str) -> Relayed:
    """The coordinator's error answer (worker/http.py `error_response`) as an error to answer again:
    its message from the XML body (the reason header is escaped and cut), the headers it set."""
    found = _MESSAGE.search(body)
    message = unescape(found[1]) if found else headers.get(REASON_HEADER, "")
    return Relayed(status, headers.get(ERROR_HEADER, "InternalError"), message,
                   {k: headers[k] for k in _ERROR_HEADERS if k in headers})


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"this worker's coordinator process did not answer: {exc!r}", retry_after=1)
