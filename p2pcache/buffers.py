"""A new `bytes` object whose storage a read can fill in place, so `Client.read` costs no copy."""

from __future__ import annotations

import ctypes
import sys

__all__ = ["new_bytes"]

# CPython's C API idiom: PyBytes_FromStringAndSize(NULL, n) is an uninitialised bytes object that
# its creator fills before anyone else sees it. Its hash is computed lazily, on first use, so
# writing first is safe. The storage starts at ob_sval, the struct's size less its 1-byte array.
_CPYTHON = sys.implementation.name == "cpython"
if _CPYTHON:
    _from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
    _from_size.restype = ctypes.py_object
    _from_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _OFFSET = bytes.__basicsize__ - 1


def new_bytes(size: int) -> tuple[bytes | bytearray, memoryview]:
    """An object of `size` bytes and a writable view of its storage; fill the view, then share the object.

    Outside CPython, a bytearray (the caller converts it). Keep the object alive while the view is used.
    """
    if size <= 0:
        return b"", memoryview(bytearray())
    if not _CPYTHON:
        buf = bytearray(size)
        return buf, memoryview(buf)
    obj = _from_size(None, size)
    return obj, memoryview((ctypes.c_char * size).from_address(id(obj) + _OFFSET)).cast("B")
