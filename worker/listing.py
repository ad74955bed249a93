"""S3 listing on the worker: ListBuckets, ListObjects(V2), HeadBucket, from the origin.

Listings are answered from the origin and cached for the metadata TTL. A
ListObjects(V2) page is S3's own XML, byte for byte (the reader's arguments go
to S3 as given, so encoding, echoes and continuation tokens are S3's); S3's
400s pass through with S3's code. ListBuckets is paginated here, over the
buckets this cache serves, so `max-buckets` works whatever the origin supports.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import datetime, timezone
from typing import Callable, Mapping
from xml.sax.saxutils import escape

from aiohttp import web

from p2pcache.conditions import max_age
from p2pcache.errors import InvalidArgument, Unsupported
from p2pcache.origin import S3Origin
from p2pcache.s3query import check_utf8

from .ttlcache import TTLCache

__all__ = ["Listings", "V2_PARAMS", "V1_PARAMS", "MAX_BUCKETS", "BUCKET_SUBRESOURCES"]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# query parameter -> botocore parameter
V2_PARAMS = {"prefix": "Prefix", "delimiter": "Delimiter", "continuation-token": "ContinuationToken",
             "start-after": "StartAfter", "max-keys": "MaxKeys", "encoding-type": "EncodingType"}
V1_PARAMS = {"prefix": "Prefix", "delimiter": "Delimiter", "marker": "Marker", "max-keys": "MaxKeys",
             "encoding-type": "EncodingType"}
MAX_BUCKETS = 10_000
# A bucket's sub-resources other than its listing: botocore's (its signer's list, auth.py
# HmacV1Auth.QSAOfInterest, and the `/{Bucket}?name` of its S3 model's operations, of any method:
# `delete` is POST DeleteObjects). A listing in their place would be a silent wrong answer.
# `location` is answered. tests/test_listings.py checks the list against botocore's.
BUCKET_SUBRESOURCES = ("abac", "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "encryption",
                       "intelligent-tiering", "inventory", "lifecycle", "logging", "metadataAnnotationTable",
                       "metadataConfiguration", "metadataInventoryTable", "metadataJournalTable", "metadataTable",
                       "metrics", "notification", "object-lock", "ownershipControls", "policy", "policyStatus",
                       "publicAccessBlock", "replication", "requestPayment", "session", "storageClass", "tagging",
                       "uploads", "versioning", "versions", "website")
_INTEGER = re.compile(r"-?[0-9]+")
_BUCKET_BYTES = 512  # about what one bucket of a ListBuckets answer holds (a dict, a name, a date)


class Listings:
    """The listing calls, each answer cached for `ttl` seconds: at most `max_bytes` of them (a
    page bigger than that alone is not cached), each dropped when it expires."""

    def __init__(self, origin: S3Origin, ttl: float, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 256) -> None:
        self._origin = origin
        self._cache = TTLCache(ttl, clock, max_entries, max_bytes=max_bytes, size=_size, drop_expired=True)

    @property
    def cached_bytes(self) -> int:
        return self._cache.bytes

    async def close(self) -> None:
        await self._cache.close()

    async def list_objects(self, request: web.BaseRequest, bucket: str) -> web.Response:
        """ListObjects(V2), or GetBucketLocation; another sub-resource of the bucket is a 501."""
        q = request.query
        refuse_subresources(q)
        if "location" in q:
            region = await self._cache.get(("location", bucket), lambda: self._origin.bucket_location(bucket),
                                           max_age(request.headers))
            return web.Response(body=f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="{NS}">'
                                     f'{escape(region)}</LocationConstraint>', content_type="application/xml")
        v2 = q.get("list-type") == "2"
        check_utf8(request.rel_url.raw_query_string)
        params = {api: q[name] for name, api in (V2_PARAMS if v2 else V1_PARAMS).items() if name in q}
        if "MaxKeys" in params:
            params["MaxKeys"] = _max_keys(params["MaxKeys"])
        if v2 and "fetch-owner" in q:
            params["FetchOwner"] = q["fetch-owner"] == "true"
        body = await self._cache.get(("list", v2, bucket, tuple(sorted(params.items()))),
                                     lambda: self._origin.list_objects(bucket, v2, **params),
                                     max_age(request.headers))
        return web.Response(body=body, content_type="application/xml")

    async def list_buckets(self, request: web.BaseRequest,
                           readable: Callable[[str], bool] = lambda bucket: True) -> web.Response:
        """The origin's buckets that `readable` lets this request see, a page at a time."""
        q = request.query
        limit = _max_buckets(q.get("max-buckets"))
        after = _token_name(q["continuation-token"]) if "continuation-token" in q else None
        prefix = q.get("prefix")
        result = await self._cache.get(("buckets",), self._origin.list_buckets, max_age(request.headers))
        buckets = [b for b in result.get("Buckets", []) if readable(b["Name"])
                   and (not prefix or b["Name"].startswith(prefix))
                   and (after is None or b["Name"] > after)]
        buckets.sort(key=lambda b: b["Name"])
        page, more = buckets[:limit], len(buckets) > limit
        owner = result.get("Owner", {})
        xml = ["<Buckets>", *(_bucket_xml(b) for b in page), "</Buckets>",
               f"<Owner><ID>{escape(owner.get('ID', ''))}</ID>"
               f"<DisplayName>{escape(owner.get('DisplayName', ''))}</DisplayName></Owner>"]
        if more:
            xml.append(f"<ContinuationToken>{_token(page[-1]['Name'])}</ContinuationToken>")
        if prefix is not None:
            xml.append(f"<Prefix>{escape(prefix)}</Prefix>")
        return _xml(f'<ListAllMyBucketsResult xmlns="{NS}">{"".join(xml)}</ListAllMyBucketsResult>')

    async def head_bucket(self, request: web.BaseRequest, bucket: str) -> str:
        """HeadBucket: the bucket's region, "" if S3 did not say (a NotFound if there is no such bucket).
        With another sub-resource (HEAD of `?acl`: that answer's headers) a 501, as GET's."""
        refuse_subresources(request.query)
        return await self._cache.get(("bucket", bucket), lambda: self._origin.head_bucket(bucket),
                                     max_age(request.headers))


def refuse_subresources(query: Mapping[str, str]) -> None:
    """A 501 for a bucket's sub-resource other than its listing and location: a listing (or a
    HeadBucket's answer) in its place would be a silent wrong answer."""
    for name in BUCKET_SUBRESOURCES:
        if name in query:
            raise Unsupported(f"p2pcache answers a bucket's listing and location only: '{name}' is not supported")


def _size(value: bytes | str | dict) -> int:
    """The bytes a cached answer holds, about: a page's XML, a region, a ListBuckets answer."""
    if isinstance(value, (bytes, str)):
        return len(value)
    return _BUCKET_BYTES * (1 + len(value.get("Buckets", ())))


def _number(raw: str) -> int:
    """The value of an `_INTEGER`, any past 2^63 as 2^63 (or its negative): int() refuses more
    than 4300 digits, a ValueError that would be a 500."""
    if len(raw.lstrip("-").lstrip("0")) <= 19:
        return int(raw)
    return -(2**63) if raw.startswith("-") else 2**63


def _max_keys(raw: str) -> int:
    """S3's checks of `max-keys`; a value above 1000 goes to S3, which answers 1000 at most."""
    if not _INTEGER.fullmatch(raw):
        raise InvalidArgument("Provided max-keys not an integer or within integer range", "max-keys", raw)
    if not 0 <= _number(raw) <= 2**31 - 1:
        raise InvalidArgument("Argument maxKeys must be an integer between 0 and 2147483647", "maxKeys", raw)
    return int(raw)


def _max_buckets(raw: str | None) -> int:
    if raw is None:
        return MAX_BUCKETS
    if not _INTEGER.fullmatch(raw) or not 1 <= _number(raw) <= MAX_BUCKETS:
        raise InvalidArgument(f"Argument max-buckets must be an integer between 1 and {MAX_BUCKETS}",
                              "max-buckets", raw)
    return int(raw)


def _token(name: str) -> str:
    """An opaque continuation token: the last bucket name of the page (names are ordered)."""
    return base64.urlsafe_b64encode(name.encode()).decode()


def _token_name(token: str) -> str:
    try:
        name = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        name = ""
    if not name:
        raise InvalidArgument("The continuation token provided is incorrect", "continuation-token", token)
    return name


def _bucket_xml(b: Mapping) -> str:
    region = f"<BucketRegion>{escape(b['BucketRegion'])}</BucketRegion>" if b.get("BucketRegion") else ""
    return (f"<Bucket><Name>{escape(b['Name'])}</Name>"
            f"<CreationDate>{_iso(b.get('CreationDate'))}</CreationDate>{region}</Bucket>")


def _xml(body: str) -> web.Response:
    return web.Response(text='<?xml version="1.0" encoding="UTF-8"?>\n' + body,
                        content_type="application/xml")


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
