"""A chunk file: its format, opening it, and reading checked bytes from it.

A chunk file is the chunk's bytes, then a trailer: metadata (what the chunk
is, so the worker can compute who should hold it), the checksums of its
blocks (p2pcache.blocksums), their lengths and MAGIC. Data starts at offset
0, so reads need no offset arithmetic; the trailer is written with the data
and renamed in with it, so the two never disagree. Every read is of whole
blocks, checked against the table before a byte leaves the store: a mismatch
raises CorruptChunk, and the caller drops the chunk (`discard`).
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import AsyncIterator, Callable

from p2pcache import blocksums
from p2pcache.buffers import new_bytearray
from p2pcache.errors import CorruptChunk
from p2pcache.objects import ChunkId

from .blocking import run

__all__ = ["ChunkFile", "pread", "read_pieces", "read_whole", "read_now", "open_chunk", "trailer",
           "trailer_size", "data_length", "well_formed", "read_trailers", "PIECE", "MAGIC"]

PIECE = 256 << 10  # per stream in flight: bounds memory under many readers (benchmarks: memory)
MAGIC = b"P2P2"  # b"P2PC" files (no checksums) are dropped by the startup scan
_FOOTER = struct.Struct(">III4s")  # metadata length, table length, block size, MAGIC


class ChunkFile:
    """An open chunk file and its block checksums."""

    __slots__ = ("fd", "name", "table", "block")

    def __init__(self, fd: int, name: str, table: bytes, block: int) -> None:
        self.fd, self.name, self.table, self.block = fd, name, table, block


def trailer_size(length: int, meta: bytes) -> int:
    """The bytes a chunk of `length` bytes described by `meta` takes on disk after its data."""
    return len(meta) + blocksums.table_size(length) + _FOOTER.size


def trailer(meta: bytes, table: bytes) -> bytes:
    """What follows a chunk's data in its file: `meta`, the block checksums, the footer."""
    return meta + table + _FOOTER.pack(len(meta), len(table), blocksums.BLOCK, MAGIC)


class ShortRead(OSError):
    """The file ends before the bytes asked for: it was cut since it was opened."""


async def pread(fd: int, offset: int, n: int) -> bytearray:
    """`n` bytes at `offset`: from the page cache on the loop (RWF_NOWAIT, no
    executor hop); whatever would block on the disk is read in the executor."""
    buf = new_bytearray(n)  # every byte read below, or OSError
    got = _cached(fd, buf, offset)
    while got < n:
        view = memoryview(buf)[got:]
        try:
            more = await run(os.preadv, fd, [view], offset + got)
        finally:
            # Now, not when the executor's thread drops its arguments (it may not have yet):
            # while a view exists, the caller's trim of `buf` is a BufferError.
            view.release()
        if not more:
            raise ShortRead(f"short read at {offset + got} of fd {fd}")
        got += more
    return buf


async def _blocks(file: ChunkFile, start: int, n: int) -> bytearray:
    """`n` bytes of the chunk's data from `start`; a file cut short since it was opened is a
    bad copy (CorruptChunk: dropped and refilled), not a failing disk."""
    try:
        return await pread(file.fd, start, n)
    except ShortRead as exc:
        raise CorruptChunk(file.name, f"its file was cut short: {exc}") from None


async def read_pieces(file: ChunkFile, offset: int, length: int,
                      piece: int | Callable[[], int] = PIECE) -> AsyncIterator[bytearray]:
    """Yield `length` bytes of an open chunk from `offset`, in pieces of about `piece`
    (or of what `piece()` says before each one; whole blocks are read and checked,
    CorruptChunk before a bad byte is yielded)."""
    block = file.block
    size = piece if callable(piece) else lambda: piece
    start, stop = blocksums.aligned(offset, length, data_length(file.name), block)
    end = offset + length
    while start < stop:
        n = min(max(block, size() // block * block), stop - start)
        data = await _blocks(file, start, n)
        _check(file, data, start)
        skip = max(0, offset - start)
        yield _trim(data, skip, min(n, end - start) - skip)
        start += n


def _cached(fd: int, buf: bytearray, offset: int) -> int:
    """Bytes read into `buf` from `offset` as far as the page cache holds them (no wait on the disk)."""
    try:
        return os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as exc:  # tmpfs (an emptyDir in memory) refuses RWF_NOWAIT: read in the executor
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return 0


async def read_whole(file: ChunkFile, offset: int, length: int) -> bytearray:
    """`length` bytes of an open chunk from `offset`, in one read, checked (CorruptChunk
    before a bad byte is returned): for small reads."""
    start, stop = blocksums.aligned(offset, length, data_length(file.name), file.block)
    return _checked(file, await _blocks(file, start, stop - start), start, offset, length)


def read_now(file: ChunkFile, offset: int, length: int) -> bytearray | None:
    """`read_whole` if the page cache holds all the bytes; None if reading them would wait
    for the disk."""
    start, stop = blocksums.aligned(offset, length, data_length(file.name), file.block)
    data = new_bytearray(stop - start)
    if _cached(file.fd, data, start) < len(data):  # every byte read, or None
        return None
    return _checked(file, data, start, offset, length)


def _checked(file: ChunkFile, data: bytearray, start: int, offset: int, length: int) -> bytearray:
    """The blocks `data` read from `start`, checked, cut to `[offset, offset + length)`."""
    _check(file, data, start)
    return _trim(data, offset - start, length)


def _trim(data: bytearray, skip: int, length: int) -> bytearray:
    """`data[skip:skip + length]` in place: aiohttp sends a bytearray as is (a memoryview goes
    through its slower payload path), and deleting a bytearray's head moves no bytes."""
    del data[skip + length:]
    del data[:skip]
    return data


def _check(file: ChunkFile, data: bytearray, start: int) -> None:
    try:
        blocksums.check(data, start, file.table, file.block)
    except blocksums.Mismatch as exc:
        raise CorruptChunk(file.name, str(exc)) from None


def data_length(name: str) -> int:
    """A chunk's data length, from its name (`<digest>-<index>-<length>`)."""
    return int(name.rsplit("-", 1)[1])


def open_chunk(path: str, name: str) -> ChunkFile:
    """Open a chunk file and read its trailer (a few hundred bytes at its end): the checksum
    table, and the chunk's identity, which must be the one `name` stands for: the sums only
    say the bytes are the ones written, not that this file holds the chunk asked for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        length = data_length(name)
        meta_length, table_length, block, magic = _FOOTER.unpack(
            os.pread(fd, _FOOTER.size, size - _FOOTER.size))
        trailer = os.pread(fd, meta_length + table_length, length)
        if magic != MAGIC or block <= 0 or len(trailer) != meta_length + table_length or \
                table_length != blocksums.table_size(length, block) or \
                size != length + meta_length + table_length + _FOOTER.size:
            raise CorruptChunk(name, "its trailer is malformed")
        if _identity(trailer[:meta_length]) != name:
            raise CorruptChunk(name, "its file holds another chunk (its trailer names another one)")
    except BaseException:
        os.close(fd)
        raise
    return ChunkFile(fd, name, trailer[meta_length:], block)


def _identity(meta: bytes) -> str | None:
    """The store name of the chunk a trailer's metadata describes; None if it names none."""
    try:
        return ChunkId.unpack(meta).name
    except (ValueError, ArithmeticError):  # not a packed ChunkId, or one of no sane chunk
        return None


def well_formed(path: Path, size: int, length: int) -> bool:
    """The file holds `length` bytes of data and a whole trailer (its sums are checked
    on each read, so a large store starts without reading its data)."""
    if size < length + _FOOTER.size:
        return False
    with open(path, "rb") as f:
        f.seek(size - _FOOTER.size)
        meta_length, table_length, block, magic = _FOOTER.unpack(f.read(_FOOTER.size))
    return magic == MAGIC and block > 0 and table_length == blocksums.table_size(length, block) \
        and size == length + meta_length + table_length + _FOOTER.size


def read_trailers(paths: list[tuple[str, str]]) -> dict[str, bytes]:
    found = {}
    for name, path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(-_FOOTER.size, os.SEEK_END)
                meta_length, table_length, _, magic = _FOOTER.unpack(f.read(_FOOTER.size))
                if magic == MAGIC and meta_length:
                    f.seek(-_FOOTER.size - table_length - meta_length, os.SEEK_END)
                    found[name] = f.read(meta_length)
        except (OSError, struct.error):  # evicted meanwhile (emptied before it is closed)
            continue
    return found
