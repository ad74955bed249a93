"""Conditional request evaluation, S3's precedence rules included."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from multidict import CIMultiDict

from p2pcache.conditions import etag_matches, evaluate, max_age

ETAG = '"abc"'
LM = "Wed, 01 Jan 2025 12:00:00 GMT"
BEFORE, AFTER = "Tue, 31 Dec 2024 12:00:00 GMT", "Thu, 02 Jan 2025 12:00:00 GMT"


@pytest.mark.parametrize("headers,expected", [
    ({}, None),
    ({"If-Match": '"abc"'}, None),
    ({"If-Match": "abc"}, None),
    ({"If-Match": '"x", "abc"'}, None),
    ({"If-Match": "*"}, None),
    ({"If-Match": '"other"'}, 412),
    ({"If-None-Match": '"abc"'}, 304),
    ({"If-None-Match": '"other"'}, None),
    ({"If-None-Match": "*"}, 304),
    ({"If-Modified-Since": AFTER}, 304),
    ({"If-Modified-Since": LM}, 304),
    ({"If-Modified-Since": BEFORE}, None),
    ({"If-Unmodified-Since": BEFORE}, 412),
    ({"If-Unmodified-Since": AFTER}, None),
    ({"If-Modified-Since": "not a date"}, None),
    # S3: If-Match true wins over If-Unmodified-Since false ...
    ({"If-Match": '"abc"', "If-Unmodified-Since": BEFORE}, None),
    # ... and If-None-Match false wins over If-Modified-Since true.
    ({"If-None-Match": '"other"', "If-Modified-Since": AFTER}, None),
    ({"If-Match": '"other"', "If-None-Match": '"abc"'}, 412),
])
def test_evaluate(headers, expected):
    assert evaluate(headers, ETAG, LM) == expected


def test_a_list_header_on_several_lines_is_read_as_one_line_joined():
    """RFC 9110 5.3: `If-Match: "x"` and `If-Match: "abc"` on two lines mean `If-Match: "x", "abc"`."""
    for name, joined in (("If-Match", None), ("If-None-Match", 304)):
        two = CIMultiDict([(name, '"x"'), (name, ETAG)])
        assert evaluate(two, ETAG, LM) == evaluate({name: f'"x", {ETAG}'}, ETAG, LM) == joined
    assert evaluate(CIMultiDict([("If-Match", '"x"'), ("If-Match", '"y"')]), ETAG, LM) == 412
    assert max_age(CIMultiDict([("Cache-Control", "max-age=60"), ("cache-control", "no-cache")])) == 0
    assert max_age(CIMultiDict([("Cache-Control", "public"), ("Cache-Control", "max-age=3")])) == 3
    assert max_age(CIMultiDict()) is None and evaluate(CIMultiDict(), ETAG, LM) is None


def test_weak_etags_compare_by_value():
    assert etag_matches('W/"abc"', '"abc"') and not etag_matches('"ab"', '"abc"')


def test_cache_control_says_how_old_an_answer_may_be():
    assert max_age({}) is None
    assert max_age({"Cache-Control": "no-cache"}) == 0
    assert max_age({"Cache-Control": "public, max-age=3"}) == 3
    assert max_age({"Cache-Control": "s-maxage=3, max-stale=9"}) is None
    assert max_age({"Cache-Control": "max-age=" + "9" * 5000}) is None  # not a 500


@pytest.mark.parametrize("date", [
    "Thu, 02 Jan 2025 12:00:00 GMT",  # IMF-fixdate
    "Thursday, 02-Jan-25 12:00:00 GMT",  # RFC 850
    "Thu Jan  2 12:00:00 2025",  # asctime: no zone, GMT by definition
    "Thu, 02 Jan 2025 12:00:00 -0000",  # "zone unknown": a naive datetime from the parser
])
def test_every_http_date_form_compares_without_naive_aware_errors(date):
    assert evaluate({"If-Modified-Since": date}, ETAG, LM) == 304
    assert evaluate({"If-Unmodified-Since": date}, ETAG, LM) is None


@given(st.text(max_size=60))
def test_any_date_text_is_a_decision_never_an_error(text):
    assert evaluate({"If-Modified-Since": text, "If-Unmodified-Since": text}, ETAG, LM) in (None, 304, 412)
