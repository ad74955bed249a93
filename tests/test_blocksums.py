"""Block checksums: the table does not depend on how the bytes arrived, and any change is caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from p2pcache.blocksums import Mismatch, Summer, aligned, check, table_size, table_slice

B = 64  # a small block, so that examples span many


def table_of(data: bytes, block: int = B) -> bytes:
    s = Summer(block)
    s.update(data)
    return s.table()


@settings(max_examples=200)
@given(st.binary(max_size=10 * B), st.lists(st.integers(1, 3 * B), max_size=20))
def test_the_table_is_the_same_however_the_bytes_are_cut(data, cuts):
    s, pos = Summer(B), 0
    for n in cuts:
        s.update(data[pos:pos + n])
        pos += n
    s.update(data[pos:])
    assert s.table() == table_of(data) and len(s.table()) == table_size(len(data), B)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=10 * B), st.data())
def test_any_flipped_bit_is_caught_in_its_block_only(data, draw):
    table = table_of(data)
    check(data, 0, table, B)
    where = draw.draw(st.integers(0, len(data) - 1))
    bit = draw.draw(st.integers(0, 7))
    bad = bytearray(data)
    bad[where] ^= 1 << bit
    with pytest.raises(Mismatch) as caught:
        check(bad, 0, table, B)
    assert caught.value.block == where // B


@settings(max_examples=200)
@given(st.integers(1, 10 * B), st.data())
def test_aligned_spans_cover_the_window_in_whole_blocks(length, draw):
    offset = draw.draw(st.integers(0, length - 1))
    n = draw.draw(st.integers(0, length - offset))
    start, stop = aligned(offset, n, length, B)
    assert start % B == 0 and start <= offset and offset + n <= stop <= length
    assert stop % B == 0 or stop == length
    assert offset - start < B and stop - (offset + n) < B


def test_a_slice_of_the_table_checks_a_window_of_blocks():
    data = bytes(range(256)) * 3  # 12 blocks
    table = table_of(data)
    start, stop = aligned(130, 200, len(data), B)
    check(data[start:stop], 0, table_slice(table, start, stop, B), B)
    with pytest.raises(Mismatch):
        check(data[start + B:stop + B], 0, table_slice(table, start, stop, B), B)
