"""What a cache dir keeps besides chunks: its lock and its worker's id.

One worker per cache dir: an exclusive flock on `<cache dir>/lock`, held while it runs.
Two workers on one dir would keep two indexes and two capacities of the same files,
and the second's startup scan would empty the first's `tmp/` under its fills. The
lock goes with the process (the kernel drops it on exit, kill -9 included), so a
restart never finds a stale one.

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
import uuid
from pathlib import Path

from p2pcache.members import InvalidRegistration, check_id

__all__ = ["lock", "unlock", "worker_id", "BadWorkerId"]

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"worker-id.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(new + "\n")
        os.replace(tmp, path)  # never a half-written id for the next start to refuse
    except OSError as exc:
        log.warning("cannot keep the worker id in %s (%s): a restart gets a new id", path, exc)
    return new
