"""A read-only, seekable file of one object version, read chunk by chunk through an async client."""

from __future__ import annotations

import asyncio
import io
import operator
import os
import threading
from collections import OrderedDict
from concurrent.futures import CancelledError, Future
from typing import Protocol

from .errors import ObjectChanged
from .objects import ObjectInfo, may_move

__all__ = ["ObjectFile"]


class RangeReader(Protocol):
    closed: bool

    async def file_read(self, info: ObjectInfo, start: int, stop: int) -> bytes: ...  # cancelled by close

    async def reresolve(self, bucket: str, key: str, changed: ObjectChanged) -> ObjectInfo: ...


class ObjectFile(io.RawIOBase):
    """Reads whole chunks on the client's event loop (another thread) and keeps a few.

    A read that continues the previous one, or spans several chunks, starts
    fetching the next `prefetch` chunks too, so a sequential reader has that
    many requests in flight. At most `prefetch + 2` chunks are held.

    If its version is gone before it returned a byte, it moves, once per read, to the version
    that replaced it when that has the same size (`objects.may_move`); any other change fails
    the read with ObjectChanged.

    Threads may share it: each read and seek is whole (one at a time), as with a FileIO, so
    each read returns the bytes at one position. A child process made by fork() cannot wait for
    a chunk: the client's thread did not come with it (RuntimeError, not a hang).
    """

    def __init__(self, client: RangeReader, info: ObjectInfo, loop: asyncio.AbstractEventLoop,
                 chunk_size: int, prefetch: int = 4) -> None:
        super().__init__()
        self.info, self.size = info, info.size
        self._client, self._loop = client, loop
        self._chunk, self._prefetch = chunk_size, prefetch
        self._chunks = -(-info.size // chunk_size)
        self._fetches: OrderedDict[int, Future] = OrderedDict()
        self._pos = 0
        self._last_end = 0  # where the previous read stopped: a read from here is sequential
        self._returned = False  # a read returned a byte: the caller may hold bytes of `info`
        self._lock = threading.Lock()  # a read or a seek at a time: one position, one chunk table
        self._pid = os.getpid()  # the process whose thread runs `loop`
        self._closing = False  # close() began: a read it cut fails as one of a closed file

    @property
    def name(self) -> str:
        return f"s3://{self.info.bucket}/{self.info.key}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        offset = operator.index(offset)  # a float is a TypeError here, as with FileIO
        with self._lock:
            self._checkClosed()
            base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
            if base is None:
                raise ValueError(f"invalid whence {whence}")
            if base + offset < 0:
                raise OSError(22, f"negative seek position {base + offset}")
            self._pos = base + offset
            return self._pos

    def readinto(self, buffer) -> int:
        with self._lock:
            return self._readinto(buffer)

    def _readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        ahead = self._prefetch if self._pos == self._last_end or n > self._chunk else 0
        try:
            self._copy(view[:n], ahead)
        except ObjectChanged as exc:
            if not self._move(exc):
                raise
            self._copy(view[:n], ahead)  # from its start: what the first try copied was the old version's
        self._pos += n
        self._last_end = self._pos
        self._returned = self._returned or n > 0
        return n

    def _copy(self, view: memoryview, ahead: int) -> None:
        """The bytes from `_pos` into `view`, fetching `ahead` chunks past each one read."""
        n, done = len(view), 0
        while done < n:
            index, offset = divmod(self._pos + done, self._chunk)
            for i in range(index, min(index + 1 + ahead, self._chunks)):
                self._start(i)
            self._fetches.move_to_end(index)
            try:
                data = self._result(self._fetches[index])
            except BaseException:
                self._fetches.pop(index).cancel()  # a later read may try again
                raise
            take = min(len(data) - offset, n - done)
            view[done:done + take] = memoryview(data)[offset:offset + take]
            done += take
            self._trim(range(index, index + 1 + ahead))

    def _result(self, fetch: Future):
        """What `fetch` (a chunk's bytes, a version) gives; ValueError if the client was closed before
        it came (the client cancelled it as it closed, or it may never come: nothing is waited for
        once closed)."""
        if not fetch.done():
            if self._client.closed:
                raise self._closed()
            self._check_process()
        try:
            return fetch.result()
        except CancelledError:
            if self._client.closed:
                raise self._closed() from None
            if self._closing:  # closed on another thread while this read waited
                raise ValueError("I/O operation on closed file.") from None
            raise

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(f"reading {self.name}: the file was opened in process {self._pid}, before a "
                               "fork(); its client's thread is not in this process: open it here")

    def _closed(self) -> ValueError:
        return ValueError(f"reading {self.name}: the client is closed")

    def _move(self, changed: ObjectChanged) -> bool:
        """Whether the file moved to the version that replaced `info` (see `objects.may_move`)."""
        if self._returned:  # no successor would do: not worth a HEAD
            return False
        if self._client.closed:
            raise self._closed()
        new = self._result(asyncio.run_coroutine_threadsafe(
            self._client.reresolve(self.info.bucket, self.info.key, changed), self._loop))
        if not may_move(self.info, new, self._returned):
            return False
        for future in self._fetches.values():  # all pinned to the version that is gone
            future.cancel()
        self._fetches.clear()
        self.info = new
        return True

    def readall(self) -> bytes:
        with self._lock:
            buf = bytearray(max(0, self.size - self._pos))
            n = self._readinto(buf)
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def close(self) -> None:
        self._closing = True
        for future in list(self._fetches.values()):  # first: a read waiting on one holds the lock
            future.cancel()
        with self._lock:
            for future in self._fetches.values():
                future.cancel()
            self._fetches.clear()
            super().close()

    def _start(self, index: int) -> None:
        if index in self._fetches:
            return
        if self._client.closed:
            raise self._closed()
        self._check_process()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # waiting here would block the loop that must do the reading
            raise RuntimeError("an ObjectFile must be read from a thread other than its client's event loop "
                               "(use asyncio.to_thread, or SyncClient)")
        start = index * self._chunk
        stop = min(self.size, start + self._chunk)
        self._fetches[index] = asyncio.run_coroutine_threadsafe(
            self._client.file_read(self.info, start, stop), self._loop)

    def _trim(self, keep: range) -> None:
        """Drop the least recently used chunks outside `keep` (the one being read and those ahead)."""
        for index in list(self._fetches):
            if len(self._fetches) <= self._prefetch + 2:
                return
            if index not in keep:
                self._fetches.pop(index).cancel()
