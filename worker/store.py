"""Chunks on local disk: complete-then-rename writes, scan-resistant eviction under a capacity.

Invariants: a file under `chunks/` is always a complete chunk (it is written
under `tmp/` and renamed in); no byte of it leaves the store unchecked; `used +
reserved <= capacity` at every await point; a chunk being read (pinned, here or in a
serving process: worker/sharedpins.py), or filled for a read that holds its name (`held`),
is never evicted, and an evicted chunk's blocks are freed as its file is unlinked. Which
chunk goes first is the eviction policy's choice (worker/eviction.py, S3-FIFO).

A chunk is renamed in without an fsync: the kernel writes it back on its own
schedule. A process that dies loses nothing (the page cache outlives it); a
power cut may leave a renamed chunk short, or with blocks that never reached
the disk. The startup scan drops a file whose size or trailer is wrong, and the
checksums refuse a block that is wrong on its first read, so such a chunk is
refilled, never served. The fsync cost each cold read ~20% of its throughput
(docs/benchmarks.md, "The fill path").

A chunk file's format, and the checked reads of it, are worker/chunkfile.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, ContextManager

from p2pcache import blocksums
from p2pcache.errors import Busy, CorruptChunk

from .blocking import run, unlink_all
from .chunkfile import (ChunkFile, data_length, open_chunk, read_pieces, read_trailers, read_whole, trailer,
                        trailer_size, well_formed)
from .eviction import DEFAULT, POLICIES, Policy
from .pins import Pins
from .sharedpins import Claims, evicted
from .storescan import scan

__all__ = ["ChunkStore", "ChunkWriter"]

log = logging.getLogger("p2pcache.store")


class ChunkWriter:
    def __init__(self, file) -> None:
        self._file = file
        self.written = 0
        self.sums = blocksums.Summer()

    async def write(self, data: bytes) -> None:
        self.sums.update(data)
        await run(self._file.write, data)
        self.written += len(data)


class ChunkStore:
    def __init__(self, root: Path, capacity: int, min_free: int = 0, open_files: int = 256,
                 policy: Callable[[int], Policy] = POLICIES[DEFAULT],
                 kept: Callable[[str], bool] = lambda name: False,
                 before_late_load: Callable[[], Awaitable[None]] | None = None,
                 guard: Callable[[], None] = lambda: None) -> None:
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
        self._guard = guard  # blocking, before each new chunk file: OSError if the dir is not ours
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
        return await run(read_trailers, [(n, self._path(n)) for n in names if n in self._chunks])

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
        """Rebuild the index from disk: drop temp files and anything malformed (an entry that
        cannot even be looked at is dropped, or left out of the index: never the whole scan)."""
        found, dropped, skipped = await run(scan, self.root, well_formed)
        for _, name, size in sorted(found):
            self._chunks[name] = size
            self._policy.restore(name, size)
            self.used += size
        self._loaded = True
        if dropped:
            log.warning("dropped %d incomplete or malformed files from %s", dropped, self.root)
        if skipped:
            log.warning("left %d entries of %s out of the index, they cannot be read or removed (%s): "
                        "remove them by hand", len(skipped), self.root / "chunks", skipped[0])
        victims = []
        while self.used > self.capacity and (victim := self._pick_victim()):
            victims.append(self._drop(victim))
        await run(_evict_all, victims)
        log.info("store %s: %d chunks, %d bytes of %d", self.root, len(self), self.used, self.capacity)
        if self.used > self.capacity:  # only kept chunks are left: no room for any other
            log.warning("store %s: kept (pinned) chunks hold %d bytes, over its capacity of %d: no new chunk "
                        "is cached until some are unpinned (p2pcache unpin) or --capacity is raised",
                        self.root, self._kept_bytes(), self.capacity)

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

    def held(self, name: str) -> ContextManager[None]:
        """Keep `name` from eviction until the block ends, whether or not it is here yet: a read
        holds the chunk it waits for, so the chunk is still here when its fill ends."""
        return self._pins.holding(name, None)

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
                async for _ in read_pieces(file, 0, data_length(name)):
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
        total = size + trailer_size(size, meta)
        await self._reserve(total)
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            file = await run(_create, tmp, self._guard)
            try:
                writer = ChunkWriter(file)
                yield writer
                if writer.written != size:
                    raise ValueError(f"chunk {name}: wrote {writer.written} of {size} bytes")
                await run(_seal, file, trailer(meta, writer.sums.table()), tmp, self.path(name))
            finally:
                await run(file.close)
        except BaseException:
            self._reserved -= total
            await asyncio.shield(run(unlink_all, [tmp]))
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
                await run(_evict_all, victims)
                raise _full(self._kept_bytes(), size, self.capacity)
            victims.append(self._drop(victim))
        self._reserved += size
        try:
            await run(_evict_all, victims)
            if self.min_free:
                await self._keep_free_floor()
        except BaseException:  # raised before `writing` could give the reservation back
            self._reserved -= size
            raise

    async def _keep_free_floor(self) -> None:
        """Make room above --min-free for every write reserved: the disk's free space does
        not count them until they are written, and fills write together."""
        while (await run(_free, self.root)) - self._reserved < self.min_free:
            victim = self._pick_victim()
            if victim is None:
                raise Busy(f"disk under {self.root} is below its free-space floor of {self.min_free} bytes")
            await run(_evict_all, [self._drop(victim)])

    def _kept_bytes(self) -> int:
        return sum(size for name, size in self._chunks.items() if self._kept(name))

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


def _full(kept: int, size: int, capacity: int) -> Busy:
    """No room for `size` more bytes, no victim left: say the pins if they alone leave no room."""
    if kept + size > capacity:
        return Busy(f"cache full: kept (pinned) chunks hold {kept} of its {capacity} bytes, no room for a "
                    f"{size}-byte chunk: unpin some (p2pcache unpin) or raise --capacity")
    if not kept:
        return Busy("cache full: every cached chunk is being read")
    return Busy(f"cache full: every cached chunk is being read or kept by a pin ({kept} of {capacity} bytes kept)")


def _free(root: Path) -> int:
    """Free bytes on the cache dir's volume; the dir is made again if it was removed under us."""
    try:
        return shutil.disk_usage(root).free
    except FileNotFoundError:
        _make_again(root / "tmp")
        return shutil.disk_usage(root).free


def _create(tmp: Path, guard: Callable[[], None]):
    """A new temp file, if `guard` finds the dir still ours; `tmp/` (or the whole cache dir) is made
    again if it was removed under us."""
    guard()
    try:
        return open(tmp, "wb")
    except FileNotFoundError:
        _make_again(tmp.parent)
        return open(tmp, "wb")


def _make_again(tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    log.warning("%s was missing: made again", tmp)


def _seal(file, end: bytes, tmp: Path, final: Path) -> None:
    file.write(end)
    file.flush()  # no fsync: see the module's docstring
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)


def _evict_all(victims: list[tuple[Path, int | None]]) -> None:
    """Unlink each victim's file, then free its blocks and let go of its lock (so no serving
    process begins to read it between the two, and one that still has it open, unread, does not
    keep its blocks on disk)."""
    try:
        unlink_all([path for path, _ in victims])
    finally:
        for _, fd in victims:
            if fd is not None:
                evicted(fd)

