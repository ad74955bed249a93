"""A worker's two routes for its peers: `/_p2p/chunk` (a piece of a chunk, filled here first if
needed) and `/_p2p/take` ("you own this chunk now": copy it from its holder, never from S3).
What goes over them, and how the asker checks it, is worker/peer.py."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from p2pcache.control import KEEP_SHARE
from p2pcache.errors import BadRequest, NotCached, NotOwner

from . import inputs
from .http import parse_peer_request, send_body
from .peer import CHUNK_PATH, TAKE_PATH, chunk_answer, chunk_from_params, keep_from_params
from .routing import MAX_HOPS, fill_source

__all__ = ["fill_here", "peer_routes"]

log = logging.getLogger("p2pcache.keep")


def peer_routes(worker) -> dict:
    """`{path: handler}` of the peer routes of `worker` (worker/server.py's Worker)."""

    async def chunk(request: web.BaseRequest) -> web.StreamResponse:
        """Serve a piece of a chunk to a peer, filling it here first if needed (not with `local=1`).

        From the store, the sums of the blocks sent go first (worker/peer.py)."""
        c, offset, length, hop = parse_peer_request(request, MAX_HOPS)
        worker._check_bucket(c.bucket)
        local = request.query.get("local") == "1"
        # A copy held here needs no ring (as in a serving process): a worker that has not had the
        # restarted master's first ring yet still serves what was handed to it.
        stream = worker.chunks.local(c, offset, length)
        source = None
        if stream is None and local:
            raise NotCached(f"{c.ring_key} is not on {worker.id}")
        if stream is None:
            stream, source = await fill_here(worker, c, offset, length, hop)
        resp, sums = chunk_answer(c, offset, length, getattr(stream, "file", None))
        pieces = worker.chunks.pieces(c, offset, length, stream, source, hop, local)
        try:
            await resp.prepare(request)
            if sums:
                await resp.write(sums)
            await send_body(request, resp, pieces, worker.metrics.chunk_bytes_served.inc, worker.egress,
                            length=length)
        finally:
            stream.close()
        return resp

    async def take(request: web.BaseRequest) -> web.Response:
        """A holder hands us a chunk we own: copy it from that holder (or an earlier one), never S3.

        A kept chunk stays kept with its new owner, dated when it was pinned, if that keeps this
        worker under its keep limit (counted as a preload's keeps are, worker/control.py); over
        it, the chunk is taken all the same (cached, and evicted as any other), not kept."""
        try:
            c, holder = chunk_from_params(request.query), request.query["from"]
            keep, pinned = keep_from_params(request.query)
        except (KeyError, ValueError) as exc:
            raise BadRequest(f"malformed take request: {exc!r}") from None
        worker._check_bucket(c.bucket)
        placement = worker._placement()
        inputs.check_chunk(c, placement.ring.chunk_size)
        if not placement.owns(worker.id, c):
            raise NotOwner(f"{worker.id} does not own {c.ring_key} in ring epoch {placement.ring.epoch}")
        keeps, over = worker.keeps, 0
        # No await from the check to the hold: takes checked together count each other's chunks.
        if keep and (kept := keeps.would_keep(c)) > keeps.limit:
            keep, over = False, kept
        with keeps.holding(c) if keep else contextlib.nullcontext():
            copied = await worker.chunks.take(c, holder)
            if keep:
                await keeps.add(c, pinned)
        if over:
            worker.metrics.handoff_pins_over_limit.inc()
            log.warning("took %s from %s, pinned there, but did not keep it: keeping it would make %d kept "
                        "bytes, over this worker's limit of %d (%s of --capacity %d); it is cached and evicted "
                        "as any other chunk. To keep it, raise --capacity or unpin others (p2pcache unpin), "
                        "and pin it again (p2pcache preload --pin)", c.ring_key, holder, over, keeps.limit,
                        f"{KEEP_SHARE:.0%}", worker.store.capacity)
        return web.json_response({"copied": copied})

    return {CHUNK_PATH: chunk, TAKE_PATH: take}


async def fill_here(worker, c, offset: int, length: int, hop: int):
    """(a stream of chunk `c` from `offset`, the peer its fill copied from or None): the chunk filled
    here if it is missing, as a peer's request (`hop`) asks of its owner: from its primary (a
    follower), an earlier holder or S3, once for every reader (worker/chunks.py `open_local`). Checked
    first (worker/inputs.py): a chunk this cluster could hold, of the object's current version and size."""
    placement = worker._placement()
    inputs.check_chunk(c, placement.ring.chunk_size)
    await inputs.check_chunk_object(worker.objects, c)
    source = fill_source(placement.owners(c), placement.ring.replicas, worker.id, hop)
    return await worker.chunks.open_local(c, offset, length, source, hop), source
