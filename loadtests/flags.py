"""argparse types of the benchmarks' flags: a value outside the range where it means something is refused up front.

A benchmark given `--repeats 0` or `--size 0` used to run, then fail on an empty median or a
division by zero (or measure nothing and exit 0); a `--json` path in a missing directory failed
only after the whole run. These types make argparse say so at once, naming the flag, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable

from p2pcache.bounds import bounded, bounded_size
from p2pcache.sizes import MAX_SIZE, parse_size

__all__ = ["size", "sizes", "count", "counts", "output_file", "MAX_OBJECT", "MAX_DATASET", "MAX_CLUSTER"]

# S3's largest single PUT (p2pcache local's demo object has the same bound): the benchmarks
# build each object in memory, and the embedded S3 holds it.
MAX_OBJECT = 5 << 30
# A dataset the embedded S3 keeps in its temp dir, read through workers' caches on this disk: a
# bound far past any disk here, that still stops a typo (`1EiB`) from listing a billion shards.
MAX_DATASET = 1 << 40
MAX_CLUSTER = 100  # worker processes on this machine, as `p2pcache local --workers` allows


def _refused(exc: ValueError) -> argparse.ArgumentTypeError:
    """`VALUE must be from 1 to 5GiB, not 0` -> `must be from 1 to 5GiB, not 0` (argparse names the flag)."""
    return argparse.ArgumentTypeError(str(exc).split(" ", 1)[1])


def size(low: int = 1, high: int = MAX_SIZE) -> Callable[[str], int]:
    """A size in bytes (`8MiB`, `1G`, `4096`) from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        try:
            return bounded_size("VALUE", value, low, high)
        except ValueError as exc:
            raise _refused(exc) from None

    return parse


def count(low: int = 1, high: float = math.inf) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        try:
            return bounded("VALUE", value, low, high)
        except ValueError as exc:
            raise _refused(exc) from None

    return parse


def _listed(one: Callable[[str], int]) -> Callable[[str], str]:
    """A comma-separated list of `one`: checked item by item, kept as the text (the benchmark splits it)."""
    def parse(text: str) -> str:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"an empty item in {text!r}: use a comma-separated list")
        for item in items:
            one(item)
        return ",".join(items)

    return parse


def sizes(low: int = 1, high: int = MAX_SIZE) -> Callable[[str], str]:
    """Comma-separated sizes, each from `low` to `high`: `4MiB,64KiB`."""
    return _listed(size(low, high))


def counts(low: int = 1, high: float = math.inf) -> Callable[[str], str]:
    """Comma-separated whole numbers, each from `low` to `high`: `1,2,4,8`."""
    return _listed(count(low, high))


def output_file(text: str) -> str:
    """A file the results can be written to at the end: its directory exists and is writable."""
    path = Path(text)
    where = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not where.is_dir():
        raise argparse.ArgumentTypeError(f"no directory {where} to write {path.name} in")
    if not os.access(path if path.exists() else where, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text
