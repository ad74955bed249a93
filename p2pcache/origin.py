"""The S3 origin: HEAD for an object's identity, ranged GETs pinned to an ETag."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from .errors import (
    Busy, NotFound, ObjectChanged, OriginError, OriginUnavailable, P2PError,
)
from .objects import ObjectInfo

__all__ = ["S3Origin"]

READ_SIZE = 1 << 20

_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)


def convert_error(exc: Exception, bucket: str, key: str) -> P2PError:
    """One boundary where botocore's errors become ours."""
    where = f"s3://{bucket}/{key}"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchBucket",):
            return NotFound(f"no such bucket: {bucket}", code="NoSuchBucket")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            if not key:  # a bucket-level call: only the bucket can be missing
                return NotFound(f"no such bucket: {bucket}", code="NoSuchBucket")
            return NotFound(f"no such object: {where}")
        if code in ("PreconditionFailed", "412") or status == 412:
            return ObjectChanged(f"{where} changed at the origin during the read")
        if status == 403 or code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return OriginError(f"origin denied access to {where}: {code or status}")
        if status == 503 or code in ("SlowDown", "ServiceUnavailable"):
            return Busy(f"origin is throttling reads of {where}: {code or status}")
        return OriginError(f"origin failed for {where}: {code or status} {error.get('Message', '')}".strip())
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return OriginError("no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile")
    if isinstance(exc, _CONNECTION_ERRORS):
        return OriginUnavailable(f"origin unreachable for {where}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OriginError(f"origin failed for {where}: {exc}")
    raise exc  # not an origin failure: a bug, let it show


class S3Origin:
    """A thin adapter over an aiobotocore S3 client."""

    def __init__(self, client) -> None:
        self._client = client

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, endpoint_url: str | None = None, max_connections: int = 64
    ) -> AsyncIterator["S3Origin"]:
        config = AioConfig(
            max_pool_connections=max_connections,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        async with get_session().create_client("s3", endpoint_url=endpoint_url, config=config) as client:
            yield cls(client)

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """The object's identity; NotFound says whether the bucket or the key is missing."""
        try:
            resp = await self._client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            error = convert_error(exc, bucket, key)
            if isinstance(error, NotFound):
                await self.head_bucket(bucket)  # a HEAD's 404 has no body to tell which
            raise error from exc
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        return ObjectInfo(
            bucket=bucket,
            key=key,
            etag=resp["ETag"],
            size=int(resp["ContentLength"]),
            last_modified=headers.get("last-modified", ""),
            content_type=resp.get("ContentType") or "binary/octet-stream",
        )

    async def head_bucket(self, bucket: str) -> None:
        try:
            await self._client.head_bucket(Bucket=bucket)
        except Exception as exc:
            raise convert_error(exc, bucket, "") from exc

    async def list_objects(self, bucket: str, v2: bool = True, **params) -> dict:
        """One page of ListObjects(V2) with S3's parameter names; keys come back decoded."""
        call = self._client.list_objects_v2 if v2 else self._client.list_objects
        try:
            resp = await call(Bucket=bucket, **{k: v for k, v in params.items() if v is not None})
        except Exception as exc:
            raise convert_error(exc, bucket, "") from exc
        resp.pop("ResponseMetadata", None)
        return resp

    async def list_buckets(self) -> dict:
        try:
            resp = await self._client.list_buckets()
        except Exception as exc:
            raise convert_error(exc, "", "") from exc
        resp.pop("ResponseMetadata", None)
        return resp

    async def read_range(
        self, bucket: str, key: str, etag: str, start: int, stop: int
    ) -> AsyncIterator[bytes]:
        """Yield the bytes `[start, stop)` of version `etag`, or raise ObjectChanged."""
        try:
            resp = await self._client.get_object(
                Bucket=bucket, Key=key, IfMatch=etag, Range=f"bytes={start}-{stop - 1}"
            )
            async with resp["Body"] as body:
                while piece := await body.read(READ_SIZE):
                    yield piece
        except Exception as exc:
            raise convert_error(exc, bucket, key) from exc
