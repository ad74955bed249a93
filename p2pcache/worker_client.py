"""The worker's S3-style API as loaders see it: HEAD, ranged GET and listing, errors mapped."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

import aiohttp
import yarl

from .errors import (
    ORIGIN_HEADER, AccessDenied, BadRequest, InvalidAccessKeyId, NotFound, ObjectChanged, P2PError, PeerError,
    RangeNotSatisfiable, RequestTimeTooSkewed, SignatureDoesNotMatch, origin_error,
)
from .buffers import new_bytes
from .objects import ObjectInfo
from .rangereader import RangeReader
from .ring import WorkerInfo
from .signer import Signer

__all__ = ["WorkerClient", "Listing", "parse_listing", "ERROR_HEADER", "REASON_HEADER"]

ERROR_HEADER = "X-P2P-Error"  # the error's code, on every error response of a worker
REASON_HEADER = "X-P2P-Reason"  # its one-line message
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_DENIED = {e.code: e for e in (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, RequestTimeTooSkewed)}


class Listing(NamedTuple):
    objects: list[dict]  # {"Key", "Size", "ETag", "LastModified"}
    prefixes: list[str]
    next_token: str | None


class WorkerClient:
    """One request to one worker; a failure of that worker is PeerError, so the caller tries the next."""

    def __init__(self, session: aiohttp.ClientSession, connect_timeout: float, read_timeout: float,
                 signer: Signer | None = None, raw: RangeReader | None = None) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=read_timeout, sock_connect=connect_timeout)
        self.signer = signer
        self._raw = raw  # ranged GETs of plain-HTTP workers go through it; https ones through aiohttp

    def signed(self, method: str, url: yarl.URL, headers: dict[str, str] | None = None) -> dict[str, str]:
        """`headers`, plus a SigV4 signature of the request when the client has a reader key."""
        headers = dict(headers or ())
        if self.signer is not None:
            headers.update(self.signer.sign(method, url.host_port_subcomponent, url.raw_path,
                                            url.raw_query_string))
        return headers

    async def head(self, worker: WorkerInfo, bucket: str, key: str) -> ObjectInfo:
        url = _url(worker, bucket, key)
        try:
            async with self._session.head(url, headers=self.signed("HEAD", url), timeout=self._timeout,
                                          allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _error(worker, resp, f"s3://{bucket}/{key}")
                h = resp.headers
                return ObjectInfo(bucket, key, h["ETag"], int(h["Content-Length"]),
                                  h.get("Last-Modified", ""), h.get("Content-Type", "binary/octet-stream"))
        except _RETRYABLE as exc:
            raise PeerError(f"{worker.id} at {worker.url}: {exc!r}") from exc
        except (KeyError, ValueError) as exc:
            raise PeerError(f"{worker.id} sent a HEAD answer without ETag/Content-Length: {exc!r}") from exc

    async def get(self, worker: WorkerInfo, info: ObjectInfo, start: int, stop: int,
                  into: memoryview | None = None) -> bytes | bytearray | None:
        """Bytes `[start, stop)` of exactly the version `info` names (into `into` if given)."""
        headers = {"Range": f"bytes={start}-{stop - 1}", "If-Match": info.etag,
                   "Accept-Encoding": "identity"}
        url = _url(worker, info.bucket, info.key)
        if self._raw is not None and url.scheme == "http":
            return await self._get_raw(worker, url, info, start, stop, into, headers)
        try:
            async with self._session.get(url, headers=self.signed("GET", url, headers),
                                         timeout=self._timeout, allow_redirects=False) as resp:
                _check(worker, resp, info, start, stop)
                return await _body(resp, stop - start, into, worker)
        except _RETRYABLE as exc:
            raise PeerError(f"{worker.id} at {worker.url}: {exc!r}") from exc

    async def _get_raw(self, worker: WorkerInfo, url: yarl.URL, info: ObjectInfo, start: int, stop: int,
                       into: memoryview | None, headers: dict[str, str]) -> bytes | bytearray | None:
        """As `get`, on the client's own connections: the body is received into `into` (or a new buffer)."""
        buf, into = new_bytes(stop - start) if into is None else (None, into)
        headers = {"Host": url.host_port_subcomponent, **self.signed("GET", url, headers)}
        try:
            answer = await self._raw.get(url.raw_host, url.port, url.raw_path_qs, headers, into)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            raise PeerError(f"{worker.id} at {worker.url}: {exc!r}") from exc
        _check(worker, answer, info, start, stop)
        if not answer.complete:
            raise PeerError(f"{worker.id} sent Content-Length {answer.headers.get('Content-Length')!r} "
                            f"for {stop - start} bytes")
        return buf

    async def list(self, worker: WorkerInfo, bucket: str, prefix: str, delimiter: str,
                   token: str | None) -> Listing:
        """One page of ListObjectsV2."""
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}  # see parse_listing
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        url = yarl.URL(f"{worker.url}/{quote(bucket, safe='')}", encoded=True).with_query(params)
        try:
            async with self._session.get(url, headers=self.signed("GET", url), timeout=self._timeout,
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _error(worker, resp, f"s3://{bucket}")
                body = await resp.read()
        except _RETRYABLE as exc:
            raise PeerError(f"{worker.id} at {worker.url}: {exc!r}") from exc
        try:
            return parse_listing(body)
        except (ET.ParseError, ValueError, TypeError) as exc:
            raise PeerError(f"{worker.id} sent a malformed listing: {exc!r}") from exc


def _check(worker: WorkerInfo, resp, info: ObjectInfo, start: int, stop: int) -> None:
    """Raise unless `resp` (aiohttp's or the range reader's) is bytes `[start, stop)` of `info`'s version."""
    what = f"s3://{info.bucket}/{info.key}"
    if resp.status not in (200, 206):
        raise _error(worker, resp, what)
    if resp.headers.get("ETag") != info.etag:  # a worker that ignores If-Match
        raise _changed(worker, f"{what} changed: ETag {resp.headers.get('ETag')} is not {info.etag}")
    expected = f"bytes {start}-{stop - 1}/{info.size}"
    if resp.status == 206 and resp.headers.get("Content-Range") != expected or (
            resp.status == 200 and (start, stop) != (0, info.size)):
        raise PeerError(f"{worker.id} answered {resp.status} {resp.headers.get('Content-Range')!r} for {expected!r}")


def _url(worker: WorkerInfo, bucket: str, key: str) -> yarl.URL:
    return yarl.URL(f"{worker.url}/{quote(bucket, safe='')}/{quote(key, safe='/~')}", encoded=True)


async def _body(resp: aiohttp.ClientResponse, length: int, into: memoryview | None,
                worker: WorkerInfo) -> bytes | None:
    if into is None:
        data = await resp.read()
        got = len(data)
    else:
        data, got = None, 0
        async for piece in resp.content.iter_any():
            if got + len(piece) > length:
                break
            into[got:got + len(piece)] = piece
            got += len(piece)
    if got != length:  # a worker that aborts after the status line sends fewer bytes
        raise PeerError(f"{worker.id} sent {got} of {length} bytes")
    return data


def _error(worker: WorkerInfo, resp, what: str) -> P2PError:
    """The named error a worker's error response stands for; PeerError if another worker may do better."""
    code = resp.headers.get(ERROR_HEADER, "")
    reason = resp.headers.get(REASON_HEADER, "") or resp.reason or ""
    if resp.status == 404:
        return NotFound(f"{what}: {reason}", code=code or "NoSuchKey")
    if resp.status == 412 or code in ("PreconditionFailed", "ObjectChanged"):
        return _changed(worker, f"{what} changed at the origin during the read")
    if resp.status == 403:  # S3's code: AccessDenied, or which part of the signature was wrong
        return _DENIED.get(code, AccessDenied)(f"{what}: {reason}")
    if resp.status == 416:
        size = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return RangeNotSatisfiable(int(size) if size.isdigit() else 0)
    if 400 <= resp.status < 500:
        return BadRequest(f"{what}: {worker.id} answered {resp.status} {code}: {reason}")
    if resp.headers.get(ORIGIN_HEADER):  # S3 failed at the chunk's owner: another worker would ask it again
        retry_after = resp.headers.get("Retry-After", "")
        return origin_error(resp.headers[ORIGIN_HEADER], f"{what}: {reason}",
                            float(retry_after) if retry_after.isdigit() else None)
    return PeerError(f"{worker.id} answered {resp.status} {code}: {reason}".rstrip(": "))


def _changed(worker: WorkerInfo, message: str) -> ObjectChanged:
    exc = ObjectChanged(message)
    exc.worker = worker  # it has just seen the new version: the place to ask for it
    return exc


def parse_listing(body: bytes) -> Listing:
    """A ListObjectsV2 page. Ask for it with `encoding-type=url`: unencoded, a key with a
    character XML 1.0 cannot carry is not XML (ParseError), and a carriage return in a key
    reads as a newline. Keys are decoded if S3 says it encoded them (it may not: some
    S3-compatible servers ignore the parameter), as botocore does."""
    root = ET.fromstring(body)
    text = unquote_plus if root.findtext(f"{_NS}EncodingType") == "url" else str
    objects = [{
        "Key": text(c.findtext(f"{_NS}Key")), "Size": int(c.findtext(f"{_NS}Size") or 0),
        "ETag": c.findtext(f"{_NS}ETag") or "", "LastModified": c.findtext(f"{_NS}LastModified") or "",
    } for c in root.iter(f"{_NS}Contents")]
    prefixes = [text(p.findtext(f"{_NS}Prefix")) for p in root.iter(f"{_NS}CommonPrefixes")]
    truncated = root.findtext(f"{_NS}IsTruncated") == "true"
    token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
    return Listing(objects, prefixes, token)
