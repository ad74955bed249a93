"""A serving process's open chunk files: opened by their immutable names, closed once evicted.

The coordinator owns the store (worker/store.py): it renames complete chunks
in and unlinks evicted ones. A file unlinked while open stays readable, so a
reader here needs no pin from the coordinator; but an open fd keeps an evicted
file's blocks on disk, so an fd is closed once its path is gone or names
another file (checked by an open at most every RECHECK seconds, and by `sweep`
every second), as soon as no reader here holds it. Reading a file evicted a
moment ago is harmless: a name always means the same bytes, and they are checked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

from .store import ChunkFile, open_chunk

__all__ = ["ChunkFiles"]

RECHECK = 0.1  # seconds an open file is taken to still be the one at its path (a stat per read costs ~2 us)


class ChunkFiles:
    def __init__(self, root: Path, max_open: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = str(Path(root) / "chunks")
        # name -> (file, inode, when the path last held that inode)
        self._files: OrderedDict[str, tuple[ChunkFile, int, float]] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._retired: dict[str, list[ChunkFile]] = {}  # gone while read: closed when unpinned
        self._max_open = max_open
        self._clock = clock

    def __len__(self) -> int:
        """Open files."""
        return len(self._files) + sum(map(len, self._retired.values()))

    def path(self, name: str) -> str:
        return f"{self._dir}/{name[:2]}/{name}"

    @contextlib.contextmanager
    def pinned(self, name: str) -> Iterator[ChunkFile | None]:
        """The chunk's open file (None if it is not on disk), kept open until the block ends.

        OSError if it cannot be opened; CorruptChunk if its trailer is malformed.
        """
        file = self._open(name)
        if file is None:
            yield None
            return
        self._pins[name] = self._pins.get(name, 0) + 1
        try:
            yield file
        finally:
            self._pins[name] -= 1
            if not self._pins[name]:
                del self._pins[name]
                for retired in self._retired.pop(name, ()):
                    os.close(retired.fd)

    def now(self, name: str) -> ChunkFile | None:
        """The chunk's open file for a read that ends before the next await, when nothing here
        can close it (no pin needed); None if it is not on disk. Raises as `pinned` does."""
        return self._open(name)

    def _open(self, name: str) -> ChunkFile | None:
        entry = self._files.get(name)
        now = self._clock()
        if entry is not None and now - entry[2] < RECHECK:
            self._files.move_to_end(name)
            return entry[0]
        path = self.path(name)
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            self._retire(name)
            return None
        if entry is not None and entry[1] == inode:
            self._files[name] = (entry[0], inode, now)
            self._files.move_to_end(name)
            return entry[0]
        self._retire(name)
        try:
            file = open_chunk(path, name)
        except FileNotFoundError:  # evicted since the stat
            return None
        self._files[name] = (file, os.fstat(file.fd).st_ino, now)
        while len(self._files) > self._max_open:
            self._retire(next(iter(self._files)))
        return file

    def _retire(self, name: str) -> None:
        entry = self._files.pop(name, None)
        if entry is None:
            return
        if name in self._pins:
            self._retired.setdefault(name, []).append(entry[0])
        else:
            os.close(entry[0].fd)

    def snapshot(self) -> list[tuple[str, int]]:
        """The open files' names and inodes, for `stale` to check off the loop."""
        return [(name, inode) for name, (_, inode, _) in self._files.items()]

    def stale(self, snapshot: list[tuple[str, int]]) -> list[str]:
        """Names whose open file is no longer the one at their path (blocking: run it off the loop)."""
        gone = []
        for name, inode in snapshot:
            try:
                if os.stat(self.path(name)).st_ino != inode:
                    gone.append(name)
            except FileNotFoundError:
                gone.append(name)
        return gone

    def sweep(self, names: list[str]) -> None:
        """Close the files `stale` found (a file reopened meanwhile is only reopened again)."""
        for name in names:
            self._retire(name)

    def close(self) -> None:
        for file, *_ in self._files.values():
            os.close(file.fd)
        for files in self._retired.values():
            for file in files:
                os.close(file.fd)
        self._files.clear()
        self._retired.clear()
