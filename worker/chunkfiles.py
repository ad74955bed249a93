"""A serving process's open chunk files: opened by their immutable names, closed once evicted.

The coordinator owns the store (worker/store.py): it renames complete chunks
in and unlinks evicted ones. A file read here (`pinned`: a read that may last as
long as its reader is slow) is pinned against eviction across processes
(worker/sharedpins.py); one that is only open here (`now`, or cached between
reads) is not, and an evicted one is emptied as it is unlinked. An fd is closed
once its path is gone or names another file (checked on every open and by
`sweep`), as soon as no reader here holds it. Checked on every open, not trusted
for a while: a chunk found corrupt is dropped and refilled under the same name
(a reader that has the old file open finishes with it), and a process that went
on reading the old file would fail its readers (and send a peer that copies it
back to S3).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import ContextManager

from .pins import Pins
from .chunkfile import ChunkFile, open_chunk
from .sharedpins import share, unshare

__all__ = ["ChunkFiles"]


class ChunkFiles:
    def __init__(self, root: Path, max_open: int = 256) -> None:
        self._dir = str(Path(root) / "chunks")
        self._files: OrderedDict[str, tuple[ChunkFile, int]] = OrderedDict()  # name -> (file, inode)
        self._pins = Pins(self._released)
        self._retired: dict[str, list[ChunkFile]] = {}  # gone while read: closed when unpinned
        self._shared: set[int] = set()  # fds pinned against eviction: let go of when unpinned
        self._max_open = max_open

    def __len__(self) -> int:
        """Open files."""
        return len(self._files) + sum(map(len, self._retired.values()))

    def path(self, name: str) -> str:
        return f"{self._dir}/{name[:2]}/{name}"

    def pinned(self, name: str) -> ContextManager[ChunkFile | None]:
        """The chunk's open file, kept open and not evicted until the block ends; None if it is
        not on disk, or being evicted.

        OSError if it cannot be opened; CorruptChunk if its trailer is malformed.
        """
        file = self._open(name)
        if file is not None and file.fd not in self._shared:
            if not share(file.fd):
                self._retire(name)
                return contextlib.nullcontext()
            self._shared.add(file.fd)
        return contextlib.nullcontext() if file is None else self._pins.holding(name, file)

    def _released(self, name: str) -> None:
        entry = self._files.get(name)
        if entry is not None and entry[0].fd in self._shared:
            self._shared.discard(entry[0].fd)
            unshare(entry[0].fd)
        for retired in self._retired.pop(name, ()):
            self._shared.discard(retired.fd)
            os.close(retired.fd)

    def now(self, name: str) -> ChunkFile | None:
        """The chunk's open file for a read that ends before the next await, when nothing here
        can close it (no pin; if the coordinator evicts it meanwhile, the read comes up short);
        None if it is not on disk. Raises as `pinned` does."""
        return self._open(name)

    def _open(self, name: str) -> ChunkFile | None:
        path = self.path(name)
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            self._retire(name)
            return None
        entry = self._files.get(name)
        if entry is not None and entry[1] == inode:
            self._files.move_to_end(name)
            return entry[0]
        self._retire(name)
        try:
            file = open_chunk(path, name)
        except FileNotFoundError:  # evicted since the stat
            return None
        self._files[name] = (file, os.fstat(file.fd).st_ino)
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
        return [(name, inode) for name, (_, inode) in self._files.items()]

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
        for file, _ in self._files.values():
            os.close(file.fd)
        for files in self._retired.values():
            for file in files:
                os.close(file.fd)
        self._files.clear()
        self._retired.clear()
        self._shared.clear()
