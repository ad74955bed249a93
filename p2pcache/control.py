"""The workers' signed control routes (listing, preload fills, pins, status) as the master calls them."""

from __future__ import annotations

import asyncio
import os
from dataclasses import astuple
from typing import Any

import aiohttp
import msgpack

from .auth import Signer
from .errors import AccessDenied, BadRequest, NotFound, P2PError, PeerError
from .objects import ChunkId
from .ring import WorkerInfo

__all__ = ["WorkerControl", "LIST_PATH", "PRELOAD_PATH", "STATUS_PATH", "HAS_PATH", "UNPIN_PATH",
           "MAX_BATCH", "KEEP_SHARE", "chunk_to_wire", "chunk_from_wire", "ring_from_wire", "pack", "unpack",
           "in_words"]

LIST_PATH = "/_p2p/list"  # GET ?bucket=&prefix=&token=: one page of (key, etag, size)
PRELOAD_PATH = "/_p2p/preload"  # POST {chunks, keep, ring}: fill (and keep) chunks this worker owns
STATUS_PATH = "/_p2p/status"  # GET: the worker's counters
HAS_PATH = "/_p2p/has"  # POST {names}: which of these chunks are here, which are kept
UNPIN_PATH = "/_p2p/unpin"  # POST {bucket, prefix}: stop keeping those chunks
MAX_BATCH = 1024  # chunks (or names) per request
# Kept (pinned) chunks may fill at most this share of a worker's capacity: the rest stays for reads.
KEEP_SHARE = 0.9
MSGPACK = "application/msgpack"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


def unpack(data: bytes) -> Any:
    """Raises BadRequest on anything that is not msgpack."""
    try:
        return msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"malformed msgpack body: {exc}") from None


def chunk_to_wire(c: ChunkId) -> list:
    return list(astuple(c))


def chunk_from_wire(fields: Any) -> ChunkId:
    """Raises BadRequest unless `fields` is [bucket, key, etag, size, chunk_size, index]."""
    if not (isinstance(fields, list) and len(fields) == 6 and all(isinstance(f, str) for f in fields[:3])
            and all(isinstance(f, int) and not isinstance(f, bool) for f in fields[3:])):
        raise BadRequest(f"not a chunk id: {fields!r:.100}")
    return ChunkId(*fields)


def ring_from_wire(fields: Any) -> tuple[str, int] | None:
    """The ring version a preload was planned on, [master_id, epoch]; None if not sent (an older master).
    Raises BadRequest on anything else."""
    if fields is None:
        return None
    if not (isinstance(fields, list) and len(fields) == 2 and isinstance(fields[0], str)
            and isinstance(fields[1], int) and not isinstance(fields[1], bool)):
        raise BadRequest(f"not a ring version: {fields!r:.100}")
    return fields[0], fields[1]


class WorkerControl:
    """Signed requests to one worker's control routes, each good at that worker only and once (a
    preload, an unpin); a worker that cannot be reached is PeerError."""

    def __init__(self, session: aiohttp.ClientSession, signer: Signer, timeout: float = 600.0) -> None:
        self._session = session
        self._signer = signer
        self._timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=timeout)

    async def list(self, worker: WorkerInfo, bucket: str, prefix: str,
                   token: str | None) -> tuple[list[tuple[str, str, int]], str | None]:
        params = {"bucket": bucket, "prefix": prefix} | ({"token": token} if token else {})
        reply = await self._call(worker, "GET", LIST_PATH, params=params)
        return [tuple(o) for o in reply["objects"]], reply.get("next")

    async def preload(self, worker: WorkerInfo, chunks: list[ChunkId], keep: bool,
                      ring: tuple[str, int]) -> list[list]:
        """Per chunk, in order: [outcome, ""] or ["error", "Code: reason"]; the outcome is "cached" (it
        was here), "filled" (this call read it, from S3 or an earlier holder) or "joined" (a fill running
        for a reader or another preload brought it). `ring` is the version of the ring the chunks were
        planned on: a worker that has an older one waits a moment for it before it refuses a chunk."""
        reply = await self._call(worker, "POST", PRELOAD_PATH,
                                 {"chunks": [chunk_to_wire(c) for c in chunks], "keep": keep, "ring": list(ring)})
        return reply["results"]

    async def status(self, worker: WorkerInfo) -> dict:
        return await self._call(worker, "GET", STATUS_PATH, timeout=10.0)

    async def has(self, worker: WorkerInfo, names: list[str]) -> tuple[list[bool], list[bool]]:
        reply = await self._call(worker, "POST", HAS_PATH, {"names": names}, timeout=30.0)
        return reply["present"], reply["kept"]

    async def unpin(self, worker: WorkerInfo, bucket: str, prefix: str) -> int:
        reply = await self._call(worker, "POST", UNPIN_PATH, {"bucket": bucket, "prefix": prefix}, timeout=30.0)
        return reply["unpinned"]

    async def _call(self, worker: WorkerInfo, method: str, path: str, body: Any = None,
                    params: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        data = pack(body) if body is not None else b""
        headers = {"Content-Type": MSGPACK} | self._signer.headers(method, path, params, data, to=worker.id)
        t = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=timeout) if timeout else self._timeout
        try:
            async with self._session.request(method, worker.url + path, params=params, data=data or None,
                                             headers=headers, timeout=t) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise _error(worker, resp)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"worker {worker.id} at {worker.url} unreachable: {in_words(exc)}") from exc
        try:
            return msgpack.unpackb(payload)
        except (ValueError, msgpack.UnpackException) as exc:
            raise PeerError(f"worker {worker.id} sent a malformed answer to {path}: {exc}") from exc


def in_words(exc: BaseException) -> str:
    """Why a request got no answer, as an operator says it (`connection refused`), not a repr."""
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's timeouts too
        return "no answer in time"
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:  # aiohttp's connect errors
        return os.strerror(exc.errno).lower()  # not a resolver's errno: those are < 0
    return " ".join(str(exc).split()) or type(exc).__name__


def _error(worker: WorkerInfo, resp: aiohttp.ClientResponse) -> P2PError:
    code = resp.headers.get("X-P2P-Error", "")
    reason = resp.headers.get("X-P2P-Reason", "") or resp.reason or ""
    if resp.status == 404:
        return NotFound(reason, code=code or "NoSuchKey")
    if resp.status in (401, 403):
        return AccessDenied(reason)
    if 400 <= resp.status < 500:
        return BadRequest(f"worker {worker.id}: {reason}", code=code or "InvalidRequest")
    return PeerError(f"worker {worker.id} answered {resp.status} {code}: {reason}".rstrip(": "))
