"""new_bytes: a bytes object filled in place is an ordinary bytes object."""

from __future__ import annotations

import random

import pytest

from p2pcache.buffers import new_bytes


@pytest.mark.parametrize("size", [0, 1, 4096, 3 << 20])
def test_a_filled_object_equals_hashes_and_slices_as_the_same_bytes(size):
    want = random.Random(size).randbytes(size)
    obj, view = new_bytes(size)
    view[:] = want
    view.release()
    assert type(obj) is bytes and obj == want and len(obj) == size
    assert hash(obj) == hash(want) and {obj: 1}[want] == 1
    assert obj[size // 3:size // 2] == want[size // 3:size // 2]
    with pytest.raises(TypeError):
        obj[0:1] = b"x"  # still immutable to everyone else
