"""What a reader or a peer may ask for, checked before anything is read, fetched or written."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping
from urllib.parse import unquote, unquote_to_bytes

from p2pcache.errors import BadRequest, NotFound, ObjectChanged, Unsupported
from p2pcache.objects import BUCKET_NAME, MAX_OBJECT_SIZE, ChunkId

if TYPE_CHECKING:  # not imported at run time: serving processes use this module without S3
    from aiohttp import web

    from .objects import ObjectCache

__all__ = ["request_path", "object_path", "check_key", "check_object_query", "check_chunk", "check_chunk_object",
           "parse_hop", "UNSUPPORTED_PARAMS", "MAX_OBJECT_SIZE"]

MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
_ETAG = re.compile(r'"[!#-~]{1,254}"')  # quoted, printable ASCII without quotes or spaces
_BUCKET = BUCKET_NAME
_HOP = re.compile(r"[0-9]{1,3}")
# Query parameters that make GET/HEAD of an object something other than its current bytes:
# answering them with the current version's bytes would be a silent lie. versionId, uploadId
# (ListParts) and the `/{Bucket}/{Key+}?name` of botocore's S3 model, of any method (`restore`,
# `select` are POSTs). tests/test_inputs.py checks the list against botocore's.
UNSUPPORTED_PARAMS = ("versionId", "uploadId", "acl", "annotation", "attributes", "encryption", "legal-hold",
                      "renameObject", "restore", "retention", "select", "select-type", "tagging", "torrent",
                      "uploads")


def request_path(request: "web.BaseRequest") -> str:
    """The path of the request's target as sent (percent-encoded, without its query).

    A "#" is no part of a request target (RFC 9112): one there is a key's "#" that its client
    did not escape. yarl would take it and the rest for a fragment, and the key before it
    for the one asked: `/b/odd#frag` would read `odd`. InvalidURI, as S3 says of a target it
    cannot parse."""
    if "#" in request.raw_path:
        raise BadRequest("a '#' in the request target: escape it as %23 in a key", code="InvalidURI")
    return request.rel_url.raw_path


def object_path(raw_path: str) -> tuple[str, str]:
    """(bucket, key) that a path-style S3 request names, from its path as sent (percent-encoded):
    ("", "") for the root (ListBuckets), (bucket, "") for a bucket.

    Decoded here, not taken from aiohttp's `request.path`: yarl leaves an escape that is not
    UTF-8 as it was, so `/b/%FF` would read as the key `%FF`, which is `/b/%25FF`'s, another
    object's. An escaped "/" in the bucket part is no separator (`/b%2Fk` names the bucket
    "b/k"), and `//b/k` names no bucket: both are InvalidBucketName, not a listing or `b/k`.
    """
    bucket, _, key = raw_path[1:].partition("/")
    escaped = "%" in raw_path  # most paths have no escape (and the fast path's never): nothing to decode
    if escaped:
        bucket = unquote(bucket, errors="replace")  # a replaced byte is no bucket character either
    if (bucket or key) and not _BUCKET.fullmatch(bucket):
        raise BadRequest(f"The specified bucket is not valid: {bucket!r}", code="InvalidBucketName")
    if escaped:
        try:
            key = unquote_to_bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the key is not valid UTF-8") from None
    check_key(key)
    return bucket, key


def check_key(key: str) -> None:
    """A key S3 could hold: valid UTF-8 (no lone surrogates) and at most 1024 bytes."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("the key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise BadRequest(f"the key is {size} bytes long; S3 keys have at most {MAX_KEY_BYTES}")


def check_object_query(query: Mapping[str, str]) -> None:
    """GetObject/HeadObject of the current version only: versionId and sub-resources get 501."""
    for name in UNSUPPORTED_PARAMS:
        if name in query:
            raise Unsupported(f"p2pcache serves the current version of an object only: "
                              f"'{name}' is not supported")


def check_chunk(c: ChunkId, ring_chunk_size: int) -> None:
    """A chunk this cluster could hold: its chunk size, a sane object, an index inside it."""
    if not _BUCKET.fullmatch(c.bucket):
        raise BadRequest("malformed bucket name")
    check_key(c.key)
    if not c.key:
        raise BadRequest("empty key")
    if not _ETAG.fullmatch(c.etag):
        raise BadRequest("malformed etag: want a quoted string of printable ASCII")
    if c.chunk_size != ring_chunk_size:
        raise BadRequest(f"chunk_size {c.chunk_size} is not the ring's {ring_chunk_size}")
    if not 0 <= c.size <= MAX_OBJECT_SIZE:
        raise BadRequest(f"size must be from 0 to {MAX_OBJECT_SIZE} bytes")
    if c.index < 0 or c.start >= max(c.size, 1):
        raise BadRequest(f"chunk {c.index} is outside an object of {c.size} bytes")


async def check_chunk_object(objects: ObjectCache, c: ChunkId) -> None:
    """Before a fill: the chunk names the object's current version and its true size.

    A request for another size would cut and store chunks that no reader asks
    for; another ETag would fail at the origin anyway. One cached HEAD per
    object and TTL, the same a reader's request costs.
    """
    try:
        info = await objects.get(c.bucket, c.key)
    except NotFound:
        info = None
    if info is None or info.etag != c.etag:
        # The requester may have seen a newer version, or the object created since we
        # remembered it missing (a reader's no-cache or If-Match asked S3 just now).
        objects.invalidate(c.bucket, c.key)
        info = await objects.get(c.bucket, c.key)
    if info.etag != c.etag:
        raise ObjectChanged(f"s3://{c.bucket}/{c.key} is at version {info.etag}, not {c.etag}")
    if info.size != c.size:
        raise BadRequest(f"s3://{c.bucket}/{c.key} has {info.size} bytes, not {c.size}")


def parse_hop(value: str | None, max_hops: int) -> int:
    if value is None:
        return 1
    if not _HOP.fullmatch(value) or int(value) > max_hops:
        raise BadRequest(f"hop must be from 0 to {max_hops}")
    return int(value)
