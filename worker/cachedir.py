"""What a cache dir keeps besides chunks: its lock and its worker's id.

One worker per cache dir: an exclusive flock on `<cache dir>/lock`, held while it runs.
Two workers on one dir would keep two indexes and two capacities of the same files,
and the second's startup scan would empty the first's `tmp/` under its fills. The
lock goes with the process (the kernel drops it on exit, kill -9 included), so a
restart never finds a stale one. Before each new chunk file the worker checks that it still
holds the dir's lock file (`DirLock.check`): a cache dir removed under it (the store makes it
again) is locked again and its id written back, so the dir made again is guarded as the
first was and a restart keeps the id; one another worker locked first is not written into.
A cache dir that is a file, or under one, can never be locked: that is a configuration error
(the worker does not start), not a failing disk (which it serves around).

The worker's id, `<cache dir>/worker-id`, so a restart keeps its chunks' ownership. A file
that does not hold an id the master would take (`p2pcache.members.check_id`) stops the
worker before it registers, naming the file: an id read from it goes into the master's
URLs, where `x/../w0` would be another worker's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from p2pcache.config import not_a_dir
from p2pcache.members import InvalidRegistration, check_id

__all__ = ["lock", "unlock", "worker_id", "BadWorkerId", "DirLock"]

log = logging.getLogger("p2pcache.worker")


def lock(cache_dir: Path) -> int | None:
    """Hold the dir's lock: its fd, or None if the dir cannot hold a file (a failing disk: the
    worker then serves around it). OSError EBUSY, naming the holder, if another process holds it;
    OSError ENOTDIR, naming the file, if the dir is a file or under one: it can never be a dir."""
    path = Path(cache_dir) / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError):  # mkdir: the path, or a dir above it, is something else
        if (why := not_a_dir("--cache-dir", Path(cache_dir))) is not None:
            raise OSError(errno.ENOTDIR, why) from None
        return None
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


class DirLock:
    """A running worker's hold on its cache dir: the lock's fd, taken again if the dir was made again."""

    def __init__(self, cache_dir: Path, fd: int | None, worker: str) -> None:
        self.cache_dir, self.fd, self.worker = Path(cache_dir), fd, worker
        self._mutex = threading.Lock()  # fills make the dir again from several threads at once

    def check(self) -> None:
        """Blocking: if the dir's lock file is not the one held (the dir was removed), lock the new
        one and write the id back. OSError EBUSY if another worker holds it: this one's fills fail
        (its reads go around the disk, saying why) rather than share the dir."""
        with self._mutex:
            if self.fd is not None and _same_file(self.fd, self.cache_dir / "lock"):
                return
            fd = lock(self.cache_dir)  # OSError ENOTDIR if a file took its place: this fill fails and says so
            if fd is None:  # the dir cannot hold a file: the store's own write fails and says so
                return
            unlock(self.fd)
            self.fd = fd
            _keep_id(self.cache_dir / "worker-id", self.worker)
            log.warning("cache dir %s was removed under this worker: locked again, worker id %s written back",
                        self.cache_dir, self.worker)

    def release(self) -> None:
        with self._mutex:
            unlock(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


class BadWorkerId(ValueError):
    """The cache dir's worker-id file cannot be read, or holds no valid id: the worker does not start."""


def worker_id(cache_dir: Path) -> str:
    """The worker's id, kept in the cache dir so a restart keeps its chunks' ownership; BadWorkerId
    if the file is there but unreadable or not an id."""
    path = Path(cache_dir) / "worker-id"
    fix = "remove it for a new id, or give --id"
    try:
        worker = path.read_bytes().decode().strip()
    except (FileNotFoundError, NotADirectoryError):  # none yet (or no cache dir: not kept, below)
        return _new_id(path)
    except UnicodeDecodeError:
        raise BadWorkerId(f"worker id file {path} is not UTF-8 text: {fix}") from None
    except OSError as exc:
        raise BadWorkerId(f"cannot read the worker id file {path}: {exc.strerror or exc}: {fix}") from None
    try:
        check_id(worker)
    except InvalidRegistration as exc:
        shown = worker if len(worker) <= 40 else worker[:40] + "..."
        raise BadWorkerId(f"worker id file {path} holds {shown!r}, not an id ({exc}): {fix}") from None
    return worker


def _new_id(path: Path) -> str:
    new = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    try:
        check_id(new)
    except InvalidRegistration:  # a host name with characters an id cannot have
        new = f"worker-{uuid.uuid4().hex[:12]}"
    _keep_id(path, new)
    return new


def _keep_id(path: Path, worker: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"worker-id.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(worker + "\n")
        os.replace(tmp, path)  # never a half-written id for the next start to refuse
    except OSError as exc:
        log.warning("cannot keep the worker id in %s (%s): a restart gets a new id", path, exc)
