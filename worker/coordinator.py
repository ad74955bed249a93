"""The coordinator's side of the serving processes' channel: its unix socket's routes.

Serving processes ask it for the worker's id (`/_p2p/local/id`: peers sign
their requests for it), an object's identity (`/_p2p/local/object`) and
its ring (`/_p2p/local/ring`: they read chunks held by other workers from those
workers), tell it of a peer that failed (`/_p2p/local/down`) before they pass
on what it should have sent, ask it for the rest of a read (`/_p2p/local/rest`)
or of a peer's chunk (`/_p2p/local/refill`) when a chunk file fails its checksums, and report their chunk uses, corrupt chunks and requests
(`/_p2p/local/report`, answered with the ring's version so they see a change);
every other request on the socket is one they pass on, answered by the worker
as if it had come to its port. A local route needs the token the coordinator
gave its serving processes (`TOKEN_HEADER`): a request passed on from the
port, whatever its path, never reaches one. A request passed on names the client it came
from (`CLIENT_HEADER`, with the token), which the worker logs as its sender.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Awaitable, Callable

from aiohttp import web

from p2pcache.errors import BadRequest, CorruptChunk, P2PError
from p2pcache.httpserver import read_body
from p2pcache.objects import ObjectInfo

from .http import CLIENT, error_response, parse_peer_request, prepend, send_body
from .forward import (
    CLIENT_HEADER, DOWN_PATH, ID_PATH, OBJECT_PATH, REFILL_PATH, REPORT_PATH, REST_PATH, RING_PATH, TOKEN_HEADER,
)
from .peerroutes import fill_here
from .routing import MAX_HOPS

__all__ = ["coordinator_handler", "TOUCHES"]

TOUCHES = 3  # S3-FIFO counts at most 3 uses of a chunk: more reports of one batch add nothing

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def coordinator_handler(worker, token: str) -> Handler:
    """The unix socket's handler: the local routes (with `token`), else the worker's own `_handle`."""
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        route = routes.get(request.path)
        if route is None or not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
            given, _, client = request.headers.get(CLIENT_HEADER, "").partition(" ")
            if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
                request[CLIENT] = client
            return await worker._handle(request)
        try:
            return await route(request)
        except P2PError as exc:
            return error_response(request, exc)

    async def object_info(request: web.BaseRequest) -> web.Response:
        q = request.query
        try:
            bucket, key, max_age = q["bucket"], q["key"], float(q["max_age"])
        except (KeyError, ValueError) as exc:
            raise BadRequest(f"malformed object request: {exc!r}") from None
        ring = worker._placement().ring
        info = await worker.objects.get(bucket, key, max_age)
        return web.json_response({"etag": info.etag, "size": info.size, "last_modified": info.last_modified,
                                  "content_type": info.content_type, "headers": info.headers,
                                  "chunk_size": ring.chunk_size, "ring": ring.version})

    async def worker_id(request: web.BaseRequest) -> web.Response:
        return web.json_response({"id": worker.id})

    async def ring(request: web.BaseRequest) -> web.Response:
        """The worker's current ring (msgpack, base64) and its own id in it."""
        snapshot = worker._placement().ring
        return web.json_response({"me": worker.id, "ring": base64.b64encode(snapshot.encode()).decode()})

    async def report(request: web.BaseRequest) -> web.Response:
        try:
            batch = json.loads(await read_body(request))
            process, touched, corrupt = str(int(batch["process"])), batch["touched"], batch["corrupt"]
            requests, sent, hits = batch["requests"], int(batch["bytes"]), int(batch["hits"])
            misses = int(batch.get("misses", 0))
            peer_sent, peer_got = int(batch.get("peer_bytes_served", 0)), int(batch.get("peer_bytes", 0))
            corrupt_transfers, fast = int(batch.get("corrupt_transfers", 0)), int(batch.get("fast", 0))
            stalled = int(batch.get("stalled", 0))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadRequest(f"malformed report: {exc!r}") from None
        if worker.procs is not None:
            worker.procs.heard(int(process))
        for name, uses in touched.items():
            for _ in range(min(int(uses), TOUCHES)):
                worker.store.touch(name)
        for name in corrupt:  # checked again here: the copy reported may have been refilled since
            if name in worker.store and not await worker.store.intact(name):
                worker.chunks.corrupt(CorruptChunk(name, "a serving process read a block that failed its checksum"))
        m = worker.metrics
        for label, n in requests.items():
            method, _, status = label.partition(" ")
            m.count_request(method, int(status), int(n))
            m.process_requests.labels(process).inc(int(n))
        m.bytes_served.inc(sent)
        m.chunk_bytes_served.inc(peer_sent)
        m.peer_bytes.inc(peer_got)
        m.hits.inc(hits)
        m.misses.inc(misses)
        m.corrupt_transfers.inc(corrupt_transfers)
        m.fast_requests.inc(fast)
        m.stalled.inc(stalled)
        placement = worker.placement
        return web.json_response({"ring": placement.ring.version if placement else None})

    async def down(request: web.BaseRequest) -> web.Response:
        """A serving process's peer failed: the coordinator asks it last for a while too (it
        reads what the serving process passes on, and the worker's other reads)."""
        try:
            peer = str(json.loads(await read_body(request))["peer"])
        except (KeyError, ValueError, TypeError) as exc:
            raise BadRequest(f"malformed peer failure: {exc!r}") from None
        worker.chunks.peer_failed(peer)
        return web.json_response({})

    async def rest(request: web.BaseRequest) -> web.StreamResponse:
        """The rest of a read a serving process could not finish from its files (a corrupt chunk);
        the chunks that begin before `counted` it counted as hits or misses already."""
        q = request.query
        try:
            info = ObjectInfo(q["bucket"], q["key"], q["etag"], int(q["size"]))
            start, stop, counted = int(q["start"]), int(q["stop"]), int(q.get("counted", 0))
        except (KeyError, ValueError) as exc:
            raise BadRequest(f"malformed read request: {exc!r}") from None
        if not 0 <= start < stop <= info.size:
            raise BadRequest(f"bytes {start}-{stop} outside the object's {info.size}")
        pieces = worker.chunks.read(info, start, stop, counted)
        first = await anext(pieces)  # errors before the status line get a status
        resp = web.StreamResponse(status=206)
        resp.content_length = stop - start
        await resp.prepare(request)
        try:
            await send_body(request, resp, prepend(first, pieces), lambda n: None, length=stop - start)
        finally:
            await pieces.aclose()
        return resp

    async def refill(request: web.BaseRequest) -> web.StreamResponse:
        """The rest of a peer's answer a serving process began from a chunk file whose next block
        failed its checksum: the bytes from here, as this worker's own answer would have gone on
        (worker/peerroutes.py): the bad copy dropped and the chunk refilled here once, never a
        cut answer its peer would take for a dead worker. Bytes only: the sums went first."""
        c, offset, length, hop = parse_peer_request(request, MAX_HOPS)
        stream, source = await fill_here(worker, c, offset, length, hop)
        try:
            pieces = worker.chunks.pieces(c, offset, length, stream, source, hop)
            resp = web.StreamResponse(status=206)
            resp.content_length = length
            await resp.prepare(request)
            await send_body(request, resp, pieces, lambda n: None, length=length)  # counted by the serving process
        finally:
            stream.close()
        return resp

    routes = {OBJECT_PATH: object_info, REPORT_PATH: report, REST_PATH: rest, RING_PATH: ring, DOWN_PATH: down,
              ID_PATH: worker_id, REFILL_PATH: refill}
    return handle
