"""Chunks on local disk: complete-then-rename writes, LRU eviction under a capacity.

Invariants: a file under `chunks/` is always a complete, checked chunk (it is
written under `tmp/`, fsynced and renamed in); `used + reserved <= capacity`
at every await point; a chunk being read (pinned) is never evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Iterator

from p2pcache.errors import Busy

__all__ = ["ChunkStore", "ChunkWriter", "pread", "read_pieces", "PIECE"]

log = logging.getLogger("p2pcache.store")
_NAME = re.compile(r"[0-9a-f]{40}-(\d+)-(\d+)")
PIECE = 256 << 10  # per stream in flight: bounds memory under many readers (benchmarks: memory)


async def _run(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class ChunkWriter:
    def __init__(self, file) -> None:
        self._file = file
        self.written = 0

    async def write(self, data: bytes) -> None:
        await _run(self._file.write, data)
        self.written += len(data)


class ChunkStore:
    def __init__(self, root: Path, capacity: int, min_free: int = 0, open_files: int = 256) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self.min_free = min_free
        self.used = 0
        self._reserved = 0
        self._chunks: OrderedDict[str, int] = OrderedDict()  # name -> size, oldest first
        self._pins: dict[str, int] = {}
        # Open files of recently read chunks: an open() per request costs more than
        # the read itself. Only unpinned entries are closed, so a reader's fd stays valid.
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._open_files = open_files
        self._dir = str(self.root / "chunks")

    def __contains__(self, name: str) -> bool:
        return name in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def path(self, name: str) -> Path:
        return Path(self._path(name))

    def _path(self, name: str) -> str:
        return f"{self._dir}/{name[:2]}/{name}"

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    async def load(self) -> None:
        """Rebuild the index from disk: drop temp files and anything malformed."""
        found, dropped = await _run(_scan, self.root)
        for _, name, size in sorted(found):
            self._chunks[name] = size
            self.used += size
        if dropped:
            log.warning("dropped %d incomplete or malformed files from %s", dropped, self.root)
        victims = []
        while self.used > self.capacity and (victim := self._pick_victim()):
            victims.append(self._drop(victim))
        await _run(_unlink_all, victims)
        log.info("store %s: %d chunks, %d bytes of %d", self.root, len(self), self.used, self.capacity)

    @contextlib.contextmanager
    def pinned(self, name: str) -> Iterator[int | None]:
        """An open fd of the chunk, safe from eviction until the block ends; None if absent."""
        if name not in self._chunks:
            yield None
            return
        self._chunks.move_to_end(name)
        self._pins[name] = self._pins.get(name, 0) + 1
        try:
            yield self._fd(name)
        finally:
            self._pins[name] -= 1
            if not self._pins[name]:
                del self._pins[name]

    async def read(self, name: str, offset: int, length: int) -> bytearray | None:
        """A small read in one go, or None if the chunk is not here."""
        with self.pinned(name) as fd:
            return None if fd is None else await pread(fd, offset, length)

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        fd = self._fds[name] = os.open(self._path(name), os.O_RDONLY)
        if len(self._fds) > self._open_files:
            for old in [n for n in self._fds if n not in self._pins][: len(self._fds) - self._open_files]:
                os.close(self._fds.pop(old))
        return fd

    @contextlib.asynccontextmanager
    async def writing(self, name: str, size: int) -> AsyncIterator[ChunkWriter]:
        """Write a chunk: visible only if the block ends cleanly with `size` bytes written."""
        await self._reserve(size)
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            file = await _run(open, tmp, "wb")
            try:
                writer = ChunkWriter(file)
                yield writer
                if writer.written != size:
                    raise ValueError(f"chunk {name}: wrote {writer.written} of {size} bytes")
                await _run(_seal, file, tmp, self.path(name))
            finally:
                await _run(file.close)
        except BaseException:
            self._reserved -= size
            await asyncio.shield(_run(_unlink_all, [tmp]))
            raise
        self._reserved -= size
        self._chunks[name] = size
        self.used += size

    async def _reserve(self, size: int) -> None:
        if size > self.capacity:
            raise Busy(f"a {size}-byte chunk cannot fit a {self.capacity}-byte cache")
        victims = []
        # Synchronous up to the reservation, so concurrent fills cannot overcommit.
        while self.used + self._reserved + size > self.capacity:
            victim = self._pick_victim()
            if victim is None:
                await _run(_unlink_all, victims)
                raise Busy("cache full: every cached chunk is being read")
            victims.append(self._drop(victim))
        self._reserved += size
        await _run(_unlink_all, victims)
        if self.min_free:
            await self._keep_free_floor(size)

    async def _keep_free_floor(self, size: int) -> None:
        while (await _run(shutil.disk_usage, self.root)).free - size < self.min_free:
            victim = self._pick_victim()
            if victim is None:
                self._reserved -= size
                raise Busy(f"disk under {self.root} is below its free-space floor of {self.min_free} bytes")
            await _run(_unlink_all, [self._drop(victim)])

    def _pick_victim(self) -> str | None:
        return next((n for n in self._chunks if n not in self._pins), None)

    def _drop(self, name: str) -> Path:
        """Forget an unpinned chunk; the caller unlinks the returned path."""
        self.used -= self._chunks.pop(name)
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        return self.path(name)


async def pread(fd: int, offset: int, n: int) -> bytearray:
    """`n` bytes at `offset`: from the page cache on the loop (RWF_NOWAIT, no
    executor hop); whatever would block on the disk is read in the executor."""
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        got = 0
    while got < n:
        more = await _run(os.preadv, fd, [memoryview(buf)[got:]], offset + got)
        if not more:
            raise OSError(f"short read at {offset + got} of fd {fd}")
        got += more
    return buf


async def read_pieces(fd: int, offset: int, length: int, piece: int = PIECE) -> AsyncIterator[bytes]:
    """Yield `length` bytes of an open file from `offset`, in pieces of at most `piece`."""
    end = offset + length
    while offset < end:
        n = min(piece, end - offset)
        yield await pread(fd, offset, n)
        offset += n


def _seal(file, tmp: Path, final: Path) -> None:
    file.flush()
    os.fsync(file.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _scan(root: Path) -> tuple[list[tuple[float, str, int]], int]:
    (root / "chunks").mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    found, dropped = [], 0
    for entry in (root / "chunks").glob("*/*"):
        match = _NAME.fullmatch(entry.name)
        st = entry.stat()
        if match and entry.is_file() and st.st_size == int(match.group(2)) and entry.parent.name == entry.name[:2]:
            found.append((st.st_mtime, entry.name, st.st_size))
        else:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            dropped += 1
    return found, dropped
