"""S3's object headers: which ones a cache keeps with an object, and the `response-*` overrides."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from .errors import BadRequest, InvalidArgument, OriginError
from .s3query import check_utf8

__all__ = ["stored_headers", "check_sendable", "response_overrides", "is_signed", "OVERRIDES"]

# Headers S3 stores with an object and sends on every GET and HEAD of it, by their
# lower-case name -> the spelling we send. `x-amz-meta-*` (user metadata) too.
_STORED = {
    "cache-control": "Cache-Control",
    "content-disposition": "Content-Disposition",
    "content-encoding": "Content-Encoding",
    "content-language": "Content-Language",
    "expires": "Expires",
    "x-amz-version-id": "x-amz-version-id",
    "x-amz-storage-class": "x-amz-storage-class",
    "x-amz-server-side-encryption": "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled": "x-amz-server-side-encryption-bucket-key-enabled",
    "x-amz-website-redirect-location": "x-amz-website-redirect-location",
    "x-amz-missing-meta": "x-amz-missing-meta",
    "x-amz-object-lock-mode": "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date": "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold": "x-amz-object-lock-legal-hold",
    "x-amz-replication-status": "x-amz-replication-status",
    "x-amz-restore": "x-amz-restore",
    "x-amz-expiration": "x-amz-expiration",
}

# GetObject's (and HeadObject's) query parameters that replace a header of the answer.
OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}

# What a header value cannot hold (RFC 9110 5.5): CR or LF would end the header or the answer's
# head, and aiohttp refuses to write any of them (a ValueError, a 500, in resp.prepare).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def stored_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The headers of a HEAD answer that belong to the object, in the order S3 sent them.

    Per-request headers (date, request ids, lengths, ranges) and the ones the
    cache sets itself (ETag, Last-Modified, Content-Type) are left out, and so
    are checksums: they describe the whole object, not a range of it.
    """
    out = []
    for name, value in headers.items():
        low = name.lower()
        if low.startswith("x-amz-meta-"):
            out.append((low, value))
        elif low in _STORED:
            out.append((_STORED[low], value))
    return tuple(out)


def check_sendable(headers: Iterable[tuple[str, str]], where: str) -> None:
    """An object's headers hold nothing an answer cannot carry. An S3-compatible store may keep a
    control character in user metadata: that is the origin's error (502), not a header dropped
    without a word, nor a 500 when the answer's head is written."""
    for name, value in headers:
        if _CONTROL.search(value):
            shown = value.encode("unicode_escape").decode("ascii")
            raise OriginError(f"origin sent {name}: {shown!r} for {where}: a control character no HTTP answer "
                              f"can carry")


def is_signed(query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    """Whether the request carries a signature (header or presigned URL); the cache does not check it."""
    return ("Authorization" in headers or "X-Amz-Signature" in query or "Signature" in query)


def response_overrides(query: Mapping[str, str], raw_query: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers `response-*` parameters set, as S3 applies them: only on signed requests.

    S3 refuses them on anonymous requests with 400 InvalidRequest; so does the cache. A value
    no header can carry, not UTF-8 as sent (`raw_query`) or with a control character, is
    400 InvalidArgument.
    """
    overrides = {OVERRIDES[name]: query[name] for name in OVERRIDES if name in query}
    if overrides and not is_signed(query, headers):
        raise BadRequest("Request specific response headers cannot be used for anonymous GET requests.")
    if overrides:
        check_utf8(raw_query, OVERRIDES)
    for name in OVERRIDES:
        if name in query and _CONTROL.search(query[name]):
            shown = query[name].encode("unicode_escape").decode("ascii")  # no raw control character in the XML
            raise InvalidArgument(f"{name} must not contain a control character other than a tab", name, shown)
    return overrides
