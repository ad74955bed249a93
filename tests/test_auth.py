"""Cluster signatures as pure functions: what they cover, the window, replays, loading the secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.auth import (
    HEADER, MIN_SECRET, AuthError, ReplayGuard, Signer, Verifier, canonical_query, load_secret, sign,
    verify,
)

SECRET = b"s" * 32
NOW = 1_800_000_000.0
REQUEST = ("POST", "/workers", [("a", "1"), ("b", "x y")], b"body")


def check(header, method="POST", path="/workers", query=(("a", "1"), ("b", "x y")), body=b"body",
          now=NOW, secret=SECRET):
    return verify(secret, method, path, query, header, body, now)


def test_a_signed_request_verifies_and_returns_its_nonce():
    header = sign(SECRET, *REQUEST, now=NOW, nonce="ab" * 12)
    assert check(header) == "ab" * 12
    assert SECRET.decode() not in header  # the secret never travels


@pytest.mark.parametrize("change", [
    {"method": "DELETE"}, {"path": "/workers/w0"}, {"query": (("a", "2"), ("b", "x y"))},
    {"query": (("a", "1"),)}, {"body": b"bodY"}, {"body": b""}, {"secret": b"t" * 32},
])
def test_any_change_to_what_was_signed_is_refused_with_403(change):
    header = sign(SECRET, *REQUEST, now=NOW)
    with pytest.raises(AuthError) as info:
        check(header, **change)
    assert info.value.status == 403 and "signature" in info.value.reason


def test_the_timestamp_is_signed_too():
    header = sign(SECRET, *REQUEST, now=NOW)
    forged = header.replace(f"t={int(NOW * 1000)}", f"t={int(NOW * 1000) + 1}")
    with pytest.raises(AuthError) as info:
        check(forged)
    assert info.value.status == 403


@pytest.mark.parametrize("header", [None, "", "t=1,n=2,s=3", "Bearer x", "t=1800000000000,n=zz,s=" + "0" * 64])
def test_missing_or_malformed_headers_are_401(header):
    with pytest.raises(AuthError) as info:
        check(header)
    assert info.value.status == 401 and HEADER in info.value.reason


@pytest.mark.parametrize("skew", [-31, 31, -3600])
def test_outside_the_window_is_401_and_says_to_check_the_clocks(skew):
    header = sign(SECRET, *REQUEST, now=NOW + skew)
    with pytest.raises(AuthError) as info:
        check(header)
    assert info.value.status == 401 and "clock" in info.value.reason
    assert check(sign(SECRET, *REQUEST, now=NOW + skew * 29 / abs(skew)))  # inside: accepted


def test_the_query_is_canonical_whatever_its_order_or_encoding():
    assert canonical_query([("b", "2"), ("a", "x y")]) == canonical_query([("a", "x y"), ("b", "2")])
    assert canonical_query([("k", "a&b=c")]) != canonical_query([("k", "a"), ("b", "c")])
    assert canonical_query([("k", "a+b")]) != canonical_query([("k", "a b")])


@given(path=st.text(min_size=1, max_size=50), key=st.text(max_size=50), body=st.binary(max_size=100))
def test_signatures_verify_for_any_text_and_never_for_a_changed_key(path, key, body):
    header = sign(SECRET, "GET", path, [("key", key)], body, now=NOW)
    check(header, "GET", path, [("key", key)], body)
    with pytest.raises(AuthError):
        check(header, "GET", path, [("key", key + "x")], body)


def test_the_verifier_with_a_guard_accepts_each_signature_once():
    clock = [NOW]
    verifier = Verifier(SECRET, clock=lambda: clock[0], guard=True)
    headers = Signer(SECRET, clock=lambda: clock[0]).headers("DELETE", "/workers/w1")
    verifier.check("DELETE", "/workers/w1", (), headers[HEADER])
    with pytest.raises(AuthError) as info:
        verifier.check("DELETE", "/workers/w1", (), headers[HEADER])
    assert info.value.status == 403 and "replayed" in info.value.reason
    fresh = Signer(SECRET, clock=lambda: clock[0]).headers("DELETE", "/workers/w1")
    verifier.check("DELETE", "/workers/w1", (), fresh[HEADER])  # a new nonce: fine


def test_the_replay_guard_stays_bounded_and_forgets_after_the_window():
    guard = ReplayGuard(window=30, max_entries=100)
    for i in range(1000):
        guard.check(f"n{i}", NOW)
    assert len(guard._seen) <= 100
    guard.check("late", NOW)
    guard.check("other", NOW + 61)  # two windows later "late" is forgotten...
    guard.check("late", NOW + 61)  # ...and its signature has long expired anyway
    with pytest.raises(AuthError):
        guard.check("other", NOW + 62)


def test_a_signer_without_a_secret_adds_nothing():
    assert Signer(None).headers("GET", "/_p2p/chunk", {"a": "b"}) == {}


def test_load_secret(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"  0123456789abcdef0123\n")
    assert load_secret("", path) == b"0123456789abcdef0123"
    assert load_secret("0123456789abcdef", None) == b"0123456789abcdef"
    assert load_secret("", "") is None and load_secret(None, None) is None
    with pytest.raises(ValueError, match=f"at least {MIN_SECRET}"):
        load_secret("short", None)
    with pytest.raises(ValueError, match="not both"):
        load_secret("0123456789abcdef", path)
    with pytest.raises(ValueError, match="cannot read"):
        load_secret("", tmp_path / "missing")
