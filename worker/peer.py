"""The internal peer API: fetch a piece of a chunk from the worker that owns it."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp

from p2pcache.auth import Signer
from p2pcache.errors import (
    ORIGIN_HEADER, Busy, NotCached, NotFound, NotOwner, ObjectChanged, PeerError, origin_error,
)
from p2pcache.objects import ChunkId
from p2pcache.ring import WorkerInfo

__all__ = ["PeerClient", "PeerStream", "CHUNK_PATH", "TAKE_PATH", "HOP_HEADER", "ERROR_HEADER",
           "REASON_HEADER", "chunk_params", "chunk_from_params"]

CHUNK_PATH = "/_p2p/chunk"
TAKE_PATH = "/_p2p/take"  # "you own this chunk now: copy it from me if you lack it"
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
                 read_timeout: float = 60.0, signer: Signer | None = None) -> None:
        self._session = session
        self._signer = signer or Signer(None)
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)

    async def open(self, peer: WorkerInfo, c: ChunkId, offset: int, length: int,
                   hop: int = 1, local: bool = False) -> PeerStream:
        """Ask `peer` for `length` bytes of chunk `c` from `offset`; waits for its fill.

        With `local`, only if the peer holds the chunk (NotCached otherwise): no fill, no S3.
        """
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", HOP_HEADER: str(hop)}
        params = chunk_params(c) | ({"local": "1"} if local else {})
        resp = await self._get(peer, CHUNK_PATH, params, headers)
        if resp.status in (200, 206):
            return PeerStream(peer, resp, length)
        raise _error(peer, c, resp)

    async def take(self, peer: WorkerInfo, c: ChunkId, source: str) -> bool:
        """Tell `peer`, an owner of `c`, to copy it from worker `source` if it lacks it.

        True if it copied, False if it had it already; NotOwner if it does not own it
        under its ring, NotCached if it could not get it from `source` or an earlier holder.
        """
        resp = await self._get(peer, TAKE_PATH, chunk_params(c) | {"from": source}, {})
        if resp.status == 200:
            try:
                return (await resp.json())["copied"]
            except (aiohttp.ClientError, ValueError, KeyError) as exc:
                raise PeerError(f"peer {peer.id} answered a take with {exc!r}") from exc
            finally:
                resp.release()
        raise _error(peer, c, resp)

    async def _get(self, peer: WorkerInfo, path: str, params: dict, headers: dict) -> aiohttp.ClientResponse:
        try:
            return await self._session.get(
                peer.url + path, params=params, timeout=self._timeout,
                headers=headers | self._signer.headers("GET", path, params))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"peer {peer.id} at {peer.url} unreachable: {exc!r}") from exc


def _error(peer: WorkerInfo, c: ChunkId, resp: aiohttp.ClientResponse) -> Exception:
    """The named error for a peer's error response (the response is released)."""
    code = resp.headers.get(ERROR_HEADER, "")
    reason = resp.headers.get(REASON_HEADER, "")
    cause = resp.headers.get(ORIGIN_HEADER)
    retry_after = resp.headers.get("Retry-After", "")
    resp.release()
    # Errors about the object, or S3's failures at the owner, pass through: asking
    # another worker (or S3 from here) would only repeat them. A failing peer is failed over.
    if cause:
        return origin_error(cause, reason, float(retry_after) if retry_after.isdigit() else None)
    if code == "NotCached":
        return NotCached(f"peer {peer.id} does not hold {c.ring_key}: {reason}")
    if code == "NotOwner":
        return NotOwner(f"peer {peer.id} does not own {c.ring_key}: {reason}")
    if code in ("NoSuchKey", "NoSuchBucket"):
        return NotFound(f"s3://{c.bucket}/{c.key} vanished at the origin", code=code)
    if code == "ObjectChanged":
        return ObjectChanged(f"s3://{c.bucket}/{c.key} changed at the origin during the read")
    if code == "SlowDown":
        return Busy(f"owner {peer.id} is over capacity: {reason}")
    return PeerError(f"peer {peer.id} answered {resp.status} {code}: {reason}")
