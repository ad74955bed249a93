"""Read plans: the ranges a load reads, as `(file index, start, length)` triples, and the distinct bytes they cover."""

from __future__ import annotations

import random

from .datasets import File

__all__ = ["Part", "tile", "random_tiling", "random_reads", "distinct_bytes"]

Part = tuple[int, int, int]
ALIGN = 4096


def tile(files: list[File], part: int) -> list[Part]:
    """Every byte of every file, in order, in `part`-sized ranges."""
    return [(i, start, min(part, f.size - start)) for i, f in enumerate(files) for start in range(0, f.size, part)]


def random_tiling(files: list[File], smallest: int, largest: int, rng: random.Random) -> list[Part]:
    """Every byte of every file, in ranges of random unaligned lengths in `[smallest, largest]`."""
    parts = []
    for i, f in enumerate(files):
        start = 0
        while start < f.size:
            length = min(rng.randint(smallest, largest), f.size - start)
            parts.append((i, start, length))
            start += length
    return parts


def random_reads(files: list[File], count: int, size: int, rng: random.Random) -> list[Part]:
    """`count` reads of `size` bytes (less in a smaller file) at random 4 KiB-aligned offsets."""
    parts = []
    for _ in range(count):
        i = rng.randrange(len(files))
        length = min(size, files[i].size)
        parts.append((i, rng.randrange(0, files[i].size - length + 1, ALIGN), length))
    return parts


def distinct_bytes(parts: list[Part]) -> int:
    """The size of the union of the parts' ranges."""
    total, last = 0, (-1, 0)  # (file, end) of the run being merged
    for i, start, length in sorted(parts):
        end = start + length
        if i == last[0] and start < last[1]:
            total += max(0, end - last[1])
            last = (i, max(end, last[1]))
        else:
            total += length
            last = (i, end)
    return total
