"""The loader client: each chunk read straight from its owner, in parallel, failing over along the ring."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import OrderedDict, deque
from typing import AsyncIterator, Awaitable, Callable, Iterable, Iterator, TypeVar

import aiohttp

from . import tls
from .bounds import bounded
from .buffers import new_bytes
from .errors import ObjectChanged, PeerError, PeerUnavailable
from .fileobj import ObjectFile
from .master_client import MasterClient
from .members import service_url
from .objects import ChunkId, ObjectInfo, check_bucket
from .outputs import TEMP_NAME, naming, opened_in_place, outlast, output_of, temp_path, undo_open, write_all
from .rangereader import RangeReader
from .ranges import chunk_spans, offsets, reslice_range, slice_range
from .ring import Placement, WorkerInfo
from .ringview import RingView
from .signer import signer_from
from .worker_client import WorkerClient

__all__ = ["Client", "TEMP_NAME"]

log = logging.getLogger("p2pcache.client")
T = TypeVar("T")
SUSPECT_FOR = 5.0  # seconds a worker that failed is asked last
META_ENTRIES = 1024


def _checked_arguments(master_url: str, concurrency: int, prefetch: int, chunk_timeout: float,
                       connect_timeout: float, meta_ttl: float) -> str:
    """The master's URL, trailing "/" dropped, if it and the numbers mean something; else a
    ValueError naming the argument, as the CLI's flags are refused (never clamped)."""
    try:
        url = service_url(master_url)
    except ValueError as exc:
        raise ValueError(f"master_url: {exc}") from None
    bounded("concurrency", concurrency, 1)
    bounded("prefetch", prefetch, 0)
    bounded("chunk_timeout", chunk_timeout, 0, above=True)
    bounded("connect_timeout", connect_timeout, 0, above=True)
    bounded("meta_ttl", meta_ttl, 0)
    return url


class Client:
    """An async context manager; `read`, `read_into`, `stream`, `download`, `open` and `stat` objects through the cache.

    Memory is bounded by `concurrency` x the ring's chunk size per call (plus
    the result, for `read`). Every call reads one version of the object: the
    ETag it resolved first is sent as `If-Match` with every chunk request.
    With a reader key (`access_key`/`secret_key`, or `credentials="env"` for
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION) every request to a
    worker is signed with SigV4, for workers that run with `--client-keys`.
    `tls_ca`, a PEM bundle, is trusted on top of the system's CAs for an https://
    master and workers (unless a `session` is given: its own settings apply).
    Chunks of plain-HTTP workers are received straight into their buffers on
    the client's own connections (`raw_http=False`: through aiohttp, as https
    workers always are).
    """

    def __init__(self, master_url: str, *, concurrency: int = 16, chunk_timeout: float = 60.0,
                 connect_timeout: float = 2.0, prefetch: int = 4, meta_ttl: float = 5.0,
                 session: aiohttp.ClientSession | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 credentials: str | None = None, raw_http: bool = True, tls_ca: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.master_url = _checked_arguments(master_url, concurrency, prefetch, chunk_timeout, connect_timeout,
                                             meta_ttl)
        self._tls_ca = tls_ca
        self._signer = signer_from(access_key, secret_key, region, credentials)
        self._raw = RangeReader(connect_timeout, chunk_timeout, concurrency) if raw_http else None
        self._concurrency = concurrency
        self._timeouts = (connect_timeout, chunk_timeout)
        self._prefetch = prefetch
        self._meta_ttl = meta_ttl
        self._session, self._own_session = session, session is None
        self._clock = clock
        self._slots = asyncio.Semaphore(self._concurrency)
        self._meta: OrderedDict[tuple[str, str], tuple[float, ObjectInfo]] = OrderedDict()
        self._suspect: dict[str, float] = {}
        self._spread = random.randrange(1 << 16)  # which replica this client asks first
        self._ring: RingView | None = None
        self.closed = False
        self._file_reads: set[asyncio.Task] = set()  # open files' chunk fetches: `close` cancels them

    async def start(self) -> "Client":
        if self._session is None:
            trust = await asyncio.to_thread(tls.client_context, self._tls_ca)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=self._concurrency * 2, ssl=trust),
                auto_decompress=False)
        self._workers = WorkerClient(self._session, *self._timeouts, signer=self._signer, raw=self._raw)
        self._ring = RingView(MasterClient(self._session, self.master_url))
        try:
            await self._ring.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the client: an open file's chunk fetches in flight are cancelled first (a read of one
        on another thread fails with ValueError), then the ring follower and the connections."""
        self.closed = True
        fetches = list(self._file_reads)
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        try:
            if self._ring is not None:
                await self._ring.close()
            if self._raw is not None:
                await self._raw.close()
        finally:  # whatever failed above, the session is not left open
            if self._own_session and self._session is not None:
                await self._session.close()

    async def __aenter__(self) -> "Client":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def placement(self) -> Placement:
        if self._ring is None:
            raise ValueError("the client is not started: use `async with Client(...)`")
        return self._ring.placement

    @property
    def chunk_size(self) -> int:
        return self.placement.ring.chunk_size

    async def stat(self, bucket: str, key: str, fresh: bool = False) -> ObjectInfo:
        """The object's identity (ETag, size), from a worker's HEAD; cached for `meta_ttl` seconds
        (`fresh`: not taken from that cache, asked now, as `open` does)."""
        return await self._object(bucket, key, fresh)

    async def read(self, bucket: str, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes `[start, end)` of the object, as `data[start:end]` would be: clamped to its size, a
        negative offset counted from its end (`start=-8`: the last 8 bytes).

        Every call here that takes offsets resolves them against the version it reads: one that
        starts over on a new version takes `start=-8` (or `end=None`) of that version's size, and
        fails with RangeNotSatisfiable if that version ends at or before a `start` > 0 (see
        `ranges.reslice_range`): the bytes asked for were there, and are gone.
        """
        start, end = offsets(start, end)
        info = await self._object(bucket, key)
        try:
            return await self.read_range(info, *slice_range(start, end, info.size))
        except ObjectChanged as exc:  # nothing was returned yet: start over, once, on the new version
            info = await self.reresolve(bucket, key, exc)
        return await self.read_range(info, *reslice_range(start, end, info.size))

    async def stream(self, bucket: str, key: str, start: int = 0,
                     end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `[start, end)` in order, one chunk span at a time, `concurrency` spans in flight."""
        start, end = offsets(start, end)
        info = await self._object(bucket, key)
        async with contextlib.aclosing(self._in_order(bucket, key, info, start, end)) as pieces:
            async for piece in pieces:
                yield bytes(piece)

    async def _in_order(self, bucket: str, key: str, info: ObjectInfo, start: int, end: int | None,
                        begin: Callable[[ObjectInfo, int], None] | None = None) -> AsyncIterator[bytes]:
        """The bytes `[start, end)` of version `info` in order, `concurrency` chunk spans in flight;
        if it changed before the first piece was out, once more from the version that replaced it.
        `begin(version, length)` is called as each try starts."""
        sent = False
        for attempt in (1, 2):
            a, b = (slice_range if attempt == 1 else reslice_range)(start, end, info.size)
            if begin:
                begin(info, b - a)
            size = self.chunk_size
            try:
                async with contextlib.aclosing(self._window(
                        self._fetch(info, size, x, y) for x, y in _spans(a, b, size))) as pieces:
                    async for piece in pieces:
                        sent = True
                        yield piece
                return
            except ObjectChanged as exc:
                if sent or attempt == 2:
                    raise
                info = await self.reresolve(bucket, key, exc)

    async def download(self, bucket: str, key: str, path: str | os.PathLike,
                       progress: Callable[[int, int], None] | None = None, *,
                       start: int = 0, end: int | None = None) -> ObjectInfo:
        """Write the object (or `[start, end)`) to `path`: chunks at their offsets in a temp file, renamed in.

        A symlink's target is replaced (the link stays); an existing device or FIFO is written
        in place, in order; a directory is refused (see `outputs.output_of`).

        `progress(done, total)` is called as chunks land (from 0 again if the
        object changed before the download was complete and it starts over).
        """
        path, loop = os.fspath(path), asyncio.get_running_loop()
        start, end = offsets(start, end)
        out = await loop.run_in_executor(None, output_of, path)  # a directory is refused before any read
        info = await self._object(bucket, key)
        if out.in_place:
            return await self._download_in_place(bucket, key, path, info, progress, start, end)
        tmp = temp_path(out.path)
        opening = loop.run_in_executor(None, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            fd = await asyncio.shield(opening)
        except OSError as exc:  # name the file the caller asked for, not our temp file
            raise OSError(exc.errno, exc.strerror, path) from exc
        except asyncio.CancelledError:  # the open goes on in its thread: undo it when it ends
            await undo_open(opening, tmp)
            raise
        renamed = False
        try:
            with naming(path):  # a write or fsync of the temp file (EFBIG, ENOSPC): the file asked for
                try:
                    await self._write_at(fd, info, *slice_range(start, end, info.size), progress)
                except ObjectChanged as exc:  # nothing is in place yet: start over, once
                    info = await self.reresolve(bucket, key, exc)
                    span = reslice_range(start, end, info.size)
                    await _on_fd(os.ftruncate, fd, 0)
                    await self._write_at(fd, info, *span, progress)
                await _on_fd(os.fsync, fd)
            try:
                await loop.run_in_executor(None, os.replace, tmp, out.path)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, path) from exc
            renamed = True
        finally:  # on any failure, cancellation included, the temp file goes
            os.close(fd)
            if not renamed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return info

    async def open(self, bucket: str, key: str) -> ObjectFile:
        """A read-only, seekable file of one version of the object (the workers' now), for use from
        another thread; until it has returned a byte it moves to a successor of the same size."""
        info = await self._object(bucket, key, fresh=True)
        return ObjectFile(self, info, asyncio.get_running_loop(), self.chunk_size, self._prefetch)

    async def file_read(self, info: ObjectInfo, start: int, stop: int) -> bytes:
        """`read_range` for an open file, in a task of its own (the file waits on it from another
        thread) that `close` cancels."""
        if self.closed:  # it came in as `close` began: the file's read fails as the others do
            raise asyncio.CancelledError
        task = asyncio.current_task()
        self._file_reads.add(task)
        try:
            return await self.read_range(info, start, stop)
        finally:
            self._file_reads.discard(task)

    async def read_range(self, info: ObjectInfo, start: int, stop: int) -> bytes:
        """Bytes `[start, stop)` of exactly the version `info` names, else ObjectChanged."""
        if start >= stop:
            return b""
        result, view = new_bytes(stop - start)  # filled in place: no second copy of the whole
        with view:
            await self._fill(info, start, stop, view)
        return result if isinstance(result, bytes) else bytes(result)

    async def read_into(self, bucket: str, key: str, buffer, start: int = 0) -> int:
        """Fill the writable `buffer` with the object's bytes from `start` (negative: counted from the
        end); how many there were.

        The fastest way into memory: each chunk is received straight into its place in
        `buffer` (a bytearray, an mmap, a NumPy array...), with no copy and no allocation.
        """
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise ValueError("read_into needs a writable buffer")
        start, _ = offsets(start)
        info = await self._object(bucket, key)
        for attempt in (1, 2):
            a, _ = (slice_range if attempt == 1 else reslice_range)(start, None, info.size)
            b = min(info.size, a + len(view))
            try:
                await self._fill(info, a, b, view[:b - a])
                return b - a
            except ObjectChanged as exc:  # the buffer holds nothing trustworthy yet: start over, once
                if attempt == 2:
                    raise
                info = await self.reresolve(bucket, key, exc)
        raise AssertionError("unreachable")

    async def _fill(self, info: ObjectInfo, start: int, stop: int, view: memoryview) -> None:
        """Bytes `[start, stop)` of the version `info` names into `view`, chunk by chunk in parallel."""
        size = self.chunk_size
        parts = (self._fetch(info, size, x, y, view[x - start:y - start]) for x, y in _spans(start, stop, size))
        async with contextlib.aclosing(self._window(parts)) as it:
            async for _ in it:
                pass

    async def list(self, bucket: str, prefix: str = "", delimiter: str = "",
                   max_pages: int | None = None) -> tuple[list[dict], list[str]]:
        """The objects (and common prefixes) under `prefix`, from the workers' ListObjectsV2."""
        check_bucket(bucket)
        objects, prefixes, token = [], [], None
        for _ in itertools.count() if max_pages is None else range(max_pages):
            page = await self._failover(f"{bucket}/{prefix}", f"listing s3://{bucket}/{prefix}",
                                        lambda w: self._workers.list(w, bucket, prefix, delimiter, token))
            objects += page.objects
            prefixes += page.prefixes
            if not (token := page.next_token):
                break
        return objects, prefixes

    async def _object(self, bucket: str, key: str, fresh: bool = False) -> ObjectInfo:
        check_bucket(bucket)  # "_p2p/health" would be a worker's own route, not an object
        if not key:  # HEAD /bucket/ is S3's HeadBucket: an answer without an object's ETag
            raise ValueError(f"s3://{bucket}/ names no object: the key is empty")
        entry = self._meta.get((bucket, key))
        if entry is not None and not fresh and entry[0] > self._clock():
            return entry[1]
        info = await self._failover(f"{bucket}/{key}", f"HEAD s3://{bucket}/{key}",
                                    lambda w: self._workers.head(w, bucket, key))
        return self._remember(info)

    async def reresolve(self, bucket: str, key: str, changed: ObjectChanged) -> ObjectInfo:
        """The version that replaced the one a read failed `changed` on, best asked of the worker
        that saw the change: its metadata is fresh (another may still answer with the old one)."""
        self._meta.pop((bucket, key), None)
        worker = getattr(changed, "worker", None)
        if worker is not None:
            with contextlib.suppress(PeerError):
                return self._remember(await self._workers.head(worker, bucket, key))
        return await self._object(bucket, key, fresh=True)

    def _remember(self, info: ObjectInfo) -> ObjectInfo:
        self._meta[(info.bucket, info.key)] = (self._clock() + self._meta_ttl, info)
        self._meta.move_to_end((info.bucket, info.key))
        while len(self._meta) > META_ENTRIES:
            self._meta.popitem(last=False)
        return info

    async def _write_at(self, fd: int, info: ObjectInfo, a: int, b: int,
                        progress: Callable[[int, int], None] | None) -> None:
        """Bytes `[a, b)` of version `info` written at their offsets from `a` in `fd`."""
        size, done = self.chunk_size, 0
        free: list[bytearray] = []  # at most `concurrency` chunk buffers, reused: no page faults per chunk

        async def one(x: int, y: int) -> int:
            buf = free.pop() if free else bytearray(size)
            try:
                view = memoryview(buf)[:y - x]
                await self._fetch(info, size, x, y, view)
                await _on_fd(_pwrite_all, fd, view, x - a)
            finally:
                free.append(buf)
            return y - x

        if progress:
            progress(0, b - a)
        async with contextlib.aclosing(self._window(one(x, y) for x, y in _spans(a, b, size))) as it:
            async for n in it:
                done += n
                if progress:
                    progress(done, b - a)

    async def _download_in_place(self, bucket: str, key: str, path: str, info: ObjectInfo,
                                 progress: Callable[[int, int], None] | None, start: int,
                                 end: int | None) -> ObjectInfo:
        """`download` into a device or FIFO: opened as it is and written in order; nothing renamed."""
        fd, done, total = await opened_in_place(path), 0, 0

        def begin(version: ObjectInfo, length: int) -> None:  # a try (again, once, while nothing was written)
            nonlocal info, total
            info, total = version, length
            if progress:
                progress(0, length)

        try:
            with naming(path):  # a write (EPIPE: the FIFO's reader left): the file
                async with contextlib.aclosing(self._in_order(bucket, key, info, start, end, begin)) as pieces:
                    async for piece in pieces:
                        await _on_fd(write_all, fd, piece)
                        done += len(piece)
                        if progress:
                            progress(done, total)
            return info
        finally:
            os.close(fd)

    async def _fetch(self, info: ObjectInfo, chunk_size: int, start: int, stop: int,
                     into: memoryview | None = None) -> bytes | None:
        """One span (within one chunk) from the chunk's owner, or the next worker that answers."""
        chunk = info.chunk(start // chunk_size, chunk_size)
        async with self._slots:
            return await self._failover(
                chunk, f"bytes {start}-{stop - 1} of s3://{info.bucket}/{info.key}",
                lambda w: self._workers.get(w, info, start, stop, into))

    async def _failover(self, chunk: ChunkId | str, what: str, call: Callable[[WorkerInfo], Awaitable[T]]) -> T:
        """`call` on the chunk's owners in ring order; then once more on a freshly fetched ring."""
        if self.closed:
            raise ValueError("the client is closed")
        reasons: list[str] = []
        placement = self.placement
        for attempt in (1, 2):
            for worker in self._order(placement, chunk):
                try:
                    result = await call(worker)
                except PeerError as exc:
                    if self._suspect.get(worker.id, 0) <= self._clock():
                        log.warning("%s: %s; trying the next worker", what, exc)
                    self._suspect[worker.id] = self._clock() + SUSPECT_FOR
                    reasons.append(str(exc))
                    continue
                self._suspect.pop(worker.id, None)
                return result
            if attempt == 1:
                placement = await self._ring.refresh()
        raise PeerUnavailable(f"{what}: no worker answered: {'; '.join(reasons) or 'the ring has no workers'}")

    def _order(self, placement: Placement, chunk: ChunkId | str) -> list[WorkerInfo]:
        """The owners (from a per-client offset, to spread a hot chunk), then successors; failed ones last."""
        owners = placement.owners(chunk) if isinstance(chunk, ChunkId) else placement.near(chunk)
        replicas = max(1, placement.ring.replicas)
        primary, rest = list(owners[:replicas]), list(owners[replicas:])
        k = self._spread % len(primary) if primary else 0
        now = self._clock()
        return sorted(primary[k:] + primary[:k] + rest, key=lambda w: self._suspect.get(w.id, 0) > now)

    async def _window(self, coros: Iterable[Awaitable[T]]) -> AsyncIterator[T]:
        """Results in order, with at most `concurrency` of them running; the rest cancelled on exit."""
        pending: deque[asyncio.Future] = deque()
        try:
            for coro in coros:
                pending.append(asyncio.ensure_future(coro))
                if len(pending) >= self._concurrency:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _spans(start: int, stop: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for span in chunk_spans(start, stop, chunk_size):
        a = span.index * chunk_size + span.offset
        yield a, a + span.length


async def _on_fd(fn: Callable[..., object], fd: int, *args) -> None:
    """`fn(fd, *args)` in the executor; cancelled, it still waits for the call to end: the caller
    closes `fd` next, and a write or truncate still running on its number could land in whatever
    file reuses it."""
    call = asyncio.get_running_loop().run_in_executor(None, fn, fd, *args)
    try:
        await asyncio.shield(call)
    except asyncio.CancelledError:
        await outlast(call)  # a second cancellation must not cut the wait either
        raise


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
