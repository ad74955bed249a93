"""The internal peer API: fetch a piece of a chunk from the worker that owns it."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp

from p2pcache.errors import Busy, NotFound, ObjectChanged, PeerError
from p2pcache.objects import ChunkId
from p2pcache.ring import WorkerInfo

__all__ = ["PeerClient", "PeerStream", "CHUNK_PATH", "HOP_HEADER", "ERROR_HEADER", "REASON_HEADER", "chunk_params", "chunk_from_params"]

CHUNK_PATH = "/_p2p/chunk"
HOP_HEADER = "X-P2P-Hop"
ERROR_HEADER = "X-P2P-Error"  # the error's code, set on every error response
REASON_HEADER = "X-P2P-Reason"  # its one-line message
PIECE = 256 << 10


def chunk_params(c: ChunkId) -> dict[str, str]:
    return {"bucket": c.bucket, "key": c.key, "etag": c.etag, "size": str(c.size),
            "chunk_size": str(c.chunk_size), "index": str(c.index)}


def chunk_from_params(q) -> ChunkId:
    """Raises KeyError/ValueError on a malformed query; the caller answers 400."""
    c = ChunkId(q["bucket"], q["key"], q["etag"], int(q["size"]), int(q["chunk_size"]), int(q["index"]))
    if c.chunk_size <= 0 or c.size < 0 or not 0 <= c.start < max(c.size, 1):
        raise ValueError("chunk outside the object")
    return c


class PeerStream:
    """An open peer response whose body is the requested bytes of a chunk."""

    def __init__(self, peer: WorkerInfo, resp: aiohttp.ClientResponse, length: int) -> None:
        self.peer = peer
        self._resp = resp
        self._length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        got = 0
        try:
            while got < self._length:
                piece = await self._resp.content.read(min(PIECE, self._length - got))
                if not piece:
                    raise PeerError(f"peer {self.peer.id} sent {got} of {self._length} bytes")
                got += len(piece)
                yield piece
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"peer {self.peer.id} failed mid-chunk: {exc!r}") from exc
        finally:
            self.close()

    def close(self) -> None:
        self._resp.release() if self._resp.content.at_eof() else self._resp.close()


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, connect_timeout: float = 2.0,
                 read_timeout: float = 60.0) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)

    async def open(self, peer: WorkerInfo, c: ChunkId, offset: int, length: int,
                   hop: int = 1) -> PeerStream:
        """Ask `peer` for `length` bytes of chunk `c` from `offset`; waits for its fill."""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", HOP_HEADER: str(hop)}
        try:
            resp = await self._session.get(peer.url + CHUNK_PATH, params=chunk_params(c),
                                           headers=headers, timeout=self._timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"peer {peer.id} at {peer.url} unreachable: {exc!r}") from exc
        if resp.status in (200, 206):
            return PeerStream(peer, resp, length)
        code = resp.headers.get(ERROR_HEADER, "")
        reason = resp.headers.get(REASON_HEADER, "")
        resp.release()
        # Errors about the object itself pass through; a failing peer is failed over.
        if code in ("NoSuchKey", "NoSuchBucket"):
            raise NotFound(f"s3://{c.bucket}/{c.key} vanished at the origin", code=code)
        if code == "ObjectChanged":
            raise ObjectChanged(f"s3://{c.bucket}/{c.key} changed at the origin during the read")
        if code == "SlowDown":
            raise Busy(f"owner {peer.id} is over capacity: {reason}")
        raise PeerError(f"peer {peer.id} answered {resp.status} {code}: {reason}")
