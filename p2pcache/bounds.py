"""Numeric flags inside the range where they mean something, or a ValueError naming the flag."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Callable, TypeVar

from .sizes import MAX_SIZE, show_size

__all__ = ["bounded", "bounded_size"]

N = TypeVar("N", int, float)


def _show(value: float) -> str:
    if not isinstance(value, int):
        return f"{value:g}"
    return str(value) if abs(value) < 10**20 else f"{Decimal(value):.3g}"


def bounded(flag: str, value: N, low: float, high: float = math.inf, *, above: bool = False,
            show: Callable[[float], str] = _show) -> N:
    """`value` if it is finite, at least `low` (more than `low` if `above`) and at most `high`.

    Otherwise a ValueError such as `--vnodes must be from 1 to 1000, not 0`. An int of any
    size is compared as it is (never as a float, which one of 400 digits overflows).
    """
    finite = isinstance(value, int) or math.isfinite(value)
    if finite and (value > low if above else value >= low) and value <= high:
        return value
    if high == math.inf or above:
        want = f"{'more than' if above else 'at least'} {show(low)}"
        want += f" and at most {show(high)}" if high != math.inf else ""
    else:
        want = f"from {show(low)} to {show(high)}"
    raise ValueError(f"{flag} must be {want}, not {show(value)}")


def bounded_size(flag: str, value: int, low: int = 0, high: int = MAX_SIZE) -> int:
    """`bounded` for a size in bytes: at most 2^63-1 (what msgpack carries) unless `high` says less."""
    return bounded(flag, value, low, high, show=show_size)
