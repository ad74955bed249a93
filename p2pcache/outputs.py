"""Where `Client.download` writes: the file a path names, in place or through a temp file renamed in."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import stat
import uuid
from typing import Iterator, NamedTuple

__all__ = ["Output", "output_of", "temp_path", "temp_stem", "open_in_place", "opened_in_place", "write_all",
           "outlast", "undo_open", "naming", "TEMP_NAME"]

TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.part")  # the temp file of NAME (its stem), next to it
NAME_MAX = 255  # bytes in a file name (Linux, and most file systems)
_TEMP_EXTRA = len(".") + len(".12345678.part")
FIFO_POLL = 0.05  # seconds between tries to open a FIFO that has no reader yet


class Output(NamedTuple):
    path: str  # the file to write: a symlink's target, resolved
    in_place: bool  # an existing device or FIFO: opened and written in order, never replaced


def output_of(path: str) -> Output:
    """The file `download` writes for `path` (blocking: run it in a thread).

    As `curl -o`: an existing character or block device or a FIFO is written in place (`/dev/null`,
    `/dev/stdout`, a named pipe), not replaced by a regular file; a symlink is followed, so its target
    is replaced and the link stays; a directory is refused, naming `path`. Anything else (a regular
    file, nothing yet) is written to a temp file next to it and renamed in.
    """
    try:
        mode = os.stat(path).st_mode  # follows symlinks, `/proc/self/fd/N` included
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (or a dangling link)
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if mode is not None and not stat.S_ISREG(mode):
        return Output(path, True)
    return Output(os.path.realpath(path) if os.path.islink(path) else path, False)


def temp_stem(name: str) -> str:
    """The NAME part of `name`'s temp file: `name` itself, cut short (on a character) if
    `.NAME.<8 hex>.part` would not fit in a file name."""
    raw = os.fsencode(name)
    if len(raw) + _TEMP_EXTRA <= NAME_MAX:
        return name
    cut = NAME_MAX - _TEMP_EXTRA
    while cut and (raw[cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
        cut -= 1
    return os.fsdecode(raw[:cut])


def temp_path(path: str) -> str:
    """A fresh temp file's path for `path`, in its directory (so that it can be renamed over it)."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{temp_stem(name)}.{uuid.uuid4().hex[:8]}.part")


def open_in_place(path: str) -> int | None:
    """`path`, a device or FIFO, opened for writing as it is (blocking: run it in a thread); None
    while a FIFO has no reader (the open does not wait, so that it can be cancelled)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO and stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        raise OSError(exc.errno, exc.strerror, path) from exc
    os.set_blocking(fd, True)
    return fd


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data` at `fd`'s position (a device or FIFO: writes may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def outlast(call: asyncio.Future) -> None:
    """Wait until `call` (running in a thread) has ended, however often the caller is cancelled
    meanwhile; the caller re-raises its own cancellation. Its outcome is left in `call`."""
    while not call.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(call)


async def undo_open(opening: asyncio.Future, remove: str | None = None) -> None:
    """Once `opening` (an open running in a thread, its caller cancelled) has ended: close the fd it
    gave, and remove the file `remove` it made. It returns only then, however often it is cancelled,
    so a caller that stops (a process that exits as soon as its download was cancelled) leaves no
    file behind."""
    await outlast(opening)
    if opening.cancelled() or opening.exception() is not None or (fd := opening.result()) is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
        if remove is not None:
            os.unlink(remove)


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """An OSError that names no file (a write or fsync of an fd, EPIPE) is raised naming `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc


async def opened_in_place(path: str) -> int:
    """`path`, a device or FIFO, open for writing: once a FIFO has a reader (polled, so cancellable)."""
    loop = asyncio.get_running_loop()
    while True:
        opening = loop.run_in_executor(None, open_in_place, path)
        try:
            fd = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the open ends in its thread: close what it opened then
            await undo_open(opening)
            raise
        if fd is not None:
            return fd
        await asyncio.sleep(FIFO_POLL)
