"""Where a chunk's bytes come from: local disk, the owner peer, or S3 (one fill).

For each chunk of a read, in order, with `readahead` chunks opened ahead:
local store -> owner over the peer API (failing over along the ring) -> fill
here. A fill is one singleflight task per chunk, owned by this object, so a
client hanging up never cancels it for the other readers; but once nobody
waits for it, a failing fill is not retried. An origin failure at the owner
reaches the reader as such: the owner is not blamed and S3 not asked twice.
If the disk fails, bytes are streamed around it (worker/diskhealth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import AsyncIterator, Callable, Protocol

from p2pcache.errors import (
    Busy, CorruptChunk, NotCached, OriginError, PeerError, PeerUnavailable, StoreError,
)
from p2pcache.objects import ChunkId, ObjectInfo
from p2pcache.origin import S3Origin
from p2pcache.ranges import chunk_spans
from p2pcache.ring import Placement, WorkerInfo
from p2pcache.singleflight import SingleFlight

from .budget import PieceBudget, fill_piece, readahead
from .diskhealth import DiskHealth
from .metrics import WorkerMetrics
from .peer import PeerClient, PeerStream
from .routing import DownPeers, fill_source
from .chunkfile import read_pieces
from .store import ChunkStore

__all__ = ["Chunks"]

log = logging.getLogger("p2pcache.chunks")
SMALL = 512 << 10  # ranges up to this are read in one go and sent as one Response
HOLDERS = 4  # earlier holders a fill asks (a 404 each when they lack it) before S3


class Stream(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class LocalStream:
    """Bytes of a chunk on local disk, pinned against eviction until closed; read in pieces
    of the size `piece()` says."""

    peer = None

    def __init__(self, store: ChunkStore, c: ChunkId, offset: int, length: int,
                 piece: Callable[[], int], touch: bool = True) -> None:
        self._pin = store.pinned(c.name, touch)
        self.file = self._pin.__enter__()
        self._offset, self._length, self._piece = offset, length, piece

    @property
    def present(self) -> bool:
        return self.file is not None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(read_pieces(self.file, self._offset, self._length,
                                                       self._piece)) as it:
                async for piece in it:
                    yield piece
        except OSError as exc:
            raise StoreError(f"cache disk failed reading a chunk: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        if self._pin is not None:
            self._pin.__exit__(None, None, None)
            self._pin = None


class Chunks:
    def __init__(self, *, me: str, store: ChunkStore, origin: S3Origin, peers: PeerClient,
                 metrics: WorkerMetrics, placement: Callable[[], Placement], budget: PieceBudget,
                 origin_concurrency: int = 16, readahead: int = 4,
                 clock: Callable[[], float] = time.monotonic,
                 on_fill: Callable[[ChunkId], None] = lambda c: None) -> None:
        self.me = me
        self._on_fill = on_fill
        self._clock = clock
        self._down = DownPeers(clock)  # peers that just failed: asked last
        self.budget = budget  # of the bodies being sent, to readers and to peers
        self._reads = 0  # reads running (chunks they open ahead share a budget)
        self.store = store
        self._origin = origin
        self._peers = peers
        self._m = metrics
        self._placement = placement
        self._readahead = max(1, readahead)
        self._fills = SingleFlight()
        self._origin_slots = asyncio.Semaphore(origin_concurrency)
        self._origin_queued = 0
        self._origin_queue_limit = origin_concurrency * 8
        self.disk = DiskHealth(metrics.store_errors.inc, clock)

    @property
    def fills_in_flight(self) -> int:
        return len(self._fills)

    async def quiet(self, timeout: float) -> bool:
        """Until no fill runs here (True), or `timeout` seconds pass (a drain: what they land is
        handed over too)."""
        return await self._fills.quiet(timeout)

    def filling(self, c: ChunkId) -> bool:
        """Whether a fill of `c` is running (a new caller would join it)."""
        return c.name in self._fills

    async def close(self) -> None:
        await self._fills.close()

    async def read(self, info: ObjectInfo, start: int, stop: int, counted: int = 0) -> AsyncIterator[bytes]:
        """The bytes `[start, stop)` of one version of an object, chunk by chunk, for a reader:
        each chunk is a hit or a miss (README, "Metrics"), but those that begin before `counted`
        (the rest of a serving process's read: it counted them). A peer that fails is not asked
        again in this read (a hung one costs one timeout, not one per chunk)."""
        chunk_size = self._placement().ring.chunk_size  # one chunk size for the whole read
        spans = iter(chunk_spans(start, stop, chunk_size))
        pending: deque[tuple[ChunkId, int, int, asyncio.Future]] = deque()
        failed: set[str] = set()

        def launch() -> bool:
            span = next(spans, None)
            if span is None:
                return False
            c = info.chunk(span.index, chunk_size)
            count = c.start >= counted
            pending.append((c, span.offset, span.length,
                            asyncio.ensure_future(self.open(c, span.offset, span.length, failed, count))))
            return True

        self._reads += 1
        try:
            while pending or launch():
                while len(pending) <= readahead(self._readahead, self._reads) and launch():
                    pass  # the chunk to send next and those opened ahead of it
                c, offset, length, task = pending.popleft()
                stream = await task
                async with contextlib.aclosing(self._pieces(c, offset, length, stream, failed=failed)) as it:
                    async for piece in it:
                        yield piece
        finally:
            self._reads -= 1
            for *_, task in pending:
                task.cancel()
                task.add_done_callback(_close_stream)

    async def read_small(self, info: ObjectInfo, start: int, stop: int) -> bytearray | None:
        """The fast path: a range of at most SMALL bytes inside one local chunk, or None."""
        chunk_size = self._placement().ring.chunk_size
        index, offset = divmod(start, chunk_size)
        if stop - start > SMALL or (stop - 1) // chunk_size != index:
            return None
        try:
            data = await self.store.read(info.chunk(index, chunk_size).name, offset, stop - start)
        except OSError as exc:  # the streaming path goes around the disk
            self.disk.failed(StoreError(f"cache disk failed reading a chunk: {exc}"))
            return None
        except CorruptChunk as exc:  # the streaming path refills it
            self.corrupt(exc)
            return None
        if data is not None:
            self._m.hits.inc()
        return data

    async def open(self, c: ChunkId, offset: int, length: int, failed: set[str] | None = None,
                   count: bool = True) -> Stream:
        """Open `length` bytes of chunk `c` from `offset`, wherever they are, counted as a hit
        (on disk here) or a miss (from a peer or S3) unless not `count` (a chunk resumed).
        `failed`: the peers that failed in this read, not asked again in it (a peer that
        fails now joins them)."""
        local = self.local(c, offset, length)
        if count:
            (self._m.hits if local is not None else self._m.misses).inc()
        if local is not None:
            return local
        placement = self._placement()
        owners = placement.owners(c)
        errors = []
        for worker in self._down.order(owners, placement.ring.replicas, self.me):
            if failed is not None and worker.id in failed:
                continue
            if worker.id == self.me:
                if errors:
                    log.warning("filling %s here: its owners failed: %s", c.ring_key, errors[-1])
                source = fill_source(owners, placement.ring.replicas, self.me, 0)
                return await self.open_local(c, offset, length, source, 0)
            try:
                stream = await self._peers.open(worker, c, offset, length)
            except PeerError as exc:
                self.peer_failed(worker.id, exc)
                if failed is not None:
                    failed.add(worker.id)
                errors.append(exc)
                continue
            self._down.answered(worker.id)
            return stream
        raise PeerUnavailable(f"no owner of {c.ring_key} answered: {errors[-1] if errors else 'none'}")

    def peer_failed(self, peer_id: str, exc: PeerError | None = None) -> None:
        """Count the failure and ask this peer last for a while (after filling here), unless `exc`
        is no failure (routing.DownPeers.failed)."""
        if self._down.failed(peer_id, exc):
            self._m.peer_failures.inc()

    def local(self, c: ChunkId, offset: int, length: int, touch: bool = True) -> LocalStream | None:
        try:
            stream = LocalStream(self.store, c, offset, length, self.budget.piece, touch)
        except OSError as exc:  # the file is listed but cannot be opened: the disk is failing
            self.disk.failed(StoreError(f"cache disk failed opening {c.ring_key}: {exc}"))
            return None
        except CorruptChunk as exc:
            self.corrupt(exc)
            return None
        if not stream.present:
            stream.close()
            return None
        return stream

    async def open_local(self, c: ChunkId, offset: int, length: int, source: WorkerInfo | None,
                         hop: int, holder: str | None = None, origin: bool = True) -> Stream:
        """Fill chunk `c` here if it is missing (one fill at a time), then open it.

        A fill copies the chunk from `source` (a follower's primary), else from a worker
        that held it under an earlier ring (`holder` first), else reads it from S3,
        unless `origin` is False (a handoff), which raises NotCached instead. If the disk
        fails or the store has no room, a read streams the bytes from where the fill would
        take them, uncached.
        """
        # Held from before the fill until this read has opened the chunk: S3-FIFO puts a new chunk
        # first in line for eviction, and the next fill's room would otherwise be taken from it
        # between its rename and this open. So a chunk filled here is this read's, and one fill
        # per read at most: a chunk that cannot be opened after its fill is streamed uncached.
        with self.store.held(c.name):
            filled = False
            for attempt in range(3):  # a fill joined may be a handoff's, which does not read S3
                # After a fill, this read is the one it was made for: not a second use (eviction).
                stream = self.local(c, offset, length, touch=not attempt)
                if stream is not None:
                    return stream
                if filled or c.name in self.store:  # listed but unreadable, or dropped as corrupt
                    break
                ticket = self.disk.admit()
                if ticket is None:
                    break
                ok = None
                try:
                    await self._fills.do(c.name, lambda: self._fill(c, source, hop, holder, origin))
                    ok = filled = True
                except NotCached:
                    ok = True
                    if not origin:
                        raise
                except StoreError as exc:
                    self.disk.record(ticket, False, exc)
                    ticket = None
                    if not origin:
                        raise
                    break
                finally:
                    if ticket is not None:
                        self.disk.record(ticket, ok)
        if not origin:
            raise StoreError(f"cache disk failing: cannot take {c.ring_key}")
        return await self._pass_through(c, offset, length, source, hop)

    async def _pass_through(self, c: ChunkId, offset: int, length: int,
                            source: WorkerInfo | None, hop: int) -> Stream:
        """The bytes, not cached: from the primary if this worker copies from one, else from a
        worker that held the chunk under an earlier ring (a new owner whose disk is full or
        failing: never S3 while one has it), else S3. Nothing (and no one asked) for no bytes: a
        preload's fill opens its chunk for 0 bytes, to have it stored."""
        if not length:
            return self._uncached(c, offset, 0)
        if source is not None and not self._down.down(source.id):
            try:
                stream = await self._peers.open(source, c, offset, length, hop + 1, primary=True)
                self._m.passthrough_bytes.inc(length)
                return stream
            except PeerError as exc:
                self.peer_failed(source.id, exc)
                log.warning("primary %s failed for %s, reading S3: %s", source.id, c.ring_key, exc)
        stream = await self._holder_stream(c, offset, length, hop, None, set())
        if stream is not None:
            self._m.passthrough_bytes.inc(length)
            return stream
        return self._uncached(c, offset, length)

    def _uncached(self, c: ChunkId, offset: int, length: int) -> "PassThrough":
        """The bytes straight from S3, counted as read from S3 and as streamed around the disk."""
        return PassThrough(self._origin, c, offset, length, self._m.passthrough_bytes, self._m.origin_bytes)

    async def _fill(self, c: ChunkId, source: WorkerInfo | None, hop: int, holder: str | None,
                    origin: bool) -> None:
        """A primary (`source`) is given the primary timeout (worker/config.py): a hung one fails
        here, and S3 fills the chunk, before the peer waiting on this fill gives up on us."""
        if c.name in self.store:  # filled while this flight was being set up
            return
        self._m.fills_in_flight.inc()
        try:
            if source is not None and not self._down.down(source.id):  # failed lately: S3 has the bytes
                try:
                    stream = await self._peers.open(source, c, 0, c.length, hop + 1, primary=True)
                    return await self._copy(c, stream)  # counted as peer bytes by the peer client
                except PeerError as exc:
                    self.peer_failed(source.id, exc)
                    log.warning("primary %s failed for %s, filling from S3: %s", source.id, c.ring_key, exc)
            if await self._from_holders(c, hop, holder):
                return
            if not origin:
                raise NotCached(f"no earlier holder of {c.ring_key} has it")
            await self._fill_from_origin(c)
            self._on_fill(c)
        finally:
            self._m.fills_in_flight.dec()

    async def take(self, c: ChunkId, holder: str) -> bool:
        """Copy `c` here from `holder` (or an earlier holder) if it is missing; True if copied."""
        if c.name in self.store:
            return False
        (await self.open_local(c, 0, 0, None, 1, holder, origin=False)).close()
        return True

    def holders(self, c: ChunkId, first: str | None = None) -> list[WorkerInfo]:
        """Workers that may hold `c` from before the last ring changes, `first` first; not us."""
        placement = self._placement()
        found = placement.previous_holders(c)
        if first in placement.members:
            found = [placement.members[first]] + [w for w in found if w.id != first]
        return [w for w in found if w.id != self.me][:HOLDERS]

    async def _from_holders(self, c: ChunkId, hop: int, first: str | None) -> bool:
        """Copy `c` from a worker that held it under an earlier ring: never S3 while one has it.
        One that failed lately is not asked: a hung holder would cost every fill a timeout. Each
        is given the holder timeout (worker/config.py), shorter than the peer's that waits on
        this fill (a reader's) or on this take (the holder's that hands it over): a hung
        holder fails here, and the fill goes on (next holder, S3), before that peer gives up."""
        tried: set[str] = set()
        while (stream := await self._holder_stream(c, 0, c.length, hop, first, tried)) is not None:
            try:
                await self._copy(c, stream, self._m.handoff_bytes)
            except NotCached:
                continue
            except PeerError as exc:
                self._holder_failed(stream.peer.id, c, exc)
                continue
            self._m.handoff_chunks.inc()
            return True
        return False

    async def _holder_stream(self, c: ChunkId, offset: int, length: int, hop: int, first: str | None,
                             tried: set[str]) -> PeerStream | None:
        """Bytes of `c` from the next earlier holder not in `tried` that has it (it joins
        `tried`), not one that failed lately; None when none has."""
        for worker in self.holders(c, first):
            if worker.id in tried or self._down.down(worker.id):
                continue
            tried.add(worker.id)
            try:
                return await self._peers.open(worker, c, offset, length, hop + 1, local=True)
            except NotCached:
                continue
            except PeerError as exc:
                self._holder_failed(worker.id, c, exc)
        return None

    def _holder_failed(self, peer_id: str, c: ChunkId, exc: PeerError) -> None:
        self.peer_failed(peer_id, exc)
        log.warning("earlier holder %s failed for %s: %s", peer_id, c.ring_key, exc)

    async def _fill_from_origin(self, c: ChunkId) -> None:
        if self._origin_slots.locked() and self._origin_queued >= self._origin_queue_limit:
            raise Busy(f"{self._origin_queued} chunk fills already wait for the origin")
        self._origin_queued += 1
        try:
            await self._origin_slots.acquire()
        finally:
            self._origin_queued -= 1
        try:
            body = self._origin.read_range(c.bucket, c.key, c.etag, c.start, c.start + c.length,
                                           keep_going=lambda: self._fills.waiting(c.name) > 0,
                                           piece=lambda: fill_piece(len(self._fills)))
            async with contextlib.aclosing(body):
                await self._write(c, body, self._m.origin_bytes)
        finally:
            self._origin_slots.release()

    async def _copy(self, c: ChunkId, stream: PeerStream, counter=None) -> None:
        """Store a peer's chunk. Its response is closed whatever happens: the store may refuse
        the chunk before a byte is read (full, failing), and a response left open holds its
        pooled connection for good; 64 of them, and every request to that peer waits."""
        try:
            await self._write(c, stream, counter)
        finally:
            stream.close()

    async def _write(self, c: ChunkId, pieces: AsyncIterator[bytes], counter=None) -> None:
        """Store the chunk; a failure of the store (an OSError, or Busy: full) is a StoreError."""
        try:
            async with self.store.writing(c.name, c.length, c.pack()) as w:
                async for piece in pieces:
                    if w.written + len(piece) > c.length:
                        raise OriginError(f"origin sent more than the {c.length} bytes of {c.ring_key}")
                    await w.write(piece)
                    if counter is not None:
                        counter.inc(len(piece))
                if w.written != c.length:
                    raise OriginError(f"origin sent {w.written} of {c.length} bytes of {c.ring_key}")
        except (OSError, Busy) as exc:
            raise StoreError(f"cache disk failed storing {c.ring_key}: {exc}") from exc

    def corrupt(self, exc: CorruptChunk) -> None:
        """A chunk failed its checksums: drop it, so the next read refills it."""
        self.store.discard(exc.name)
        self._m.corrupt_chunks.inc()
        log.error("%s: dropped, reading it from another copy or S3", exc)

    def pieces(self, c: ChunkId, offset: int, length: int, stream: Stream, source: WorkerInfo | None,
               hop: int, local: bool = False) -> AsyncIterator[bytes]:
        """A peer's piece of a chunk from this worker. A corrupt local copy is dropped, never
        sent, and the rest refilled here; with `local` (a holder's copy) the answer is cut."""
        async def reopen(pos: int, failed: set[str]) -> Stream:
            if local:
                raise NotCached(f"{c.ring_key} was corrupt here and has been dropped")
            return await self.open_local(c, pos, offset + length - pos, source, hop)
        return self._pieces(c, offset, length, stream, reopen)

    async def _pieces(self, c: ChunkId, offset: int, length: int, stream: Stream,
                      reopen: Callable | None = None, failed: set[str] | None = None) -> AsyncIterator[bytes]:
        """Stream a chunk; if a peer fails mid-chunk, resume from the next one (not one in
        `failed`, those that failed in this read); if the local copy is corrupt, drop it and
        resume from another copy or a refill."""
        pos, end, failed = offset, offset + length, set() if failed is None else failed
        if reopen is None:
            async def reopen(pos: int, failed: set[str]) -> Stream:
                return await self.open(c, pos, end - pos, failed, count=False)  # counted when opened
        self.budget.open()
        try:
            while True:
                try:
                    async with contextlib.aclosing(stream.__aiter__()) as it:
                        async for piece in it:
                            pos += len(piece)
                            yield piece
                    return
                except PeerError as exc:
                    self.peer_failed(stream.peer.id, exc)
                    failed.add(stream.peer.id)
                    log.warning("resuming %s at %d after: %s", c.ring_key, pos, exc)
                    stream = await reopen(pos, failed)
                except CorruptChunk as exc:  # nothing of the bad block was sent
                    self.corrupt(exc)
                    stream = await reopen(pos, failed)
                except StoreError as exc:  # a local chunk that cannot be read: S3 has the bytes
                    self.disk.failed(exc)
                    stream = self._uncached(c, pos, end - pos)
        finally:
            self.budget.close()


class PassThrough:
    """Bytes of a chunk straight from S3, not cached: the disk is failing."""

    peer = None

    def __init__(self, origin: S3Origin, c: ChunkId, offset: int, length: int, *counters) -> None:
        self._origin, self._c, self._counters = origin, c, counters
        self._start, self._stop = c.start + offset, c.start + offset + length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        c = self._c
        if self._stop <= self._start:
            return
        body = self._origin.read_range(c.bucket, c.key, c.etag, self._start, self._stop)
        async with contextlib.aclosing(body):
            async for piece in body:
                for counter in self._counters:
                    counter.inc(len(piece))
                yield piece

    def close(self) -> None:
        pass  # nothing is open until iterated; iteration closes what it opens


def _close_stream(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
