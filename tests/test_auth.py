"""Cluster signatures as pure functions: what they cover, the window, replays, loading the secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict as MultiDict

from p2pcache.auth import (
    HEADER, MIN_SECRET, AuthError, ReplayGuard, Signer, Verifier, canonical_query, load_secret, sign,
    string_to_sign, verify,
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


def test_a_signature_for_a_worker_is_good_at_that_worker_only():
    header = sign(SECRET, "POST", "/_p2p/unpin", (), b"body", now=NOW, to="w0")
    verify(SECRET, "POST", "/_p2p/unpin", (), header, b"body", NOW, to="w0")
    for elsewhere in ("w1", ""):  # another worker, or the master
        with pytest.raises(AuthError) as info:
            verify(SECRET, "POST", "/_p2p/unpin", (), header, b"body", NOW, to=elsewhere)
        assert info.value.status == 403
    with pytest.raises(AuthError):  # a request signed for no worker (the master's) is not one for w0
        verify(SECRET, "POST", "/_p2p/unpin", (), sign(SECRET, "POST", "/_p2p/unpin", (), b"body", now=NOW),
               b"body", NOW, to="w0")


@pytest.mark.parametrize("received", [
    {"Range": "bytes=32768-65535", "X-P2P-Hop": "1"},  # another block of the chunk
    {"Range": "bytes=0-32767", "X-P2P-Hop": "2"},  # another hop
    {"X-P2P-Hop": "1"},  # the Range dropped: the whole chunk
    {"Range": "bytes=32768-65535", "range": "bytes=0-32767", "X-P2P-Hop": "1"},  # another one put first
])
def test_the_headers_that_decide_the_bytes_of_an_answer_are_signed(received):
    sent = {"Range": "bytes=0-32767", "X-P2P-Hop": "1"}
    header = sign(SECRET, "GET", "/_p2p/chunk", [("index", "0")], now=NOW, to="w0", headers=sent)
    relabelled = {k.lower(): v for k, v in sent.items()} | {"Accept": "*/*"}  # names in any case; others unsigned
    verify(SECRET, "GET", "/_p2p/chunk", [("index", "0")], header, b"", NOW, to="w0", headers=relabelled)
    with pytest.raises(AuthError) as info:
        verify(SECRET, "GET", "/_p2p/chunk", [("index", "0")], header, b"", NOW, to="w0",
               headers=MultiDict(received))
    assert info.value.status == 403 and "w0" in info.value.reason
    unranged = sign(SECRET, "GET", "/_p2p/chunk", [("index", "0")], now=NOW, to="w0")
    with pytest.raises(AuthError):  # a Range added on the way
        verify(SECRET, "GET", "/_p2p/chunk", [("index", "0")], unranged, b"", NOW, to="w0", headers=sent)


def test_requests_to_the_master_are_signed_as_before():
    """No worker and no signed header: the text signed is the one of the earlier versions, so a
    master and workers of both versions still agree during a rolling upgrade."""
    assert string_to_sign("POST", "/workers", "", 1, "ab", "cd") == b"P2P1-HMAC-SHA256\nPOST\n/workers\n\n1\nab\ncd"
    assert string_to_sign("POST", "/workers", "", 1, "ab", "cd", to="w0") != \
        string_to_sign("POST", "/workers", "", 1, "ab", "cd")


def test_a_worker_verifier_guards_the_routes_that_change_state_and_names_its_worker():
    clock, me = [NOW], ["w0"]
    verifier = Verifier(SECRET, clock=lambda: clock[0], guard={"/_p2p/unpin"}, me=lambda: me[0])
    signer = Signer(SECRET, clock=lambda: clock[0])
    unpin = signer.headers("POST", "/_p2p/unpin", None, b"x", to="w0")[HEADER]
    verifier.check("POST", "/_p2p/unpin", (), unpin, b"x")
    with pytest.raises(AuthError) as info:
        verifier.check("POST", "/_p2p/unpin", (), unpin, b"x")
    assert info.value.status == 403 and "replayed" in info.value.reason
    sent = {"Range": "bytes=0-9"}
    chunk = signer.headers("GET", "/_p2p/chunk", {"index": "0"}, to="w0", sent=sent)[HEADER]
    for _ in range(2):  # a read may come again: no guard, no memory of it
        verifier.check("GET", "/_p2p/chunk", [("index", "0")], chunk, headers=sent)
    me[0] = ""  # a worker that does not know its id yet accepts nothing
    with pytest.raises(AuthError) as info:
        verifier.check("GET", "/_p2p/chunk", [("index", "0")], chunk, headers=sent)
    assert info.value.status == 403
