"""Chunks on local disk: complete-then-rename writes, scan-resistant eviction under a capacity.

Invariants: a file under `chunks/` is always a complete chunk (it is written
under `tmp/` and renamed in); no byte of it leaves the store unchecked; `used +
reserved <= capacity` at every await point; a chunk being read (pinned, here or in a
serving process: worker/sharedpins.py) is never evicted, and an evicted chunk's blocks are
freed as its file is unlinked. Which chunk goes first is the eviction policy's choice
(worker/eviction.py, S3-FIFO).

A chunk is renamed in without an fsync: the kernel writes it back on its own
schedule. A process that dies loses nothing (the page cache outlives it); a
power cut may leave a renamed chunk short, or with blocks that never reached
the disk. The startup scan drops a file whose size or trailer is wrong, and the
checksums refuse a block that is wrong on its first read, so such a chunk is
refilled, never served. The fsync cost each cold read ~20% of its throughput
(docs/benchmarks.md, "The fill path").

A chunk file is the chunk's bytes, then a trailer: metadata (what the chunk
is, so the worker can compute who should hold it), the checksums of its
blocks (p2pcache.blocksums), their lengths and MAGIC. Data starts at offset
0, so reads need no offset arithmetic; the trailer is written with the data
and renamed in with it, so the two never disagree. Every read is of whole
blocks, checked against the table before a byte leaves the store: a mismatch
raises CorruptChunk, and the caller drops the chunk (`discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import struct
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, ContextManager

from p2pcache import blocksums
from p2pcache.buffers import new_bytearray
from p2pcache.errors import Busy, CorruptChunk
from p2pcache.objects import ChunkId

from .eviction import DEFAULT, POLICIES, Policy
from .pins import Pins
from .sharedpins import Claims, evicted

__all__ = ["ChunkStore", "ChunkWriter", "ChunkFile", "pread", "read_pieces", "read_whole", "read_now", "open_chunk", "PIECE", "MAGIC"]

log = logging.getLogger("p2pcache.store")
_NAME = re.compile(r"[0-9a-f]{40}-(\d+)-(\d+)")
PIECE = 256 << 10  # per stream in flight: bounds memory under many readers (benchmarks: memory)
MAGIC = b"P2P2"  # b"P2PC" files (no checksums) are dropped by the startup scan
_FOOTER = struct.Struct(">III4s")  # metadata length, table length, block size, MAGIC


async def _run(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class ChunkWriter:
    def __init__(self, file) -> None:
        self._file = file
        self.written = 0
        self.sums = blocksums.Summer()

    async def write(self, data: bytes) -> None:
        self.sums.update(data)
        await _run(self._file.write, data)
        self.written += len(data)


class ChunkFile:
    """An open chunk file and its block checksums."""

    __slots__ = ("fd", "name", "table", "block")

    def __init__(self, fd: int, name: str, table: bytes, block: int) -> None:
        self.fd, self.name, self.table, self.block = fd, name, table, block


class ChunkStore:
    def __init__(self, root: Path, capacity: int, min_free: int = 0, open_files: int = 256,
                 policy: Callable[[int], Policy] = POLICIES[DEFAULT],
                 kept: Callable[[str], bool] = lambda name: False,
                 before_late_load: Callable[[], Awaitable[None]] | None = None) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self.min_free = min_free
        self.used = 0
        self._reserved = 0
        self._chunks: dict[str, int] = {}  # name -> size
        self._policy = policy(capacity)
        self._pins = Pins(self._released)
        self._kept = kept  # chunks a pinned preload keeps: never a victim
        self._before_late_load = before_late_load  # so `kept` knows them before the load evicts
        self._claims = Claims()  # the victim's file stays locked until it is unlinked
        # Open files of recently read chunks: an open() per request costs more than
        # the read itself. Only unpinned entries are closed, so a reader's fd stays valid.
        self._fds: OrderedDict[str, ChunkFile] = OrderedDict()
        self._open_files = open_files
        self._dir = str(self.root / "chunks")
        self._loaded = False  # the index holds what is on disk: until then, nothing is written
        self._loading = asyncio.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def names(self) -> list[str]:
        return list(self._chunks)

    async def metadata(self, names: list[str]) -> dict[str, bytes]:
        """The metadata of the chunks `names` that are here and have it (one executor hop)."""
        return await _run(_read_trailers, [(n, self._path(n)) for n in names if n in self._chunks])

    def touch(self, name: str) -> None:
        """A use of `name` seen by another process (a serving process read it from its file)."""
        if name in self._chunks:
            self._policy.touch(name)

    def promote(self, name: str) -> None:
        """A preload asked for `name`: keep it as a chunk read often (the policy's `promote`)."""
        if name in self._chunks:
            self._policy.promote(name)

    def demote(self, name: str) -> None:
        """Make `name` the next chunk to evict (it has been handed to its owner)."""
        self._policy.demote(name)

    def path(self, name: str) -> Path:
        return Path(self._path(name))

    def _path(self, name: str) -> str:
        return f"{self._dir}/{name[:2]}/{name}"

    def close(self) -> None:
        for file in self._fds.values():
            os.close(file.fd)
        self._fds.clear()

    async def load(self) -> None:
        """Rebuild the index from disk: drop temp files and anything malformed."""
        found, dropped = await _run(_scan, self.root)
        for _, name, size in sorted(found):
            self._chunks[name] = size
            self._policy.restore(name, size)
            self.used += size
        self._loaded = True
        if dropped:
            log.warning("dropped %d incomplete or malformed files from %s", dropped, self.root)
        victims = []
        while self.used > self.capacity and (victim := self._pick_victim()):
            victims.append(self._drop(victim))
        await _run(_evict_all, victims)
        log.info("store %s: %d chunks, %d bytes of %d", self.root, len(self), self.used, self.capacity)

    async def _load_late(self) -> None:
        """`load`, once, by the first write after a failed one; OSError if it fails again."""
        async with self._loading:
            if not self._loaded:
                if self._before_late_load is not None:
                    await self._before_late_load()
                await self.load()

    def pinned(self, name: str, touch: bool = True) -> ContextManager[ChunkFile | None]:
        """The open chunk, safe from eviction until the block ends; None if absent.

        OSError if its file cannot be opened; CorruptChunk if its trailer is unreadable.
        `touch=False` for the read a fill was made for: it is not a second use of the chunk.
        """
        if name not in self._chunks:
            return contextlib.nullcontext()
        file = self._file(name)
        if touch:
            self._policy.touch(name)
        return self._pins.holding(name, file)

    def _released(self, name: str) -> None:
        if name not in self._chunks:  # discarded while read: its fd was kept for us
            self._close_fd(name)

    async def read(self, name: str, offset: int, length: int) -> bytearray | None:
        """A small read in one go (checked), or None if the chunk is not here."""
        with self.pinned(name) as file:
            return None if file is None else await read_whole(file, offset, length)

    async def intact(self, name: str) -> bool:
        """Whether the chunk stored under `name` now passes all its checksums (True if there is
        none): a report of a corrupt copy may come after that copy was dropped and refilled."""
        try:
            with self.pinned(name, touch=False) as file:
                if file is None:
                    return True
                async for _ in read_pieces(file, 0, _length(name)):
                    pass
        except (CorruptChunk, OSError):
            return False
        return True

    def discard(self, name: str) -> None:
        """Drop a corrupt chunk now; readers that have it open finish with their (checked) reads."""
        if name in self._chunks:
            _evict_all([self._drop(name)])

    def _file(self, name: str) -> ChunkFile:
        file = self._fds.get(name)
        if file is not None:
            self._fds.move_to_end(name)
            return file
        try:
            file = self._fds[name] = open_chunk(self._path(name), name)
        except FileNotFoundError:  # listed here, gone from the disk (removed by hand, ...)
            raise CorruptChunk(name, "its file has gone from the cache dir") from None
        if len(self._fds) > self._open_files:
            for old in [n for n in self._fds if n not in self._pins][: len(self._fds) - self._open_files]:
                self._close_fd(old)
        return file

    def _close_fd(self, name: str) -> None:
        file = self._fds.pop(name, None)
        if file is not None:
            os.close(file.fd)

    @contextlib.asynccontextmanager
    async def writing(self, name: str, size: int, meta: bytes = b"") -> AsyncIterator[ChunkWriter]:
        """Write a chunk: visible only if the block ends cleanly with `size` bytes written."""
        if not self._loaded:  # the load at start failed (an unusable cache dir): index the chunks
            await self._load_late()  # already there before adding any, so they count and are evicted
        table_size = blocksums.table_size(size)
        total = size + len(meta) + table_size + _FOOTER.size
        await self._reserve(total)
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            file = await _run(open, tmp, "wb")
            try:
                writer = ChunkWriter(file)
                yield writer
                if writer.written != size:
                    raise ValueError(f"chunk {name}: wrote {writer.written} of {size} bytes")
                table = writer.sums.table()
                trailer = meta + table + _FOOTER.pack(len(meta), len(table), blocksums.BLOCK, MAGIC)
                await _run(_seal, file, trailer, tmp, self.path(name))
            finally:
                await _run(file.close)
        except BaseException:
            self._reserved -= total
            await asyncio.shield(_run(_unlink_all, [tmp]))
            raise
        self._reserved -= total
        if name in self._chunks:  # written again meanwhile: the rename replaced the file
            self.used -= self._chunks[name]
        self._chunks[name] = total
        self._policy.insert(name, total)
        self.used += total

    async def _reserve(self, size: int) -> None:
        if size > self.capacity:
            raise Busy(f"a {size}-byte chunk cannot fit a {self.capacity}-byte cache")
        victims = []
        # Synchronous up to the reservation, so concurrent fills cannot overcommit.
        while self.used + self._reserved + size > self.capacity:
            victim = self._pick_victim()
            if victim is None:
                await _run(_evict_all, victims)
                raise Busy("cache full: every cached chunk is being read")
            victims.append(self._drop(victim))
        self._reserved += size
        await _run(_evict_all, victims)
        if self.min_free:
            await self._keep_free_floor(size)

    async def _keep_free_floor(self, size: int) -> None:
        """Make room above --min-free for `size` bytes and every write reserved before it: the
        disk's free space does not count them until they are written, and fills write together."""
        while (await _run(shutil.disk_usage, self.root)).free - self._reserved < self.min_free:
            victim = self._pick_victim()
            if victim is None:
                self._reserved -= size
                raise Busy(f"disk under {self.root} is below its free-space floor of {self.min_free} bytes")
            await _run(_evict_all, [self._drop(victim)])

    def _pick_victim(self) -> str | None:
        victim = self._policy.victim(self._skip)
        self._claims.keep_only(victim)
        return victim

    def _skip(self, name: str) -> bool:
        """Not a victim: being read (here, or by a serving process), or kept by a pinned preload."""
        return name in self._pins or self._kept(name) or not self._claims.claim(name, self._path(name))

    def _drop(self, name: str) -> tuple[Path, int | None]:
        """Forget a chunk; the caller unlinks the returned path, then frees the blocks of the
        file through the returned fd (which locks serving processes out of it: `_evict_all`).
        The fd of a chunk being read here stays open until its last reader is done."""
        self.used -= self._chunks.pop(name)
        self._policy.remove(name)  # a no-op for a victim, which the policy has forgotten
        if name not in self._pins:
            self._close_fd(name)
        return self.path(name), self._claims.take(name)


class ShortRead(OSError):
    """The file ends before the bytes asked for: it was cut since it was opened."""


async def pread(fd: int, offset: int, n: int) -> bytearray:
    """`n` bytes at `offset`: from the page cache on the loop (RWF_NOWAIT, no
    executor hop); whatever would block on the disk is read in the executor."""
    buf = new_bytearray(n)  # every byte read below, or OSError
    got = _cached(fd, buf, offset)
    while got < n:
        view = memoryview(buf)[got:]
        try:
            more = await _run(os.preadv, fd, [view], offset + got)
        finally:
            # Now, not when the executor's thread drops its arguments (it may not have yet):
            # while a view exists, the caller's trim of `buf` is a BufferError.
            view.release()
        if not more:
            raise ShortRead(f"short read at {offset + got} of fd {fd}")
        got += more
    return buf


async def _blocks(file: ChunkFile, start: int, n: int) -> bytearray:
    """`n` bytes of the chunk's data from `start`; a file cut short since it was opened is a
    bad copy (CorruptChunk: dropped and refilled), not a failing disk."""
    try:
        return await pread(file.fd, start, n)
    except ShortRead as exc:
        raise CorruptChunk(file.name, f"its file was cut short: {exc}") from None


async def read_pieces(file: ChunkFile, offset: int, length: int,
                      piece: int | Callable[[], int] = PIECE) -> AsyncIterator[bytearray]:
    """Yield `length` bytes of an open chunk from `offset`, in pieces of about `piece`
    (or of what `piece()` says before each one; whole blocks are read and checked,
    CorruptChunk before a bad byte is yielded)."""
    block = file.block
    size = piece if callable(piece) else lambda: piece
    start, stop = blocksums.aligned(offset, length, _length(file.name), block)
    end = offset + length
    while start < stop:
        n = min(max(block, size() // block * block), stop - start)
        data = await _blocks(file, start, n)
        _check(file, data, start)
        skip = max(0, offset - start)
        yield _trim(data, skip, min(n, end - start) - skip)
        start += n


def _cached(fd: int, buf: bytearray, offset: int) -> int:
    """Bytes read into `buf` from `offset` as far as the page cache holds them (no wait on the disk)."""
    try:
        return os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as exc:  # tmpfs (an emptyDir in memory) refuses RWF_NOWAIT: read in the executor
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return 0


async def read_whole(file: ChunkFile, offset: int, length: int) -> bytearray:
    """`length` bytes of an open chunk from `offset`, in one read, checked (CorruptChunk
    before a bad byte is returned): for small reads."""
    start, stop = blocksums.aligned(offset, length, _length(file.name), file.block)
    return _checked(file, await _blocks(file, start, stop - start), start, offset, length)


def read_now(file: ChunkFile, offset: int, length: int) -> bytearray | None:
    """`read_whole` if the page cache holds all the bytes; None if reading them would wait
    for the disk."""
    start, stop = blocksums.aligned(offset, length, _length(file.name), file.block)
    data = new_bytearray(stop - start)
    if _cached(file.fd, data, start) < len(data):  # every byte read, or None
        return None
    return _checked(file, data, start, offset, length)


def _checked(file: ChunkFile, data: bytearray, start: int, offset: int, length: int) -> bytearray:
    """The blocks `data` read from `start`, checked, cut to `[offset, offset + length)`."""
    _check(file, data, start)
    return _trim(data, offset - start, length)


def _trim(data: bytearray, skip: int, length: int) -> bytearray:
    """`data[skip:skip + length]` in place: aiohttp sends a bytearray as is (a memoryview goes
    through its slower payload path), and deleting a bytearray's head moves no bytes."""
    del data[skip + length:]
    del data[:skip]
    return data


def _check(file: ChunkFile, data: bytearray, start: int) -> None:
    try:
        blocksums.check(data, start, file.table, file.block)
    except blocksums.Mismatch as exc:
        raise CorruptChunk(file.name, str(exc)) from None


def _length(name: str) -> int:
    """A chunk's data length, from its name (`<digest>-<index>-<length>`)."""
    return int(name.rsplit("-", 1)[1])


def open_chunk(path: str, name: str) -> ChunkFile:
    """Open a chunk file and read its trailer (a few hundred bytes at its end): the checksum
    table, and the chunk's identity, which must be the one `name` stands for: the sums only
    say the bytes are the ones written, not that this file holds the chunk asked for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        length = _length(name)
        meta_length, table_length, block, magic = _FOOTER.unpack(
            os.pread(fd, _FOOTER.size, size - _FOOTER.size))
        trailer = os.pread(fd, meta_length + table_length, length)
        if magic != MAGIC or block <= 0 or len(trailer) != meta_length + table_length or \
                table_length != blocksums.table_size(length, block) or \
                size != length + meta_length + table_length + _FOOTER.size:
            raise CorruptChunk(name, "its trailer is malformed")
        if _identity(trailer[:meta_length]) != name:
            raise CorruptChunk(name, "its file holds another chunk (its trailer names another one)")
    except BaseException:
        os.close(fd)
        raise
    return ChunkFile(fd, name, trailer[meta_length:], block)


def _identity(meta: bytes) -> str | None:
    """The store name of the chunk a trailer's metadata describes; None if it names none."""
    try:
        return ChunkId.unpack(meta).name
    except (ValueError, ArithmeticError):  # not a packed ChunkId, or one of no sane chunk
        return None

def _seal(file, trailer: bytes, tmp: Path, final: Path) -> None:
    file.write(trailer)
    file.flush()  # no fsync: see the module's docstring
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _evict_all(victims: list[tuple[Path, int | None]]) -> None:
    """Unlink each victim's file, then free its blocks and let go of its lock (so no serving
    process begins to read it between the two, and one that still has it open, unread, does not
    keep its blocks on disk)."""
    try:
        _unlink_all([path for path, _ in victims])
    finally:
        for _, fd in victims:
            if fd is not None:
                evicted(fd)


def _scan(root: Path) -> tuple[list[tuple[float, str, int]], int]:
    (root / "chunks").mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    found, dropped = [], 0
    for entry in (root / "chunks").glob("*/*"):
        match = _NAME.fullmatch(entry.name)
        st = entry.stat()
        if match and entry.is_file() and entry.parent.name == entry.name[:2] and \
                _well_formed(entry, st.st_size, int(match.group(2))):
            found.append((st.st_mtime, entry.name, st.st_size))
        else:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            dropped += 1
    return found, dropped


def _well_formed(path: Path, size: int, length: int) -> bool:
    """The file holds `length` bytes of data and a whole trailer (its sums are checked
    on each read, so a large store starts without reading its data)."""
    if size < length + _FOOTER.size:
        return False
    with open(path, "rb") as f:
        f.seek(size - _FOOTER.size)
        meta_length, table_length, block, magic = _FOOTER.unpack(f.read(_FOOTER.size))
    return magic == MAGIC and block > 0 and table_length == blocksums.table_size(length, block) \
        and size == length + meta_length + table_length + _FOOTER.size


def _read_trailers(paths: list[tuple[str, str]]) -> dict[str, bytes]:
    found = {}
    for name, path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(-_FOOTER.size, os.SEEK_END)
                meta_length, table_length, _, magic = _FOOTER.unpack(f.read(_FOOTER.size))
                if magic == MAGIC and meta_length:
                    f.seek(-_FOOTER.size - table_length - meta_length, os.SEEK_END)
                    found[name] = f.read(meta_length)
        except (OSError, struct.error):  # evicted meanwhile (emptied before it is closed)
            continue
    return found
