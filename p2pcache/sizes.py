"""Human-readable byte sizes: `8MiB`, `20GiB`, `500M`, plain integers."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

__all__ = ["parse_size", "format_size", "show_size", "MAX_SIZE"]

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
    "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
# The largest integer msgpack carries (a heartbeat's capacity, a registration): no size is larger.
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str | int) -> int:
    """`'8MiB'` -> 8388608, exactly (fractions of a byte dropped), however large: the caller bounds it.

    Raises ValueError with the accepted forms.
    """
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    try:
        if match and unit is not None:
            return int(Fraction(match.group(1)) * unit)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        pass
    raise ValueError(f"invalid size {text!r}: use bytes or a suffix like 512KiB, 8MiB, 20GiB, 1G")


def format_size(n: int) -> str:
    """8388608 -> '8MiB'; 1536 -> '1.5KiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= _UNITS[unit.lower()]:
            value = n / _UNITS[unit.lower()]
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"  # not 1.02e+03KiB
    return f"{n}B"


def show_size(n: int) -> str:
    """A size in an error message, never rounded: `64KiB`, `65,535 bytes`, `2^63-1 bytes`, `1e+400 bytes`."""
    if n == MAX_SIZE:
        return "2^63-1 bytes"
    if n > MAX_SIZE:
        return f"{Decimal(n):.3g} bytes"
    text = format_size(n)
    try:
        exact = parse_size(text) == n
    except ValueError:  # 1000 TiB and more: in powers of ten
        exact = False
    return text if exact else f"{n:,} bytes"
