"""Numeric flags inside the range where they mean something, or a ValueError naming the flag."""

from __future__ import annotations

import math
from typing import Callable, TypeVar

__all__ = ["bounded"]

N = TypeVar("N", int, float)


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def bounded(flag: str, value: N, low: float, high: float = math.inf, *, above: bool = False,
            show: Callable[[float], str] = _show) -> N:
    """`value` if it is finite, at least `low` (more than `low` if `above`) and at most `high`.

    Otherwise a ValueError such as `--vnodes must be from 1 to 1000, not 0`.
    """
    if math.isfinite(value) and (value > low if above else value >= low) and value <= high:
        return value
    if high == math.inf or above:
        want = f"{'more than' if above else 'at least'} {show(low)}"
        want += f" and at most {show(high)}" if high != math.inf else ""
    else:
        want = f"from {show(low)} to {show(high)}"
    raise ValueError(f"{flag} must be {want}, not {show(value)}")
