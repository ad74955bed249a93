"""Human-readable byte sizes: `8MiB`, `20GiB`, `500M`, plain integers."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size"]

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
    "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """`'8MiB'` -> 8388608. Raises ValueError with the accepted forms."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f"invalid size {text!r}: use bytes or a suffix like 512KiB, 8MiB, 20GiB, 1G")
    return int(float(match.group(1)) * unit)


def format_size(n: int) -> str:
    """8388608 -> '8MiB'; 1536 -> '1.5KiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= _UNITS[unit.lower()]:
            return f"{n / _UNITS[unit.lower()]:.3g}{unit}"
    return f"{n}B"
