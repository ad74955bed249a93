"""A serving process's answer to a peer's chunk request (`/_p2p/chunk`) from the chunk's file.

Only a signed GET for a chunk on disk is answered here, as the coordinator
would (worker/peerroutes.py): the sums of the blocks sent first, then
the bytes, each block checked; from a block that fails its checksum on,
the coordinator's bytes (it drops the copy and refills the chunk, as its own
answer would). Anything else (unsigned, malformed, a miss that needs a fill)
returns None and is passed to the coordinator, which answers it, logs it and
counts it.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from p2pcache.auth import HEADER, AuthError, Verifier
from p2pcache.errors import CorruptChunk, P2PError

from .routing import MAX_HOPS
from .http import parse_peer_request
from .peer import CHUNK_PATH, chunk_answer
from .chunkfile import read_pieces

__all__ = ["PeerFiles"]

class PeerFiles:
    def __init__(self, reads, verifier: Verifier | None) -> None:
        self._p = reads  # the serving process's Reads: its files, reports, egress and allowed buckets
        self._verifier = verifier

    async def answer(self, request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method != "GET" or request.path != CHUNK_PATH:
            return None
        try:
            if self._verifier is not None:
                self._verifier.check("GET", request.path, request.query.items(), request.headers.get(HEADER),
                                     headers=request.headers)
            c, offset, length, hop = parse_peer_request(request, MAX_HOPS)
        except (AuthError, P2PError):
            return None
        p = self._p
        if p.allowed and c.bucket not in p.allowed or length <= 0:
            return None
        with contextlib.ExitStack() as pins:
            file = p.pin(pins, c.name)  # not evicted while the peer takes it
            if file is None:
                return None
            resp, sums = chunk_answer(c, offset, length, file)
            p.reports.touch(c.name)  # a use, not a hit: hits and misses are readers' (README, "Metrics")
            p.budget.open()
            pins.callback(p.budget.close)
            sent = 0
            try:
                await resp.prepare(request)
                if sums:
                    await resp.write(sums)
                try:
                    async for data in read_pieces(file, offset, length, p.budget.piece):
                        sent += await self._send(resp, data)
                except CorruptChunk as exc:  # nothing of the bad block went out
                    p.reports.corrupt(exc.name)
                    if request.query.get("local") == "1":  # a holder's copy: the asker goes on elsewhere
                        raise
                    # As the coordinator's answer would: the chunk refilled here, not a cut the peer
                    # would take for a dead worker (it would read this worker's other chunks from S3).
                    async for data in p.coordinator.refill(c, offset + sent, offset + length, hop):
                        sent += await self._send(resp, data)
                await resp.write_eof()
            except ConnectionError:
                pass
            except (CorruptChunk, OSError, P2PError):  # the peer fails over
                if request.transport is not None:
                    request.transport.close()
            return resp

    async def _send(self, resp: web.StreamResponse, data: bytes) -> int:
        p = self._p
        if p.egress is not None:
            await p.egress.take(len(data))
        await resp.write(data)
        p.reports.sent_to_peer(len(data))
        return len(data)
