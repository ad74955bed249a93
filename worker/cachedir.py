"""What a cache dir keeps besides chunks: its lock and its worker's id.

One worker per cache dir: an exclusive flock on `<cache dir>/lock`, held while it runs.
Two workers on one dir would keep two indexes and two capacities of the same files,
and the second's startup scan would empty the first's `tmp/` under its fills. The
lock goes with the process (the kernel drops it on exit, kill -9 included), so a
restart never finds a stale one.

The worker's id, `<cache dir>/worker-id`, so a restart keeps its chunks' ownership.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import uuid
from pathlib import Path

__all__ = ["lock", "unlock", "worker_id"]

log = logging.getLogger("p2pcache.worker")


def lock(cache_dir: Path) -> int | None:
    """Hold the dir's lock: its fd, or None if the dir cannot hold a file (the worker then
    serves around its disk). OSError EBUSY, naming the holder, if another process holds it."""
    path = Path(cache_dir) / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OSError(errno.EBUSY, f"cache dir {cache_dir} is in use by another worker (pid {holder})") from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def worker_id(cache_dir: Path) -> str:
    """The worker's id, kept in the cache dir so a restart keeps its chunks' ownership."""
    path = Path(cache_dir) / "worker-id"
    if path.exists():
        return path.read_text().strip()
    new = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    except OSError as exc:
        log.warning("cannot keep the worker id in %s (%s): a restart gets a new id", path, exc)
    return new
