"""Pins across a worker's processes: a chunk file a serving process reads is not evicted, and
an evicted one gives its disk blocks back at once, whoever still has it open.

A serving process reading a chunk file holds a shared flock on it (`share`: one per process,
however many of its reads hold the file). The coordinator evicts a chunk only with an
exclusive flock on its file (`Claims`), held until the file is unlinked and emptied
(`evicted`): so a file is either being read (and stays, counted in the capacity, as a chunk
the coordinator reads itself is pinned) or gone, its blocks freed even if a serving process
keeps it in its cache of open files (which closes it within a second: worker/chunkfiles.py).
A slow reader thus cannot keep evicted chunks on disk, and the free-space floor sees the room
an eviction makes at once. A shared lock won on a file the coordinator unlinked between the
serving process's open and its lock is on a file with no link left: `share` lets it go and
says the chunk is not here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

__all__ = ["share", "unshare", "Claims", "evicted"]


def share(fd: int) -> bool:
    """Take a shared lock on an open chunk file; False (no lock held) if the coordinator is
    evicting it or has unlinked it. A file system without flock pins nothing (True)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    if os.fstat(fd).st_nlink == 0:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    return True


def unshare(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


class Claims:
    """The coordinator's exclusive locks on the chunk files it is choosing victims among."""

    def __init__(self) -> None:
        self._fds: dict[str, int | None] = {}  # name -> the locked fd (None: no file to lock)

    def claim(self, name: str, path: str) -> bool:
        """Whether `name` may be evicted (no serving process reads it); if so, its file is
        locked until `take` or `keep_only` lets it go. Synchronous: a serving process that
        opens it meanwhile fails to share it and leaves the chunk to the coordinator."""
        if name in self._fds:
            return True
        try:
            fd = _open(path)
        except OSError:  # gone or unreadable: nothing reads it
            self._fds[name] = None
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # no flock here: nothing can pin it either
            os.close(fd)
            fd = None
        self._fds[name] = fd
        return True

    def keep_only(self, name: str | None) -> None:
        """Let go of every claim but `name`'s (the victim chosen)."""
        for other in [n for n in self._fds if n != name]:
            fd = self._fds.pop(other)
            if fd is not None:
                os.close(fd)

    def take(self, name: str) -> int | None:
        """The locked fd of `name`'s file, for `evicted` once the file is unlinked."""
        return self._fds.pop(name, None)


def evicted(fd: int) -> None:
    """Free the blocks of a claimed file that is unlinked (no read holds it; a serving process
    may still have it open, unread), and let go of its lock. Blocking."""
    try:
        with contextlib.suppress(OSError):  # opened read-only (not the worker's file): freed when closed
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _open(path: str) -> int:
    """The file opened to be locked, and emptied once unlinked (read-only if it cannot be written)."""
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
