"""`p2pcache get s3://bucket/key`: an object, or a byte range of it, through the cache to a file or stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import re
import sys
import time
from typing import AsyncIterator, Callable, TextIO

from . import tls
from .cli import describe, run_command
from .client import Client
from .config import add_flag, add_reader_key_flags, master_url, number_arg, reader_key, split_s3_url
from .errors import NotFound, ObjectChanged, RangeNotSatisfiable
from .ranges import parse_range, range_offsets
from .sizes import format_size

__all__ = ["add_arguments", "main", "parse_url", "Progress"]

PROGRESS_MIN = 16 << 20  # smaller objects get no progress bar unless --progress asks
_RANGE = re.compile(r"(?P<first>\d*)-(?P<last>\d*)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", type=_object_arg, help="the object: s3://bucket/key")
    p.add_argument("-o", "--output", default="-",
                   help="file to write, replaced atomically; a device or FIFO is written in place, a symlink "
                   "followed (default: stdout)")
    p.add_argument("--range", dest="byte_range", metavar="A-B", type=_range_arg,
                   help="only bytes A to B inclusive (A- to the end, -N the last N)")
    p.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal")
    add_flag(p, "--master", "URL of the master", type=master_url, required=True)
    add_flag(p, "--concurrency", "chunk requests in flight", type=number_arg(int, 1), default=16)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for an https:// master and workers, on top of the "
             "system's", default="")
    add_reader_key_flags(p)


def main(args: argparse.Namespace) -> int:
    """Exit status 0, or 1 with one line on stderr (run_command's codes); never a traceback."""
    bucket, key = parse_url(args.url)
    return run_command("get", _get(args, bucket, key), lambda exc: _describe(exc, args))


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); a ValueError naming that form otherwise."""
    bucket, key = split_s3_url(url, "s3://bucket/key")
    if not key:
        raise ValueError(f"{url!r} names no object: use s3://bucket/key")
    return bucket, key


class Progress:
    """`done / total (pct) rate` at most every `interval` seconds, and once at the end: redrawn on one
    line with `\\r` (a terminal), or with `lines`, one line each (a log)."""

    def __init__(self, stream: TextIO, interval: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 lines: bool = False) -> None:
        self._stream, self._interval, self._clock, self._lines = stream, interval, clock, lines
        self._start = self._last = clock()
        self._shown: int | None = None  # `done` as last drawn

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if done == self._shown or (done < total and now - self._last < self._interval):
            return
        self._last, self._shown = now, done
        rate = done / max(now - self._start, 1e-3)
        pct = 100 * done // total if total else 100
        text = f"{format_size(done)} / {format_size(total)} ({pct}%) {format_size(int(rate))}/s"
        self._stream.write(f"{text}\n" if self._lines else f"\r{text}  ")
        self._stream.flush()

    def finish(self) -> None:
        if self._shown is not None and not self._lines:
            self._stream.write("\n")
            self._stream.flush()


async def _get(args: argparse.Namespace, bucket: str, key: str) -> int:
    tls.check("", "", args.tls_ca)
    async with Client(args.master, concurrency=args.concurrency, tls_ca=args.tls_ca, **reader_key(args)) as client:
        info = await client.stat(bucket, key)
        start, end, length = 0, None, info.size
        if args.byte_range:
            header = f"bytes={args.byte_range}"
            rng, offsets = parse_range(header, info.size), range_offsets(header)
            if offsets is None:  # _range_arg refused what parse_range ignores: not reached
                raise ValueError(f"invalid range {args.byte_range!r}: use A-B with A <= B")
            # The client gets the range as asked (-N stays the last N bytes, A- to the end): a read
            # that starts over on a version of another size resolves it against that size, and
            # fails with RangeNotSatisfiable if that version ends at or before A (A > 0). rng is
            # None for a suffix (-N) of an empty object: all of it, nothing, as S3 answers.
            (start, end), length = offsets, rng.length if rng else 0
        show = args.progress or (sys.stderr.isatty() and length >= PROGRESS_MIN)
        progress = Progress(sys.stderr) if show else None
        try:
            if args.output == "-":
                await _to_stdout(client.stream(bucket, key, start, end), length, progress)
            else:
                await client.download(bucket, key, args.output, progress, start=start, end=end)
        finally:  # an error's line starts on a line of its own
            if progress:
                progress.finish()
    return 0


async def _to_stdout(pieces: AsyncIterator[bytes], total: int, progress: Progress | None) -> None:
    if sys.stdout is None:  # started with fd 1 closed (`>&-`): the bytes would go nowhere
        raise OSError(errno.EBADF, "stdout is closed: give -o FILE")
    out, loop, done = sys.stdout.buffer, asyncio.get_running_loop(), 0
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            await loop.run_in_executor(None, out.write, piece)  # a slow pipe must not block the event loop
            done += len(piece)
            if progress:
                progress(done, total)
    await loop.run_in_executor(None, out.flush)


def _object_arg(text: str) -> str:
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _range_arg(text: str) -> str:
    """A-B, A- or -N; one no object has bytes in (A > B, -0) is refused here, with the malformed ones."""
    match = _RANGE.fullmatch(text)
    if not match or text == "-":
        raise argparse.ArgumentTypeError(f"invalid range {text!r}: use A-B, A- or -N (bytes, inclusive)")
    first, last = match["first"].lstrip("0"), match["last"].lstrip("0")  # digits of any length: no int()
    backwards = match["first"] and match["last"] and (len(first), first) > (len(last), last)
    if backwards or (not match["first"] and not last):
        raise argparse.ArgumentTypeError(f"range {text!r} selects no byte: use A-B with A <= B, or -N with N > 0")
    return text


def _describe(exc: Exception, args: argparse.Namespace) -> str:
    if isinstance(exc, NotFound):
        bucket = parse_url(args.url)[0]
        return f"no such bucket: {bucket}" if exc.code == "NoSuchBucket" else f"no such object: {args.url}"
    if isinstance(exc, RangeNotSatisfiable):
        return f"range {args.byte_range} is outside the object ({exc.size} bytes)"
    if isinstance(exc, ObjectChanged):
        return f"{args.url} changed while it was being read; try again"
    return describe(exc)
