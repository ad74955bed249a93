"""S3 listing on the worker: ListBuckets, ListObjects(V2), HeadBucket, from the origin.

Listings are answered from the origin and cached for the metadata TTL; the XML
is S3's own form, so SDKs and s3fs parse it unchanged.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

from aiohttp import web

from p2pcache.errors import BadRequest
from p2pcache.origin import S3Origin

from .ttlcache import TTLCache

__all__ = ["Listings", "V2_PARAMS", "V1_PARAMS"]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# query parameter -> (botocore parameter, result field it is echoed in)
V2_PARAMS = {"prefix": "Prefix", "delimiter": "Delimiter", "continuation-token": "ContinuationToken",
             "start-after": "StartAfter", "max-keys": "MaxKeys"}
V1_PARAMS = {"prefix": "Prefix", "delimiter": "Delimiter", "marker": "Marker", "max-keys": "MaxKeys"}
_ENCODED = {"Key", "Prefix", "Delimiter", "StartAfter", "Marker", "NextMarker"}


class Listings:
    def __init__(self, origin: S3Origin, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 1024) -> None:
        self._origin = origin
        self._cache = TTLCache(ttl, clock, max_entries)

    async def close(self) -> None:
        await self._cache.close()

    async def list_objects(self, request: web.BaseRequest, bucket: str) -> web.Response:
        q = request.query
        v2 = q.get("list-type") == "2"
        names = V2_PARAMS if v2 else V1_PARAMS
        params = {api: q[name] for name, api in names.items() if name in q}
        if "MaxKeys" in params:
            if not params["MaxKeys"].isdigit():
                raise BadRequest("max-keys must be a non-negative integer")
            params["MaxKeys"] = min(int(params["MaxKeys"]), 1000)
        if v2 and q.get("fetch-owner") == "true":
            params["FetchOwner"] = True
        result = await self._cache.get(("list", v2, bucket, tuple(sorted(params.items()))),
                                    lambda: self._origin.list_objects(bucket, v2, **params))
        encode = q.get("encoding-type") == "url"
        return _xml(_list_xml(result, bucket, v2, encode))

    async def list_buckets(self, request: web.BaseRequest,
                           readable: Callable[[str], bool] = lambda bucket: True) -> web.Response:
        """The origin's buckets that `readable` lets this request see."""
        result = await self._cache.get(("buckets",), self._origin.list_buckets)
        owner = result.get("Owner", {})
        buckets = "".join(
            f"<Bucket><Name>{escape(b['Name'])}</Name>"
            f"<CreationDate>{_iso(b.get('CreationDate'))}</CreationDate></Bucket>"
            for b in result.get("Buckets", []) if readable(b["Name"]))
        return _xml(f'<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>{escape(owner.get("ID", ""))}</ID>'
                    f'<DisplayName>{escape(owner.get("DisplayName", ""))}</DisplayName></Owner>'
                    f"<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>")

    async def head_bucket(self, bucket: str) -> None:
        await self._cache.get(("bucket", bucket), lambda: self._origin.head_bucket(bucket))


def _xml(body: str) -> web.Response:
    return web.Response(text='<?xml version="1.0" encoding="UTF-8"?>\n' + body,
                        content_type="application/xml")


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _el(name: str, value, encode: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
        if encode and name in _ENCODED:
            text = quote_plus(text, safe="/")
    return f"<{name}>{escape(text)}</{name}>"


def _list_xml(r: dict, bucket: str, v2: bool, encode: bool) -> str:
    head = [_el("Name", bucket, False), _el("Prefix", r.get("Prefix", ""), encode)]
    fields = (("KeyCount", "MaxKeys", "Delimiter", "IsTruncated", "ContinuationToken",
               "NextContinuationToken", "StartAfter") if v2
              else ("Marker", "NextMarker", "MaxKeys", "Delimiter", "IsTruncated"))
    head += [_el(f, r.get(f), encode) for f in fields]
    if encode:
        head.append("<EncodingType>url</EncodingType>")
    contents = "".join(
        "<Contents>" + _el("Key", o["Key"], encode) + f"<LastModified>{_iso(o.get('LastModified'))}</LastModified>"
        + _el("ETag", o.get("ETag"), False) + _el("Size", o.get("Size"), False)
        + _el("StorageClass", o.get("StorageClass", "STANDARD"), False)
        + (f"<Owner>{_el('ID', o['Owner'].get('ID'), False)}{_el('DisplayName', o['Owner'].get('DisplayName'), False)}</Owner>"
           if o.get("Owner") else "")
        + "</Contents>"
        for o in r.get("Contents", []))
    prefixes = "".join(f"<CommonPrefixes>{_el('Prefix', p['Prefix'], encode)}</CommonPrefixes>"
                       for p in r.get("CommonPrefixes", []))
    return f'<ListBucketResult xmlns="{NS}">' + "".join(head) + contents + prefixes + "</ListBucketResult>"
