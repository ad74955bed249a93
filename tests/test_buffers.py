"""new_bytes, new_bytearray: a buffer filled in place holds exactly what was written."""

from __future__ import annotations

import os
import random

import pytest

from p2pcache.buffers import new_bytearray, new_bytes


@pytest.mark.parametrize("size", [0, 1, 4096, 3 << 20])
def test_a_filled_buffer_holds_what_was_written(size):
    want = random.Random(size).randbytes(size)
    obj, view = new_bytes(size)
    view[:] = want
    view.release()
    assert bytes(obj) == want and len(obj) == size
    assert hash(bytes(obj)) == hash(want)  # no hash was cached before the bytes were written


def test_a_large_buffer_is_bytes_filled_in_place_and_kept_alive_by_its_view():
    size = 5 << 20
    obj, view = new_bytes(size)
    assert isinstance(obj, bytes) and len(obj) == size  # CPython: the object handed out, no copy
    ident = id(obj)
    del obj  # a writer that outlives the caller must still write into live memory
    view[-3:] = b"end"
    view[:5] = b"start"
    assert view.obj.owner[:5] == b"start" and view.obj.owner[-3:] == b"end" and id(view.obj.owner) == ident
    view.release()


def test_many_sizes_do_not_grow_ctypes_type_cache():
    import gc
    import ctypes

    for size in range(10_000, 10_300):
        obj, view = new_bytes(size)
        view[:] = b"x" * size
        view.release()
        assert obj == b"x" * size
    gc.collect()
    alive = [t for t in gc.get_objects() if isinstance(t, type) and issubclass(t, ctypes.Array)
             and t.__name__ == "Storage"]
    assert len(alive) < 10


@pytest.mark.parametrize("size", [0, 1, 96 << 10, 1 << 20])
def test_a_bytearray_a_read_fills_is_an_ordinary_bytearray(tmp_path, size):
    want = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(want)
    buf = new_bytearray(size)
    assert type(buf) is bytearray and len(buf) == size
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert os.preadv(fd, [buf], 0) == size
    finally:
        os.close(fd)
    assert buf == want
    del buf[size // 2:]  # cut in place, as the store trims a read to its range
    del buf[:1]
    assert buf == want[1:size // 2]
