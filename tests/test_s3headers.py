"""Which object headers the cache keeps and replays, and S3's rules for `response-*` overrides."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from p2pcache.errors import BadRequest, OriginError
from p2pcache.s3headers import OVERRIDES, check_sendable, stored_headers
from p2pcache.s3headers import response_overrides as overrides_of


def response_overrides(query: dict[str, str], headers: dict[str, str]) -> dict[str, str]:
    return overrides_of(query, urlencode(query), headers)  # the query as a client sends it


def test_stored_headers_keep_the_objects_own_and_drop_per_request_ones():
    head = {"server": "AmazonS3", "date": "x", "x-amz-request-id": "r", "x-amz-id-2": "i", "etag": '"e"',
            "content-length": "5", "content-type": "text/plain", "last-modified": "y", "accept-ranges": "bytes",
            "x-amz-meta-Model": "llama", "cache-control": "no-transform", "expires": "Wed, 21 Oct 2026 07:28:00 GMT",
            "content-disposition": "inline", "content-language": "de", "content-encoding": "gzip",
            "x-amz-version-id": "v1", "x-amz-storage-class": "GLACIER_IR", "x-amz-server-side-encryption": "aws:kms",
            "x-amz-checksum-crc32": "AAAA", "x-amz-mp-parts-count": "3", "content-range": "bytes 0-4/5"}
    assert stored_headers(head) == (
        ("x-amz-meta-model", "llama"), ("Cache-Control", "no-transform"),
        ("Expires", "Wed, 21 Oct 2026 07:28:00 GMT"), ("Content-Disposition", "inline"),
        ("Content-Language", "de"), ("Content-Encoding", "gzip"), ("x-amz-version-id", "v1"),
        ("x-amz-storage-class", "GLACIER_IR"), ("x-amz-server-side-encryption", "aws:kms"))


def test_an_object_header_no_answer_can_carry_is_the_origins_error():
    check_sendable([("x-amz-meta-note", "tab\tand UTF-8 ✓"), ("Content-Type", "text/plain")], "s3://b/k")
    for value in ("a\x01b", "a\x7f", "a\nb", "\x00"):
        with pytest.raises(OriginError, match="control character"):
            check_sendable([("Content-Type", "text/plain"), ("x-amz-meta-note", value)], "s3://b/k")


def test_response_overrides_apply_to_signed_requests_only():
    query = {"response-content-type": "text/plain", "response-expires": "never", "x-id": "GetObject"}
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=..."}
    assert response_overrides(query, signed) == {"Content-Type": "text/plain", "Expires": "never"}
    assert response_overrides(query | {"X-Amz-Signature": "abc"}, {}) == {"Content-Type": "text/plain",
                                                                          "Expires": "never"}
    assert response_overrides({"x-id": "GetObject"}, {}) == {}
    with pytest.raises(BadRequest) as exc:
        response_overrides(query, {})
    assert (exc.value.status, exc.value.code) == (400, "InvalidRequest")
    for bad in ("a\r\nX-Injected: 1", "text/plain\nX: 1", "no\x00store"):
        with pytest.raises(BadRequest) as exc:
            response_overrides({"response-cache-control": bad}, signed)
        assert (exc.value.status, exc.value.code) == (400, "InvalidArgument")
        assert exc.value.details == {"ArgumentName": "response-cache-control",
                                     "ArgumentValue": bad.encode("unicode_escape").decode()}


def test_an_override_no_header_can_carry_is_invalid_argument_for_every_name():
    """Every character aiohttp refuses to write in a header (a 500 when it did), and bytes that
    are not UTF-8 (aiohttp made them U+FFFD, sent as the header's value): S3's 400 InvalidArgument."""
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=..."}
    refused = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"]
    for name in OVERRIDES:
        for ch in refused:
            with pytest.raises(BadRequest) as exc:
                response_overrides({name: f"text/plain{ch}"}, signed)
            assert (exc.value.code, exc.value.details["ArgumentName"]) == ("InvalidArgument", name), repr(ch)
        with pytest.raises(BadRequest) as exc:
            overrides_of({name: "\ufffd"}, f"x-id=GetObject&{name}=%FF", signed)
        assert exc.value.code == "InvalidArgument" and exc.value.details == {"ArgumentName": name,
                                                                            "ArgumentValue": "%FF"}
        assert response_overrides({name: "a\tb"}, signed) == {OVERRIDES[name]: "a\tb"}
        assert overrides_of({name: "\ufffd"}, f"{name}=%EF%BF%BD", signed) == {OVERRIDES[name]: "\ufffd"}
    assert overrides_of({"prefix": "\ufffd"}, "prefix=%FF", signed) == {}  # not an override: not ours to judge
