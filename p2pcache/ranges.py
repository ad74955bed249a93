"""RFC 9110 single byte-range parsing and the range -> chunk arithmetic."""

from __future__ import annotations

import operator
import re
from typing import Iterator, NamedTuple

from .errors import RangeNotSatisfiable

__all__ = ["ByteRange", "parse_range", "offsets", "slice_range", "reslice_range", "range_offsets", "chunk_count", "chunk_length", "chunk_spans"]

# Blanks around "=" and "-" are tolerated; inside a number they make the header invalid ("1 0" is not 10).
# The unit is case-insensitive (RFC 9110: `BYTES=0-5` is a range).
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)
_HUGE = 1 << 64  # stands for any position past every object: beyond it, digits are not parsed


class ByteRange(NamedTuple):
    """Half-open `[start, stop)` within an object of `size` bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range a `Range` header selects, or None to send the whole object.

    As S3 does, a header that is syntactically invalid, not in bytes, or asks
    for several ranges is ignored (None). A valid range that selects nothing
    raises RangeNotSatisfiable: for an empty object every `first-` range does,
    while a suffix (`-n`, n > 0) is satisfiable on any object (RFC 9110 14.1.1):
    on an empty one it is the whole of it, none, as readers of a file's tail
    (Parquet footers) expect of S3.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix: the last n bytes
        n = _number(last)
        if n == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - n), size, size) if size else None
    start = _number(first)
    if last != "" and _digits_below(last, first):
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    stop = size if last == "" else min(_number(last) + 1, size)
    return ByteRange(start, stop, size)


def offsets(start: int, end: int | None = None) -> tuple[int, int | None]:
    """`start` and `end` as ints (a NumPy integer too; `end` may be None), else TypeError: a float
    failed only deep in a read, as a ctypes error."""
    return operator.index(start), None if end is None else operator.index(end)


def slice_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """The half-open `[a, b)` that `start` and `end` select in `size` bytes, as a Python slice does.

    A negative offset counts from the end (`start=-n`: the last n bytes), `end=None` is the end,
    and both are clamped to the object. Offsets stay in this form until a version is known:
    a read that starts over on another version resolves them again against its size.
    """
    a = max(0, size + start) if start < 0 else min(start, size)
    b = size if end is None else max(0, size + end) if end < 0 else min(end, size)
    return a, max(a, b)


def reslice_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """`slice_range` for a read that starts over on a new version of `size` bytes, after the first
    version held bytes of its range: a range that starts at or past the new end is one the new
    version does not hold, RangeNotSatisfiable (as S3 answers `Range: bytes=start-` there), not
    nothing. A range the new end cuts short keeps what it holds; a suffix (negative `start`) and
    one from byte 0 (the whole object: of an empty one, all of nothing) are held by any version."""
    if start > 0 and start >= size:
        raise RangeNotSatisfiable(size)
    return slice_range(start, end, size)


def range_offsets(header: str) -> tuple[int, int | None] | None:
    """The `(start, end)` of `slice_range` that a `Range` header names, before any size is known:
    `bytes=a-b` -> (a, b + 1), `bytes=a-` -> (a, None), `bytes=-n` -> (-n, None); None where
    `parse_range` ignores the header. Numbers are capped as there (past every object)."""
    match = _RANGE.fullmatch(header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # `-0` selects nothing (parse_range: unsatisfiable)
        n = _number(last)
        return (-n, None) if n else (0, 0)
    if last != "" and _digits_below(last, first):
        return None
    return _number(first), None if last == "" else _number(last) + 1


def _digits_below(a: str, b: str) -> bool:
    """a < b for runs of digits of any length, without converting them."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def _number(digits: str) -> int:
    """The value of a run of digits, capped at _HUGE (int() refuses more than 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 20 else _HUGE


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    """Bytes in chunk `index` of an object of `size` bytes (the last may be short)."""
    return max(0, min(chunk_size, size - index * chunk_size))


class ChunkSpan(NamedTuple):
    index: int
    offset: int  # within the chunk
    length: int


def chunk_spans(start: int, stop: int, chunk_size: int) -> Iterator[ChunkSpan]:
    """The pieces of chunks that cover `[start, stop)`, in order."""
    pos = start
    while pos < stop:
        index, offset = divmod(pos, chunk_size)
        length = min(chunk_size - offset, stop - pos)
        yield ChunkSpan(index, offset, length)
        pos += length
