"""The internal peer API: fetch a piece of a chunk from the worker that owns it.

A piece is asked for in whole blocks (`Range` and `X-P2P-Hop` are signed with
the rest of the request: p2pcache/auth.py). A peer that reads it from its store
sends the blocks' checksums first (`X-P2P-Sums: <bytes of sums>` and
`X-P2P-Block`), then the bytes; every block is checked here before any of it
is passed on, so a transfer damaged on the way is never served or stored. A
peer that streams the bytes from elsewhere (S3, or another peer, when its disk
is failing or full) says so (`X-P2P-Sums: 0`). An answer for other bytes than
those asked (its `Content-Range`, its length) or without a word on its sums is
a corrupt transfer, never read.
"""

from __future__ import annotations

import asyncio
import math
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from p2pcache import blocksums
from p2pcache.auth import Signer
from p2pcache.errors import (
    NO_RING_HEADER, ORIGIN_HEADER, Busy, NotCached, NotFound, NotOwner, ObjectChanged, PeerError, PeerStarting,
    origin_error,
)
from p2pcache.objects import ChunkId
from p2pcache.ring import WorkerInfo

__all__ = ["PeerClient", "PeerStream", "CHUNK_PATH", "TAKE_PATH", "HOP_HEADER", "ERROR_HEADER",
           "REASON_HEADER", "SUMS_HEADER", "BLOCK_HEADER", "chunk_params", "chunk_from_params",
           "keep_params", "keep_from_params", "chunk_answer", "answer_sums"]

CHUNK_PATH = "/_p2p/chunk"
TAKE_PATH = "/_p2p/take"  # "you own this chunk now: copy it from me if you lack it"
HOP_HEADER = "X-P2P-Hop"  # signed, as Range is (p2pcache/auth.py SIGNED_HEADERS)
ERROR_HEADER = "X-P2P-Error"  # the error's code, set on every error response
REASON_HEADER = "X-P2P-Reason"  # its one-line message
SUMS_HEADER = "X-P2P-Sums"  # bytes of block checksums that precede the chunk's bytes; on every answer
BLOCK_HEADER = "X-P2P-Block"  # the block size they are of
# A stream from a peer holds about four of its steps at once: aiohttp buffers up to twice what
# a read asks for, plus the step being gathered and the one being sent on. So a step is a quarter
# of a local piece (worker/budget.py): 256 KiB for a few streams, 32-64 KiB for 64.
STEPS_HELD = 4


def chunk_params(c: ChunkId) -> dict[str, str]:
    return {"bucket": c.bucket, "key": c.key, "etag": c.etag, "size": str(c.size),
            "chunk_size": str(c.chunk_size), "index": str(c.index)}


def chunk_from_params(q) -> ChunkId:
    """Raises KeyError/ValueError on a malformed query; the caller answers 400."""
    c = ChunkId(q["bucket"], q["key"], q["etag"], int(q["size"]), int(q["chunk_size"]), int(q["index"]))
    if c.chunk_size <= 0 or c.size < 0 or not 0 <= c.start < max(c.size, 1):
        raise ValueError("chunk outside the object")
    return c


def keep_params(keep: bool, pinned: float | None) -> dict[str, str]:
    """A take's word on the chunk's pin: `keep=1` if it is kept, and `pinned`, when it was pinned
    (unix time, the giver's clock), so that an unpin made after it still drops it at its new owner."""
    if not keep:
        return {}
    return {"keep": "1"} | ({"pinned": f"{pinned:.6f}"} if pinned is not None else {})


def keep_from_params(q) -> tuple[bool, float | None]:
    """(keep, pinned) of a take's query (`keep_params`); pinned is None if not said (a giver from
    before it was sent: the pin is dated when it is taken). ValueError if malformed."""
    if q.get("keep") != "1":
        return False, None
    if "pinned" not in q:
        return True, None
    pinned = float(q["pinned"])
    if not math.isfinite(pinned) or pinned < 0:
        raise ValueError(f"pinned={q['pinned']!r} is not a time")
    return True, pinned


def chunk_answer(c: ChunkId, offset: int, length: int, file) -> tuple[web.StreamResponse, bytes]:
    """The 206 for bytes `[offset, offset + length)` of chunk `c`, and the sums to write before
    them: those of the blocks sent when they come from a chunk file (`file`, a store ChunkFile)
    in whole blocks, else none, said so with `X-P2P-Sums: 0` (bytes streamed from elsewhere: S3,
    or a peer whose sums were checked here as they came)."""
    resp = web.StreamResponse(status=206)
    resp.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{c.length}"
    sums = b""
    if file is not None and (offset, offset + length) == blocksums.aligned(offset, length, c.length, file.block):
        sums = blocksums.table_slice(file.table, offset, offset + length, file.block)
        resp.headers[BLOCK_HEADER] = str(file.block)
    resp.headers[SUMS_HEADER] = str(len(sums))
    resp.content_length = len(sums) + length
    return resp, sums


def answer_sums(status: int, headers, start: int, stop: int, chunk_length: int) -> tuple[int, int]:
    """(bytes of sums, their block size) ahead of the bytes in a peer's answer to a request for
    bytes `[start, stop)` of a chunk of `chunk_length` bytes; (0, 0): the peer has no sums of them.
    ValueError if the answer is not for those bytes (status, Content-Range, Content-Length) or says
    nothing of its sums (the header is on every answer: one dropped on the way is no answer to trust)."""
    if status != 206:
        raise ValueError(f"status {status}, not 206")
    want = f"bytes {start}-{stop - 1}/{chunk_length}"
    if headers.get("Content-Range") != want:
        raise ValueError(f"Content-Range {headers.get('Content-Range')!r} for a request of {want!r}")
    if SUMS_HEADER not in headers:
        raise ValueError(f"no {SUMS_HEADER} header")
    try:
        size = int(headers[SUMS_HEADER])
        block = int(headers[BLOCK_HEADER]) if size else 0
    except (KeyError, ValueError):
        raise ValueError("malformed checksum headers") from None
    blocks = -(-stop // block) - start // block if block > 0 else -1
    if size and (block <= 0 or start % block or size != blocks * 8) or size < 0:
        raise ValueError(f"{size} bytes of sums of {block}-byte blocks for bytes {start}-{stop}")
    if headers.get("Content-Length") != str(size + stop - start):
        raise ValueError(f"Content-Length {headers.get('Content-Length')!r} for {size} bytes of sums "
                         f"and {stop - start} bytes")
    return size, block


class PeerStream:
    """An open peer response whose body is the requested bytes of a chunk.

    The response holds whole blocks `[start, stop)` around the requested
    `[offset, offset + length)`, after `sums` bytes of the sender's sums of `block`-byte
    blocks (`answer_sums`); with them, each block is checked before its bytes are yielded
    (a mismatch is a PeerError, so the reader fails over).
    """

    def __init__(self, peer: WorkerInfo, resp: aiohttp.ClientResponse, start: int, stop: int,
                 offset: int, length: int, on_corrupt: Callable[[], None], piece: Callable[[], int],
                 sums: int = 0, block: int = 0, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self.peer = peer
        self._on_bytes = on_bytes
        self._resp = resp
        self._piece = piece
        self._start, self._stop, self._offset, self._end = start, stop, offset, offset + length
        self._on_corrupt = on_corrupt
        self._sums_size, self._block = sums, block

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content, pos = self._resp.content, self._start
        try:
            table, block = await self._sums()
            while pos < self._stop:
                step = self._piece() // STEPS_HELD
                step = max(block, step // block * block) if table is not None else step
                data = await content.readexactly(min(step, self._stop - pos))
                if table is not None:
                    try:
                        blocksums.check(data, pos - self._start, table, block)
                    except blocksums.Mismatch as exc:
                        self._on_corrupt()
                        raise PeerError(f"peer {self.peer.id} sent a corrupt chunk: {exc}") from None
                self._on_bytes(len(data))  # received: whole blocks, as the peer counts them sent
                lo, hi = max(pos, self._offset) - pos, min(pos + len(data), self._end) - pos
                pos += len(data)
                if lo < hi:
                    yield data if hi - lo == len(data) else data[lo:hi]
        except asyncio.IncompleteReadError as exc:
            raise PeerError(f"peer {self.peer.id} sent {pos - self._start + len(exc.partial)} "
                            f"of {self._stop - self._start} bytes") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"peer {self.peer.id} failed mid-chunk: {exc!r}") from exc
        finally:
            self.close()

    async def _sums(self) -> tuple[bytes | None, int]:
        """The sender's sums of the blocks it sends, or None (it streams them from elsewhere)."""
        if not self._sums_size:
            return None, 0
        return await self._resp.content.readexactly(self._sums_size), self._block

    def close(self) -> None:
        self._resp.release() if self._resp.content.at_eof() else self._resp.close()


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, connect_timeout: float = 2.0,
                 read_timeout: float = 60.0, signer: Signer | None = None,
                 on_corrupt: Callable[[], None] = lambda: None, *, piece: Callable[[], int],
                 holder_timeout: float | None = None, primary_timeout: float | None = None,
                 on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """`piece()`: the size of the next piece a local stream reads (worker/budget.py);
        `on_bytes(n)`: n bytes of a chunk came from a peer (checked; the whole blocks received
        around the bytes asked for), whatever they are for.

        `read_timeout`: seconds a peer may send nothing (its answer may wait for its fill);
        `holder_timeout` and `primary_timeout`: the same for a `local` and a `primary` request
        (WorkerConfig.holder_timeout, .primary_timeout), which must be shorter: the peer that
        waits on our fill gives up on us after `read_timeout`. None: `read_timeout` (a client
        that never asks a holder, or a primary)."""
        self._session = session
        self._on_corrupt = on_corrupt
        self._on_bytes = on_bytes
        self._piece = piece
        self._signer = signer or Signer(None)

        def between_bytes(seconds: float | None) -> aiohttp.ClientTimeout:
            return aiohttp.ClientTimeout(sock_connect=connect_timeout,
                                         sock_read=read_timeout if seconds is None else seconds)
        self._timeout = between_bytes(read_timeout)
        self._holder_timeout, self._primary_timeout = between_bytes(holder_timeout), between_bytes(primary_timeout)

    async def open(self, peer: WorkerInfo, c: ChunkId, offset: int, length: int,
                   hop: int = 1, local: bool = False, primary: bool = False) -> PeerStream:
        """Ask `peer` for `length` bytes of chunk `c` from `offset`; waits for its fill.

        With `local`, only if the peer holds the chunk (NotCached otherwise): no fill, no S3,
        so it is waited for only `holder_timeout` between bytes. With `primary` (a follower
        filling from its primary), for `primary_timeout`.
        """
        start, stop = blocksums.aligned(offset, length, c.length)
        headers = {"Range": f"bytes={start}-{stop - 1}", HOP_HEADER: str(hop)}
        params = chunk_params(c) | ({"local": "1"} if local else {})
        timeout = self._holder_timeout if local else self._primary_timeout if primary else self._timeout
        resp = await self._get(peer, CHUNK_PATH, params, headers, timeout)
        if not 200 <= resp.status < 300:
            raise _error(peer, c, resp)
        try:
            sums, block = answer_sums(resp.status, resp.headers, start, stop, c.length)
        except ValueError as exc:  # another piece than asked for (or its sums lost): never read
            resp.close()
            self._on_corrupt()
            raise PeerError(f"peer {peer.id} sent a corrupt answer for {c.ring_key}: {exc}") from None
        return PeerStream(peer, resp, start, stop, offset, length, self._on_corrupt, self._piece, sums, block,
                          self._on_bytes)

    async def take(self, peer: WorkerInfo, c: ChunkId, source: str, keep: bool = False,
                   pinned: float | None = None) -> bool:
        """Tell `peer`, an owner of `c`, to copy it from worker `source` if it lacks it.

        True if it copied, False if it had it already; NotOwner if it does not own it
        under its ring, NotCached if it could not get it from `source` or an earlier holder.
        With `keep`, the peer keeps it from eviction (it was kept here, pinned at `pinned`),
        if that keeps it under its keep limit; else it only caches it (and says so in its log).
        """
        params = chunk_params(c) | {"from": source} | keep_params(keep, pinned)
        resp = await self._get(peer, TAKE_PATH, params, {}, self._timeout)
        if resp.status == 200:
            try:
                return (await resp.json())["copied"]
            except (aiohttp.ClientError, ValueError, KeyError) as exc:
                raise PeerError(f"peer {peer.id} answered a take with {exc!r}") from exc
            finally:
                resp.release()
        raise _error(peer, c, resp)

    async def _get(self, peer: WorkerInfo, path: str, params: dict, headers: dict,
                   timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        try:
            return await self._session.get(
                peer.url + path, params=params, timeout=timeout,
                headers=headers | self._signer.headers("GET", path, params, to=peer.id, sent=headers))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"peer {peer.id} at {peer.url} unreachable: {exc!r}") from exc


def _error(peer: WorkerInfo, c: ChunkId, resp: aiohttp.ClientResponse) -> Exception:
    """The named error for a peer's error response (the response is released)."""
    code = resp.headers.get(ERROR_HEADER, "")
    reason = resp.headers.get(REASON_HEADER, "")
    cause = resp.headers.get(ORIGIN_HEADER)
    retry_after = resp.headers.get("Retry-After", "")
    no_ring = NO_RING_HEADER in resp.headers
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
    if no_ring:
        return PeerStarting(f"peer {peer.id} answered {resp.status} {code}: {reason}")
    return PeerError(f"peer {peer.id} answered {resp.status} {code}: {reason}")
