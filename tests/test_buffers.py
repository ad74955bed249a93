"""new_bytes: a buffer filled through its view holds exactly what was written."""

from __future__ import annotations

import random

import pytest

from p2pcache.buffers import new_bytes


@pytest.mark.parametrize("size", [0, 1, 4096, 3 << 20])
def test_a_filled_buffer_holds_what_was_written(size):
    want = random.Random(size).randbytes(size)
    obj, view = new_bytes(size)
    view[:] = want
    view.release()
    assert bytes(obj) == want and len(obj) == size
