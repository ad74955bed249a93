"""Range parsing and chunk arithmetic: examples plus properties over all inputs."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, strategies as st

from p2pcache.errors import RangeNotSatisfiable
from p2pcache.objects import ObjectInfo
from p2pcache.ranges import (ByteRange, chunk_count, chunk_length, chunk_spans, parse_range, range_offsets,
                             reslice_range, slice_range)

sizes = st.integers(min_value=0, max_value=10**12)


@pytest.mark.parametrize("header,size,expected", [
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 100)),
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-1000", 100, (0, 100)),
    ("bytes=50-5000", 100, (50, 100)),
    ("bytes=99-99", 100, (99, 100)),
    (" bytes=0-0 ", 1, (0, 1)),
    ("bytes = 2 - 3", 100, (2, 4)),
    ("BYTES=0-9", 100, (0, 10)),  # the unit is case-insensitive (RFC 9110), as moto and S3 take it
    ("Bytes=-10", 100, (90, 100)),
])
def test_valid_ranges(header, size, expected):
    assert parse_range(header, size)[:2] == expected


@pytest.mark.parametrize("header", [
    None, "bytes=abc", "bytes=5-3", "bits=0-1", "bytes=0-1,3-4", "bytes=-", "bytes=", "0-10", "bytes=1-2-3",
    "bytes=0-1 0", "bytes=1 0-20", "bytes=- 1 0", "by tes=0-1",
])
def test_ignored_ranges_mean_the_whole_object(header):
    assert parse_range(header, 100) is None


def test_a_suffix_of_an_empty_object_is_all_of_it():
    assert parse_range("bytes=-1", 0) is None and parse_range("bytes=-5000", 0) is None


@pytest.mark.parametrize("header,size", [
    ("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=0-0", 0), ("bytes=-0", 0),
])
def test_unsatisfiable_ranges_carry_the_size(header, size):
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.size == size and info.value.status == 416


@given(size=sizes, first=st.integers(0, 10**12 + 10), last=st.integers(0, 10**12 + 10))
def test_int_range_is_clamped_or_unsatisfiable(size, first, last):
    header = f"bytes={first}-{last}"
    if last < first:
        assert parse_range(header, size) is None
    elif first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
    else:
        r = parse_range(header, size)
        assert (r.start, r.stop) == (first, min(last + 1, size))
        assert 0 < r.length <= size
        assert r.content_range() == f"bytes {first}-{r.stop - 1}/{size}"


@given(size=sizes, n=st.integers(0, 10**13))
def test_suffix_range_is_the_tail(size, n):
    header = f"bytes=-{n}"
    if n == 0:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
    elif size == 0:
        assert parse_range(header, size) is None  # all of nothing: 200, not 416
    else:
        assert parse_range(header, size) == ByteRange(max(0, size - n), size, size)


offsets = st.one_of(st.none(), st.integers(-300, 300))


@given(start=st.integers(-300, 300), end=offsets, size=st.integers(0, 200))
def test_offsets_select_what_a_slice_of_the_object_selects(start, end, size):
    data = bytes(range(size))
    a, b = slice_range(start, end, size)
    assert 0 <= a <= b <= size and data[a:b] == data[start:end]


@given(size=st.integers(0, 10**10), chunk=st.integers(1, 2**30))
def test_chunk_lengths_add_up_to_the_object(size, chunk):
    n = chunk_count(size, chunk)
    if n > 2000:
        lengths = [chunk_length(i, size, chunk) for i in (0, n - 2, n - 1)]
        assert lengths[0] == chunk and lengths[1] == chunk
        assert (n - 1) * chunk + lengths[2] == size
    else:
        assert sum(chunk_length(i, size, chunk) for i in range(n)) == size
    assert chunk_length(n, size, chunk) == 0
    if n:
        assert 0 < chunk_length(n - 1, size, chunk) <= chunk


@given(start=st.integers(0, 10**9), length=st.integers(0, 10**7), chunk=st.integers(1, 2**24))
def test_spans_tile_the_range_exactly(start, length, chunk):
    assume(length // chunk < 5000)
    stop = start + length
    spans = list(chunk_spans(start, stop, chunk))
    pos = start
    for span in spans:
        assert span.index * chunk + span.offset == pos  # contiguous, in order
        assert 0 <= span.offset < chunk and 0 < span.length <= chunk - span.offset
        pos += span.length
    assert pos == stop
    assert len(spans) == (0 if length == 0 else (stop - 1) // chunk - start // chunk + 1)


def _reference(header: str, size: int):
    """parse_range's rules on Python ints with no digit limit (what the capped parser must match)."""
    import re
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        first, last = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", header).groups()
        if first == "":
            n = int(last)
            return "416" if n == 0 else (max(0, size - n), size) if size else None
        if last != "" and int(last) < int(first):
            return None
        if int(first) >= size:
            return "416"
        return (int(first), size if last == "" else min(int(last) + 1, size))
    finally:
        sys.set_int_max_str_digits(old)


digit_runs = st.one_of(st.just(""), st.from_regex(r"0{0,3}[0-9]{1,3}", fullmatch=True),
                       st.integers(4290, 4600).map(lambda n: "9" * n), st.just("1" + "0" * 4400))
# `bytes=A-B` headers with A or B or both, any length of digits: (A, the header)
digit_headers = st.tuples(digit_runs, digit_runs).filter(any).map(lambda ab: (ab[0], f"bytes={ab[0]}-{ab[1]}"))


def _selected(header: str, size: int):
    """What `parse_range` makes of `header` at `size`: a ByteRange, None (ignored), or "416"."""
    try:
        return parse_range(header, size)
    except RangeNotSatisfiable:
        return "416"


@given(first_header=digit_headers, size=st.integers(0, 10**6))
def test_numbers_of_any_length_parse_like_unbounded_ints(first_header, size):
    _, header = first_header
    got = _selected(header, size)
    assert (got[:2] if isinstance(got, ByteRange) else got) == _reference(header, size)


@given(first_header=digit_headers, size=st.integers(0, 10**6))
def test_a_headers_offsets_resolve_to_the_range_it_selects_at_any_size(first_header, size):
    """What `p2pcache get --range` passes down, resolved only once the version read is known."""
    first, header = first_header
    want = _selected(header, size)
    if want == "416":
        return  # refused against the size first; the offsets are not used
    got = range_offsets(header)
    if want is None and first:  # ignored (last < first): no offsets either
        assert got is None
    else:  # a suffix of an empty object is all of it: no range, and no bytes
        assert slice_range(*got, size) == ((want.start, want.stop) if want else (0, 0))


@given(first_header=digit_headers, size=st.integers(0, 10**6))
def test_offsets_resolved_again_on_a_new_version_fail_where_its_range_would(first_header, size):
    """A read that starts over on a version of `size` bytes: the range that header selects there,
    or RangeNotSatisfiable where a fresh read would be refused (except from byte 0: see below)."""
    _, header = first_header
    offsets = range_offsets(header)
    assume(offsets is not None)
    want = _selected(header, size)
    if want != "416":
        want = (want.start, want.stop) if want else (0, 0)
    try:
        got = reslice_range(*offsets, size)
    except RangeNotSatisfiable as exc:
        assert exc.size == size
        got = "416"
    if want == "416" and offsets[0] == 0:  # `0-` of an empty version (and `-0`, refused by get):
        assert got == (0, 0)  # offsets from 0 are the whole object's too, all of nothing
    else:
        assert got == want


def test_offsets_resolved_again_are_slices_but_for_a_start_past_the_end():
    assert reslice_range(-8, None, 5) == (0, 5) and reslice_range(10, 300, 50) == (10, 50)
    assert reslice_range(0, None, 0) == (0, 0) and reslice_range(0, 10, 0) == (0, 0)
    assert reslice_range(10, -8, 12) == slice_range(10, -8, 12)  # not a range a header names: a slice
    for start, size in ((50, 50), (100, 50), (1, 0)):
        with pytest.raises(RangeNotSatisfiable) as info:
            reslice_range(start, None, size)
        assert info.value.size == size


@given(size=sizes, chunk_size=st.integers(min_value=1, max_value=1 << 30), index=st.integers(0, 10**6))
def test_a_chunk_name_is_the_chunk_ids_name(size, chunk_size, index):
    info = ObjectInfo("b", "some/key", '"e"', size)
    assert info.chunk_name(index, chunk_size) == info.chunk(index, chunk_size).name
