"""Sizes parsed exactly however large, and shown in errors without rounding; bounds on numbers of any size."""

from __future__ import annotations

import pytest

from p2pcache.bounds import bounded, bounded_size
from p2pcache.sizes import MAX_SIZE, format_size, parse_size, show_size


@pytest.mark.parametrize(("text", "n"), [
    ("0", 0), ("1.5", 1), ("1.5KiB", 1536), ("8MiB", 8 << 20), ("1G", 10**9), (" 2 tib ", 2 << 40),
    (str(MAX_SIZE), MAX_SIZE), ("8388608TiB", 1 << 63), ("9" * 400, int("9" * 400)),
    ("0.0000000000000000001TiB", 0), ("1.0000000000000000001TiB", 1 << 40),
])
def test_a_size_is_parsed_exactly(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "1XB", "-1", "1e5", "inf", "nan", "1.", ".5", "9" * 5000])
def test_what_is_not_a_size_is_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="use bytes or a suffix like 512KiB"):
        parse_size(text)


@pytest.mark.parametrize(("n", "text"), [
    (1023, "1023B"), (1536, "1.5KiB"), (999 << 10, "999KiB"), (1023 << 10, "1023KiB"), (1010 << 20, "1010MiB"),
    (5000 << 40, "5000TiB"),
])
def test_a_size_shown_in_progress_is_never_in_scientific_notation(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (64 << 10, "64KiB"), (65535, "65,535 bytes"), (1 << 30, "1GiB"), (1000 << 40, "1000TiB"), (1001 << 40 | 1, "1,100,611,139,403,777 bytes"),
    (MAX_SIZE, "2^63-1 bytes"), (1 << 63, "9.22e+18 bytes"), (int("9" * 400), "1.00e+400 bytes"),
])
def test_a_size_in_an_error_is_never_rounded_below_the_largest(n, text):
    assert show_size(n) == text


def test_numbers_of_any_size_are_bounded_without_overflow():
    assert bounded("--n", 10**400, 1) == 10**400
    assert bounded_size("--size", MAX_SIZE) == MAX_SIZE
    with pytest.raises(ValueError, match=r"^--n must be from 1 to 100, not 1.00e\+400$"):
        bounded("--n", 10**400, 1, 100)
    with pytest.raises(ValueError, match=r"^--size must be from 0B to 2\^63-1 bytes, not 9.22e\+18 bytes$"):
        bounded_size("--size", MAX_SIZE + 1)
    with pytest.raises(ValueError, match=r"^--size must be from 64KiB to 1GiB, not 1.00e\+400 bytes$"):
        bounded_size("--size", 10**400, 64 << 10, 1 << 30)
