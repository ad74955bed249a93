"""The identity generation: a counter the coordinator shares with its serving processes (8 bytes, mmapped).

The coordinator bumps it when it learns that an object's identity changed in S3
(worker/objects.py), before the answer of the request that learned it goes out.
A serving process reads it on every use of an identity it cached (worker/reads.py)
and trusts only those it asked for in the current generation, so no read that
starts after that answer sees the older version, whichever process answers it.
Reading it is one load from shared memory (~100 ns), no system call; changes are
rare (model files are immutable), so one counter for every object is enough.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["Generation"]

SIZE = 8


class Generation:
    """`value`: the generation now; `bump()` (the coordinator's only) starts the next one.

    One writer, page-aligned 8 bytes: a reader sees the old value or the new one. The
    coordinator's bump is written before its answer's bytes reach the socket, and a
    later request reaches a serving process only after them, so it reads the new one.
    """

    __slots__ = ("_map", "_view")

    def __init__(self, path: str, create: bool = False) -> None:
        """Map the counter at `path`; `create`: a new file (0600) at 0, for the coordinator."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL if create else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, access=mmap.ACCESS_WRITE if create else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._view = memoryview(self._map).cast("Q")

    @property
    def value(self) -> int:
        return self._view[0]

    def bump(self) -> None:
        self._view[0] += 1

    def close(self) -> None:
        self._view.release()
        self._map.close()
