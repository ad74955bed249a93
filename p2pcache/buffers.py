"""A buffer that a read fills in place, handed over as `bytes` when it is complete."""

from __future__ import annotations

__all__ = ["new_bytes"]


def new_bytes(size: int) -> tuple[bytearray, memoryview]:
    """A `size`-byte bytearray and a writable view of it; fill the view, release it, then
    `bytes(obj)` where immutable bytes are promised (one copy: mutating a bytes object in
    place through the C API would save it, but is not something to rely on)."""
    buf = bytearray(size)
    return buf, memoryview(buf)
