"""A serving process's reads: of chunks on this worker's disk from their files, of chunks
other workers hold from those workers, each planned from the object's identity (asked of the
coordinator, cached for half the --meta-ttl or until the coordinator learns that an object
changed: worker/generation.py) and the request's Range and conditions. What it
cannot try (a chunk this worker must fill, a request that is not a plain GET, a condition to
check with S3) or what no worker it asks answers is the coordinator's: `None`. An error the
coordinator or a chunk's owner answered (S3 failing at the owner, no such key) is the read's
answer: raised as they gave it, never tried again by the coordinator for the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator, Callable

from p2pcache import conditions
from p2pcache.errors import CorruptChunk, ObjectChanged, P2PError, PeerError
from p2pcache.objects import ChunkId, ObjectInfo
from p2pcache.ranges import chunk_spans
from p2pcache.singleflight import SingleFlight

from . import inputs
from .budget import PieceBudget, readahead
from .chunkfiles import ChunkFiles
from .forward import OBJECT_PATH, CoordinatorClient
from .generation import Generation
from .http import object_answer
from .limits import TokenBucket
from .peer import PeerStream
from .peerreads import PeerReads
from .readers import Readers
from .reports import Reports
from .chunkfile import read_now, read_pieces, read_whole

__all__ = ["Reads", "Read", "SMALL"]

SMALL = 512 << 10  # as worker/chunks.py: sent as one Response
MAX_CHUNKS = 64  # chunks a read may span and still be answered here (each is looked for before the status line)
OBJECT_CACHE = 10_000


@dataclass
class Read:
    """A read a serving process answers: whole (`body`, small) or in `pieces` (an async
    generator holding the file of the chunk it sends open; close it, whether or not it was iterated)."""

    status: int
    headers: dict[str, str]
    length: int
    body: bytes | bytearray | None
    pieces: AsyncGenerator[bytes | bytearray, None] | None = None
    release: Callable[[], None] = lambda: None  # what `pieces` closes when it ends, if it never started

    async def aclose(self) -> None:
        if self.pieces is not None:
            await self.pieces.aclose()
        self.release()


class Reads:
    def __init__(self, files: ChunkFiles, coordinator: CoordinatorClient, peer_reads: PeerReads,
                 reports: Reports, budget: PieceBudget, readers: Readers | None, allowed: frozenset[str],
                 egress: TokenBucket | None, ttl: float, generation: Generation) -> None:
        self.files = files
        self.coordinator = coordinator
        self.peer_reads = peer_reads
        self.reports = reports
        self.readers = readers
        self.allowed = allowed  # the buckets it may read (empty: all)
        self.egress = egress
        self.ttl = ttl  # seconds an object's identity is kept (the coordinator's copy is at most as old)
        self.generation = generation  # an identity asked for in an older one is not used
        # (bucket, key) -> (until, identity, chunk size, the generation it was asked for in)
        self._objects: dict[tuple[str, str], tuple[float, ObjectInfo, int, int]] = {}
        self._lookups = SingleFlight()
        self.budget = budget  # of the bodies being sent, to clients and to peers

    async def close(self) -> None:
        await self._lookups.close()

    def read_now(self, head) -> Read | None:
        """A small read of a known object from a chunk file in the page cache, at once (nothing
        to wait for, so no task); None: `read`'s to answer. `head` as `read`'s `request`."""
        if self.egress is not None:
            return None
        target = self._target("GET", head.path, "", head.headers)
        known = self._cached(*target) if target else None
        if known is None or not self._signed(head, target[0]):
            return None
        found = self._planned(known, head.headers)
        if found is None:
            return None
        status, out, info, chunk_size, start, stop = found
        if not _small(start, stop, chunk_size):
            return None
        index, offset = divmod(start, chunk_size)
        file = self._opened(self.files.now, info.chunk_name(index, chunk_size))  # no await: no pin
        try:
            data = read_now(file, offset, stop - start) if file is not None else None
        except (CorruptChunk, OSError):  # read again by `read`, which reports it
            return None
        if data is None:
            return None
        self.reports.hit(file.name, len(data))
        return Read(status, out, len(data), data)

    async def read(self, method: str, path: str, query: str, headers, request) -> Read | None:
        """A read this process answers (its bytes checked), or None: the coordinator's to answer
        (not a plain GET, a chunk this worker fills, no worker left to ask). An error the
        coordinator or a chunk's owner answered (S3 failing, no such key) is raised as they gave
        it: passed on, it would only be tried again. `request` is what the reader keys check the
        signature of (method, raw_path, headers)."""
        if not self._signed(request, path[1:].partition("/")[0]):
            return None
        target = self._target(method, path, query, headers)
        if target is None:
            return None
        try:
            return await self._read(target, headers, fresh=False)
        except ObjectChanged:  # as the coordinator does: the version S3 has now, once
            return await self._read(target, headers, fresh=True)

    async def _read(self, target: tuple[str, str], headers, fresh: bool) -> Read | None:
        """`read` of `target` (bucket, key) as its identity is cached, or as S3 has it now (`fresh`)."""
        try:
            found = self._planned(await self._object(*target, fresh), headers)
        except P2PError as exc:
            if exc.status == 404 and "If-Match" in headers:
                return None  # remembered missing: the coordinator asks S3 for the version named
            raise
        return await self._answer(*found) if found is not None else None

    async def _answer(self, status: int, out: dict[str, str], info: ObjectInfo, chunk_size: int, start: int,
                      stop: int) -> Read | None:
        if _small(start, stop, chunk_size):
            data = await self.read_small(info, chunk_size, start, stop)
            if data is None:
                return None
            if self.egress is not None:
                await self.egress.take(len(data))
            return Read(status, out, len(data), data)
        failed: set[str] = set()  # the peers that failed in this read: not asked again in it
        # Per chunk: whether its file is here (pinned only when it is sent: a slow reader holds
        # one chunk from eviction, not the whole read), else the workers that hold it are asked
        # when it is reached.
        sources = []
        for span in chunk_spans(start, stop, chunk_size):
            c = info.chunk(span.index, chunk_size)
            here = self._opened(self.files.now, c.name) is not None
            if not here and self.peer_reads.peers(c) is None:
                return None  # this worker's to fill (or every peer failed lately): the coordinator's
            sources.append((span, c, here))
        first = None
        if not sources[0][2]:  # opened before the status line: if no owner answers, pass it on
            first = await self._open(*sources[0][:2], failed)
            if first is None:
                return None

        def release() -> None:
            if first is not None:
                first.close()

        pieces = self._pieces(info, start, stop, sources, first, failed, release)
        return Read(status, out, stop - start, None, pieces, release)

    async def _open(self, span, c: ChunkId, failed: set[str]) -> PeerStream | None:
        """The chunk's bytes of `span` from a worker that holds it, asked as the ring and the
        peers' failures are now (not as they were when the read began); None: the coordinator's."""
        peers = self.peer_reads.peers(c, failed)
        return await self.peer_reads.open(c, span.offset, span.length, peers, failed) if peers else None

    def _signed(self, request, bucket: str) -> bool:
        """Whether the reader keys (if any) let `request` read `bucket`; if not, the coordinator
        answers the error."""
        if self.readers:
            try:
                self.readers.check(request, bucket)
            except P2PError:
                return False
        return True

    def _target(self, method: str, path: str, query: str, headers) -> tuple[str, str] | None:
        """(bucket, key) of a plain GET this process may answer, or None; `path` as sent."""
        if method != "GET" or query or path.startswith("/_p2p/") or not self.ttl:
            return None  # --meta-ttl 0: one HEAD per read, the coordinator's
        try:
            bucket, key = inputs.object_path(path)
        except P2PError:
            return None  # the coordinator answers the error
        if not key or (self.allowed and bucket not in self.allowed):
            return None
        if "Cache-Control" in headers or "x-amz-checksum-mode" in headers:
            return None  # an answer that depends on more than the object's identity and bytes
        return bucket, key

    def _planned(self, found: tuple[ObjectInfo, int], headers) -> tuple | None:
        """(status, headers, info, chunk size, start, stop) of a read this process may answer, or
        None: the coordinator's (a condition to check with S3, a range to refuse, ...)."""
        info, chunk_size = found
        if conditions.evaluate(headers, info.etag, info.last_modified) is not None:
            return None  # 304, or 412 (the coordinator asks S3 for a newer version first)
        try:
            status, out, start, stop = object_answer(info, headers.get("Range"), None, {})
        except P2PError:
            return None
        if start >= stop or (stop - 1) // chunk_size - start // chunk_size >= MAX_CHUNKS:
            return None
        return status, out, info, chunk_size, start, stop

    async def read_small(self, info: ObjectInfo, chunk_size: int, start: int, stop: int) -> bytearray | None:
        """Bytes `[start, stop)` (inside one chunk) from its file, checked; None if it is not here or bad."""
        index, offset = divmod(start, chunk_size)
        c = info.chunk(index, chunk_size)
        with contextlib.ExitStack() as pins:
            file = self.pin(pins, c.name)
            if file is None:
                return await self._small_from_peer(c, offset, stop - start)
            try:
                data = await read_whole(file, offset, stop - start)
            except CorruptChunk as exc:
                self.reports.corrupt(exc.name)
                return None
            except OSError:  # the coordinator's read finds out what is wrong with the disk
                return None
            self.reports.hit(file.name, len(data))
            return data

    async def _small_from_peer(self, c: ChunkId, offset: int, length: int) -> bytearray | None:
        """A small range of a chunk another worker holds, from that worker; None: the coordinator's."""
        peers = self.peer_reads.peers(c)
        stream = await self.peer_reads.open(c, offset, length, peers, set()) if peers else None
        if stream is None:
            return None
        data = bytearray()
        try:
            async for piece in stream:
                data += piece
        except PeerError:
            await self.peer_reads.failed(stream.peer)
            return None
        self.reports.miss()
        return data

    def pin(self, pins: contextlib.ExitStack, name: str):
        """The chunk's open file, held (and not evicted) until `pins` closes; None if it is not
        here or unreadable."""
        return self._opened(lambda n: pins.enter_context(self.files.pinned(n)), name)

    def _opened(self, open_file: Callable, name: str):
        """`open_file(name)`: the chunk's open file, or None if it is not here or unreadable."""
        try:
            return open_file(name)
        except CorruptChunk as exc:
            self.reports.corrupt(exc.name)
        except OSError:  # the coordinator's read finds out what is wrong with the disk
            pass
        return None

    async def _pieces(self, info: ObjectInfo, start: int, stop: int, sources, first: PeerStream | None,
                      failed: set[str], release: Callable[[], None]) -> AsyncIterator[bytes | bytearray]:
        """The bytes `[start, stop)`, checked, from the chunks' `sources` (`release` closes `first`
        at the end), not asking the peers that failed in this read (`failed`); what no source can
        give, the coordinator reads. P2PError if it cannot, or if a chunk's owner answered an
        error about the object (S3's failure)."""
        self.budget.open()
        pos = start
        counted = 0  # the chunks that begin before this were counted here (hits, misses)
        ahead: asyncio.Task | None = None
        stream = None
        try:
            try:
                for i, (span, c, here) in enumerate(sources):
                    async with contextlib.AsyncExitStack() as held:  # the chunk's file, while it is sent
                        file = self.pin(held, c.name) if here else None
                        if file is not None:
                            self.reports.hit(file.name, 0)
                            counted = c.start + c.length
                            pieces = read_pieces(file, span.offset, span.length, self.budget.piece)
                        else:  # held by other workers (or evicted from here since the status line)
                            if i == 0 and first is not None:
                                stream = first
                            elif ahead is not None:
                                stream, ahead = await ahead, None
                            else:
                                stream = await self._open(span, c, failed)
                            if stream is None:  # no owner answered: the coordinator reads the rest
                                raise _Rest()
                            self.reports.miss()
                            counted = c.start + c.length
                            pieces = stream.__aiter__()
                        ahead = self._open_next(sources, i + 1, failed)  # the next peer chunk's first bytes meanwhile
                        async for data in await held.enter_async_context(contextlib.aclosing(pieces)):
                            yield await self._sent(data)
                            pos += len(data)
                            # The other answers' turn: a piece read from the page cache and sent
                            # into a roomy socket buffer never waits, so without this one large
                            # read would hold the process until its last byte (4 MiB, c=64, two
                            # processes: p99 270-330 ms without, 151-158 ms with).
                            await asyncio.sleep(0)
            except (CorruptChunk, OSError, PeerError, _Rest) as exc:  # nothing of a bad block went out:
                if isinstance(exc, ConnectionError):  # the coordinator reads the rest (and drops or
                    raise  # refills a corrupt chunk here; a peer that failed is asked last for a while)
                if isinstance(exc, CorruptChunk):
                    self.reports.corrupt(exc.name)
                if isinstance(exc, PeerError) and stream is not None:
                    failed.add(stream.peer.id)
                    await self.peer_reads.failed(stream.peer)
                async for data in self.coordinator.rest(info, pos, stop, counted):
                    yield await self._sent(data)
        finally:
            self.budget.close()
            release()
            if ahead is not None:
                ahead.cancel()
                ahead.add_done_callback(_close_opened)

    def _open_next(self, sources, i: int, failed: set[str]) -> asyncio.Task | None:
        """Open the next chunk's stream if a peer holds it (a task, awaited when it is reached),
        unless so many answers run that the peer responses buffering ahead would add up."""
        if i >= len(sources) or sources[i][2] or not readahead(1, self.budget.streams):
            return None
        span, c, _ = sources[i]
        return asyncio.ensure_future(self._open(span, c, failed))

    async def _sent(self, data):
        """`data`, once the egress limit lets it go (counted as sent: the caller sends it)."""
        if self.egress is not None:
            await self.egress.take(len(data))
        self.reports.sent(len(data))
        return data

    def _cached(self, bucket: str, key: str) -> tuple[ObjectInfo, int] | None:
        """The identity and chunk size asked for less than half the --meta-ttl ago, in the
        current generation (the coordinator has found no object changed since)."""
        entry = self._objects.get((bucket, key))
        if entry is not None and entry[0] > time.monotonic() and entry[3] == self.generation.value:
            return entry[1], entry[2]
        return None

    async def _object(self, bucket: str, key: str, fresh: bool) -> tuple[ObjectInfo, int]:
        """The object's identity and the ring's chunk size, cached for half the --meta-ttl (with
        `fresh`, as S3 has it now); the coordinator's error if it has none (not found, S3 failing)."""
        known = None if fresh else self._cached(bucket, key)
        if known is not None:
            return known
        max_age = 0 if fresh else self.ttl
        # Read before asking: an answer given before a bump is then not used after it, and a
        # read that starts after a bump does not join a lookup begun before it.
        generation = self.generation.value
        return await self._lookups.do((bucket, key, fresh, generation),
                                      lambda: self._lookup(bucket, key, max_age, generation))

    async def _lookup(self, bucket: str, key: str, max_age: float, generation: int) -> tuple[ObjectInfo, int]:
        got = await self.coordinator.get_json(OBJECT_PATH, {"bucket": bucket, "key": key,
                                                             "max_age": str(max_age)})
        info = ObjectInfo(bucket, key, got["etag"], got["size"], got["last_modified"], got["content_type"],
                          tuple(map(tuple, got["headers"])))
        if len(self._objects) >= OBJECT_CACHE:
            del self._objects[next(iter(self._objects))]
        self._objects[(bucket, key)] = (time.monotonic() + self.ttl, info, got["chunk_size"], generation)
        await self.peer_reads.seen(got.get("ring"))
        return info, got["chunk_size"]


def _small(start: int, stop: int, chunk_size: int) -> bool:
    """A read inside one chunk, sent whole (one Response)."""
    return (stop - 1) // chunk_size == start // chunk_size and stop - start <= SMALL


class _Rest(Exception):
    """No owner answered for a chunk mid-read: the coordinator reads the rest."""


def _close_opened(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None and task.result() is not None:
        task.result().close()
