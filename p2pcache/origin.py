"""The S3 origin: HEADs of objects and parts, ranged GETs pinned to an ETag, listings as S3 sent
them, faults ridden out.

Every request passes the endpoint's circuit breaker (p2pcache.breaker) and a
transient failure is retried by the policy in p2pcache.retry; a ranged GET
cut short or stalled (nothing for `read_timeout` seconds: aiohttp's per-read
socket timeout, which botocore's `read_timeout` sets and which also covers
the body) resumes from the byte reached, with the same `If-Match`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import random
import re
import time
import traceback
from typing import AsyncIterator, Awaitable, Callable, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.handlers import _handle_200_error, set_list_objects_encoding_type_url
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from .breaker import OPEN, Breaker
from .conditions import etag_matches
from .errors import (
    BadRequest, InvalidPartNumber, NotFound, ObjectChanged, OriginDenied, OriginError, OriginThrottled,
    OriginTimeout, OriginUnavailable, P2PError,
)
from .objects import MAX_OBJECT_SIZE, ObjectInfo
from .retry import RetryPolicy, is_transient
from .s3headers import check_sendable, stored_headers

__all__ = ["S3Origin", "OriginHooks", "PartHead", "convert_error", "not_found", "check_endpoint", "brief"]

log = logging.getLogger("p2pcache.origin")
READ_SIZE = 1 << 20  # aiohttp buffers up to twice what a read asks for: see `read_range`'s `piece`
META_ATTEMPTS = 3  # a HEAD or a listing is on a reader's critical path: a few quick tries
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
REASON_CHARS = 240  # a reason quoting S3 or botocore is one line of at most this many characters
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_LISTINGS = ("ListObjects", "ListObjectsV2")
# The breaker's kinds of request: a HEAD or a listing that succeeds says nothing of ranged GETs.
DATA, META = "data", "meta"
# S3's throttling: 503 SlowDown, or 429 TooManyRequests (some S3-compatible servers and gateways).
_THROTTLING_CODES = {"SlowDown", "ServiceUnavailable", "TooManyRequests"}
# A 400 with one of these codes is about the worker's own credentials, not the reader's request.
_CREDENTIAL_CODES = {"ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
                     "IncompleteSignature", "MissingSecurityHeader", "InvalidSecurity"}

_TIMEOUTS = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    aiohttp.ServerTimeoutError,
    TimeoutError,
)
_CUT = (
    aiohttp.ClientPayloadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
)
# botocore's parsers raise ValueError, KeyError, ... for an answer they cannot read (a header
# such as `Last-Modified: garbage`): S3's malformed answer, not a bug of ours.
_PARSERS = ("botocore.parsers", "aiobotocore.parsers")
_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    aiohttp.ClientError,
    OSError,
)


def check_endpoint(url: str) -> None:
    """An endpoint URL botocore takes, over HTTP(S); ValueError otherwise (botocore's own comes late)."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")


def not_found(bucket: str, key: str, code: str) -> NotFound:
    """S3's answer that the bucket (`NoSuchBucket`) or the object (`NoSuchKey`) does not exist."""
    if code == "NoSuchBucket":
        return NotFound(f"no such bucket: {bucket}", code=code)
    return NotFound(f"no such object: s3://{bucket}/{key}", code=code)


def brief(text: object, limit: int = REASON_CHARS) -> str:
    """A foreign message (S3's, botocore's, aiohttp's, which may quote kilobytes of binary) as one
    short printable line: whitespace runs made one space, other non-printables escaped, cut."""
    line = _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), " ".join(str(text).split()))
    return line if len(line) <= limit else line[:limit - 3] + "..."


def unparsable(exc: BaseException) -> bool:
    """Whether `exc` was raised while botocore parsed S3's answer."""
    return any(frame.f_globals.get("__name__") in _PARSERS for frame, _ in traceback.walk_tb(exc.__traceback__))


def convert_error(exc: Exception, bucket: str, key: str, read_timeout: float | None = None) -> P2PError:
    """One boundary where botocore's errors become ours, each naming its cause in one short line."""
    where = f"s3://{bucket}/{key}"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchBucket",):
            return not_found(bucket, key, "NoSuchBucket")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            # a bucket-level call (no key): only the bucket can be missing
            return not_found(bucket, key, "NoSuchKey" if key else "NoSuchBucket")
        if code in ("PreconditionFailed", "412") or status == 412:
            return ObjectChanged(f"{where} changed at the origin during the read")
        # A HEAD's error has no body: botocore's code is then the status, its message the reason phrase.
        named = "" if code.isdigit() else code
        if status == 403 or code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return OriginDenied(f"origin denied access to {where}: {named or status}")
        if status in (429, 503) or code in _THROTTLING_CODES:
            said = named or ("TooManyRequests" if status == 429 else
                             f"SlowDown (taken as such: {exc.operation_name}'s {status} has no body to name it)")
            return OriginThrottled(f"origin throttling reads of {where}: {status} {said}")
        message = brief(" ".join(str(x) for x in (status, named, error.get("Message", "")) if x))
        return OriginError(f"origin failed for {where}: {message}",
                           transient=status >= 500 or code == "RequestTimeout")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return OriginError("no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile")
    if isinstance(exc, _TIMEOUTS):
        quiet = f"nothing for {read_timeout:g} s" if read_timeout else "timed out"
        return OriginTimeout(f"origin timeout for {where}: {quiet} ({type(exc).__name__})")
    if isinstance(exc, _CUT):
        return OriginUnavailable(f"origin cut the response for {where}: {brief(exc)}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return OriginUnavailable(_connection_failure(exc, where))
    if isinstance(exc, botocore.exceptions.HTTPClientError):  # e.g. bytes past the last answer's end
        inner = exc.kwargs.get("error") or exc
        return OriginUnavailable(f"origin broke HTTP on the connection for {where}: "
                                 f"{brief(getattr(inner, 'message', None) or inner)}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OriginError(f"origin failed for {where}: {brief(exc)}")
    if unparsable(exc):
        return OriginError(f"origin's answer for {where} cannot be parsed: {brief(f'{type(exc).__name__}: {exc}')}")
    raise exc  # not an origin failure: a bug, let it show


def _connection_failure(exc: Exception, where: str) -> str:
    """What happened to the connection: one reset in the middle of a request is not one that
    could not be made (botocore calls both "Could not connect to the endpoint URL")."""
    inner = getattr(exc, "kwargs", {}).get("error") or exc  # botocore wraps aiohttp's error
    if isinstance(inner, aiohttp.ClientConnectorError):
        return f"origin unreachable for {where}: {brief(exc)}"
    if isinstance(inner, ConnectionResetError) or getattr(inner, "errno", None) == errno.ECONNRESET:
        return f"connection reset by the origin during a request for {where}"
    if isinstance(inner, aiohttp.ServerDisconnectedError):
        return f"origin closed the connection without answering a request for {where}"
    return f"origin unreachable for {where}: {brief(exc)}"


def _too_slow(where: str, got: int, total: int, spent: float) -> OriginTimeout:
    """A ranged read that S3 sent too slowly to end within its deadline."""
    return OriginTimeout(f"origin timeout for {where}: too slow, {got} of {total} bytes "
                         f"in {spent:.1f} s, the read's deadline")


def refused(exc: Exception) -> BadRequest | None:
    """S3's own 400 for a request a reader shaped (a listing's arguments), to pass on as S3 said it."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 400 or code in _CREDENTIAL_CODES:
        return None
    return BadRequest(brief(error.get("Message") or "Bad Request"), code=code if code and not code.isdigit()
                      else "InvalidRequest")


def part_beyond(exc: Exception, part: int) -> InvalidPartNumber | None:
    """S3's 416 to a HEAD ?partNumber= past the object's last part."""
    if isinstance(exc, botocore.exceptions.ClientError) and \
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
        return InvalidPartNumber(part, 0)
    return None


def _required(resp: dict, name: str, header: str, where: str):
    """Field `name` of a HEAD's answer, which the cache cannot do without; OriginError if the
    origin left its header out."""
    if resp.get(name) is None:
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        raise OriginError(f"origin answered {status} to a HEAD of {where} without the {header} header")
    return resp[name]


class PartHead(NamedTuple):
    """What a HEAD of one part said: its length, where it starts if S3 said so, how many parts."""

    length: int
    start: int | None  # from Content-Range; some servers send only the length
    total: int | None  # the object's size, from Content-Range
    count: int | None  # x-amz-mp-parts-count: None for an object not uploaded in parts


def _before_parse(operation_model, response_dict, customized_response_dict, **kwargs) -> None:
    """A listing is passed on as S3 wrote it: keep its bytes, let botocore parse only errors.

    In place of botocore's check of a 200 for an error inside (`_handle_200_error`), which
    runs first: it takes a listing that is not well-formed XML 1.0 for a cut response (a 500,
    retried, and counted by the breaker), and S3 writes a key's control characters as they
    are unless asked for `encoding-type=url`. A cut response fails as it is read (aiohttp
    checks the length); S3 sends a 200 holding an error for copies, never for a listing."""
    if operation_model.name not in _LISTINGS:
        _handle_200_error(operation_model, response_dict, **kwargs)
    elif response_dict["status_code"] < 300:
        customized_response_dict["RawBody"] = response_dict["body"]
        response_dict["body"] = b""


@dataclasses.dataclass
class OriginHooks:
    """Callbacks for metrics: a request sent, a retry (by cause), the breaker's new state."""

    request: Callable[[], None] = lambda: None
    retry: Callable[[str], None] = lambda cause: None
    breaker: Callable[[str], None] = lambda state: None


class S3Origin:
    """An aiobotocore S3 client behind one breaker (one endpoint) and one retry policy."""

    def __init__(self, client, *, endpoint: str = "S3", read_timeout: float | None = None,
                 policy: RetryPolicy = RetryPolicy(), breaker: Breaker | None = None,
                 hooks: OriginHooks | None = None, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.endpoint = endpoint
        self._read_timeout = read_timeout
        self.policy = policy
        self._meta_policy = dataclasses.replace(policy, attempts=META_ATTEMPTS)
        self.breaker = breaker or Breaker(clock=clock)
        self._hooks = hooks or OriginHooks()
        self._rand, self._clock = rand, clock
        events = client.meta.events
        for op in _LISTINGS:  # ask S3 for exactly what the reader asked: no encoding-type unless it did
            events.unregister(f"before-parameter-build.s3.{op}", set_list_objects_encoding_type_url)
        events.unregister("before-parse.s3.*", _handle_200_error)
        events.register_first("before-parse.s3.*", _before_parse)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, endpoint_url: str | None = None, max_connections: int = 64,
                      read_timeout: float = 5.0, deadline: float = 30.0, breaker_threshold: int = 8,
                      hooks: OriginHooks | None = None) -> AsyncIterator["S3Origin"]:
        config = AioConfig(
            max_pool_connections=max_connections,
            retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours
            connect_timeout=read_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        async with get_session().create_client("s3", endpoint_url=endpoint_url, config=config) as client:
            yield cls(client, endpoint=endpoint_url or "AWS S3", read_timeout=read_timeout,
                      policy=RetryPolicy(deadline=deadline), breaker=Breaker(breaker_threshold),
                      hooks=hooks)

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """The object's identity; NotFound says whether the bucket or the key is missing."""
        try:
            resp = await self._call(lambda: self._client.head_object(Bucket=bucket, Key=key), bucket, key)
        except NotFound:
            try:
                await self.head_bucket(bucket)  # a HEAD's 404 has no body to tell which
            except OriginDenied:  # a role that may read objects, not HeadBucket: the key's 404 stands
                pass
            raise
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        where = f"s3://{bucket}/{key}"
        size = int(_required(resp, "ContentLength", "Content-Length", where))
        if size > MAX_OBJECT_SIZE:  # a broken endpoint's: no S3 store holds such an object
            raise OriginError(f"origin says {where} holds {size} bytes, more than the {MAX_OBJECT_SIZE >> 40} TiB "
                              f"any S3 store holds")
        stored, content_type = stored_headers(headers), resp.get("ContentType") or "binary/octet-stream"
        check_sendable([*stored, ("Content-Type", content_type)], where)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            etag=_required(resp, "ETag", "ETag", where),
            size=size,
            last_modified=headers.get("last-modified", ""),
            content_type=content_type,
            headers=stored,
        )

    async def head_part(self, bucket: str, key: str, part: int, etag: str | None) -> PartHead:
        """HEAD ?partNumber=`part`, with `If-Match: etag` if given (412 -> ObjectChanged), retried
        and behind the breaker as `head` is."""
        resp = await self._call(lambda: self._client.head_object(
            Bucket=bucket, Key=key, PartNumber=part, **({"IfMatch": etag} if etag else {})),
            bucket, key, answered=lambda exc: part_beyond(exc, part))
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        count = headers.get("x-amz-mp-parts-count")
        match = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
        length = _required(resp, "ContentLength", "Content-Length", f"s3://{bucket}/{key}?partNumber={part}")
        return PartHead(length=int(length),
                        start=int(match.group(1)) if match else None,
                        total=int(match.group(3)) if match else None,
                        count=int(count) if count and count.isdigit() else None)

    async def head_bucket(self, bucket: str) -> str:
        """The bucket's region (S3's `x-amz-bucket-region`), "" if the origin does not say."""
        resp = await self._call(lambda: self._client.head_bucket(Bucket=bucket), bucket, "")
        return resp.get("BucketRegion") or ""

    async def bucket_location(self, bucket: str) -> str:
        """GetBucketLocation: the bucket's LocationConstraint ("" for us-east-1)."""
        resp = await self._call(lambda: self._client.get_bucket_location(Bucket=bucket), bucket, "",
                                answered=refused)
        return resp.get("LocationConstraint") or ""

    async def list_objects(self, bucket: str, v2: bool = True, **params) -> bytes:
        """One page of ListObjects(V2) (botocore's parameter names), as the XML S3 sent.

        S3's 400s (a bad continuation token, ...) come back as BadRequest with S3's code.
        """
        call = self._client.list_objects_v2 if v2 else self._client.list_objects
        args = {k: v for k, v in params.items() if v is not None}
        resp = await self._call(lambda: call(Bucket=bucket, **args), bucket, "", answered=refused)
        return resp["RawBody"]

    async def list_buckets(self) -> dict:
        resp = await self._call(self._client.list_buckets, "", "", answered=refused)
        resp.pop("ResponseMetadata", None)
        return resp

    async def read_range(self, bucket: str, key: str, etag: str, start: int, stop: int,
                         keep_going: Callable[[], bool] = lambda: True,
                         piece: Callable[[], int] = lambda: READ_SIZE) -> AsyncIterator[bytes]:
        """Yield the bytes `[start, stop)` of version `etag`, or raise ObjectChanged.

        A transient failure is retried from the byte reached while the policy
        allows and `keep_going()` says someone still wants the bytes. All tries
        together get the policy's deadline of time spent on S3 (waiting for its
        bytes, backing off), not counting the reader's own pace between pieces:
        a try still receiving then fails as too slow (OriginTimeout), unretried;
        a retry that got nothing by then leaves the failure before it standing.
        Each piece is at most `piece()` bytes, and aiohttp buffers up to twice that.
        """
        pos, tries, failures, spent, error = start, 0, 0, 0.0, None
        while True:
            ticket = self._admit()
            tries += 1
            reached, last, error, ok, cut = pos, error, None, None, False
            self._hooks.request()
            try:
                async with contextlib.aclosing(self._get(bucket, key, etag, pos, stop, piece)) as body:
                    while True:
                        waited = self._clock()
                        try:  # a body that keeps trickling never trips the read timeout: this bounds it
                            async with asyncio.timeout(self.policy.deadline - spent):
                                data = await anext(body, None)
                        finally:
                            spent += self._clock() - waited
                        if data is None:
                            break
                        pos += len(data)
                        yield data
                if pos < stop:
                    raise OriginUnavailable(f"origin cut the response for s3://{bucket}/{key} "
                                            f"at byte {pos} of {start}-{stop - 1}")
                ok = True
            except TimeoutError:  # the deadline's: _get converts every other failure
                cut = True
                if pos > reached or last is None:
                    error, ok = _too_slow(f"s3://{bucket}/{key}", pos - start, stop - start, spent), False
                else:  # a retry cut, with what was left, before S3 said a thing: S3's last answer stands
                    error = last
            except P2PError as exc:
                error, ok = exc, not is_transient(exc)
            finally:
                self._record(ticket, ok, error, DATA)
            if error is None:
                return
            failures = 0 if pos > reached else failures + 1
            delay = None if cut else self.policy.next_delay(error, tries, failures, spent, self._rand())
            if delay is None or not keep_going():
                raise error
            self._hooks.retry(error.cause)
            log.info("retrying s3://%s/%s from byte %d in %.2f s: %s", bucket, key, pos, delay, error)
            waited = self._clock()
            await asyncio.sleep(delay)
            spent += self._clock() - waited

    async def _get(self, bucket: str, key: str, etag: str, start: int, stop: int,
                   piece: Callable[[], int]) -> AsyncIterator[bytes]:
        """One ranged GET, its failures converted; checks that S3 sent what was asked."""
        where = f"s3://{bucket}/{key}"
        try:
            resp = await self._client.get_object(
                Bucket=bucket, Key=key, IfMatch=etag, Range=f"bytes={start}-{stop - 1}")
            async with resp["Body"] as body:
                got = resp.get("ETag")
                if got and not etag_matches(got, etag):  # a server that ignores If-Match
                    raise ObjectChanged(f"{where} changed at the origin: ETag {got}")
                sent = resp.get("ContentRange")  # none: the whole object, from byte 0
                if not (sent or "bytes 0-").startswith(f"bytes {start}-"):
                    asked = f"bytes={start}-{stop - 1} of {where}"
                    if sent is None:
                        status = resp["ResponseMetadata"]["HTTPStatusCode"]
                        raise OriginError(f"origin answered {status} without a Content-Range to {asked}")
                    raise OriginError(f"origin answered Content-Range: {sent} to {asked}")
                while data := await body.read(min(piece(), stop - start)):
                    start += len(data)
                    yield data
        except P2PError:
            raise
        except Exception as exc:
            raise convert_error(exc, bucket, key, self._read_timeout) from exc

    async def _call(self, call: Callable[[], Awaitable[dict]], bucket: str, key: str,
                    answered: Callable[[Exception], P2PError | None] = lambda exc: None) -> dict:
        """One metadata request, retried a few times if it fails transiently. `answered` names
        S3's answers that are meant for the reader as they are (`refused`: S3's own 400 for
        arguments a reader shaped; `part_beyond`), before `convert_error` sees them."""
        tries, began = 0, self._clock()
        while True:
            ticket = self._admit()
            tries += 1
            error, ok, source = None, None, None
            try:
                result = await call()
                ok = True
                return result
            except Exception as exc:
                source, error = exc, answered(exc) or convert_error(exc, bucket, key, self._read_timeout)
                ok = not is_transient(error)
            finally:
                self._record(ticket, ok, error, META)
            delay = self._meta_policy.next_delay(error, tries, tries, self._clock() - began, self._rand())
            if delay is None:
                raise error from source
            self._hooks.retry(error.cause)
            await asyncio.sleep(delay)

    def _admit(self) -> int:
        state = self.breaker.state
        ticket = self.breaker.admit()
        self._changed(state)
        if ticket is not None:
            return ticket
        cause = self.breaker.cause
        wait = self.breaker.retry_after()
        message = (f"circuit breaker {self.breaker.state}: {self.endpoint} is not asked for "
                   f"{max(1, round(wait))} s after repeated failures, the last: {cause}")
        if isinstance(cause, OriginError):  # S3 answered 5xx: what a read gets after its retries
            raise OriginError(message, transient=cause.transient, retry_after=wait)
        kind = type(cause) if isinstance(cause, OriginUnavailable) else OriginUnavailable
        raise kind(message, retry_after=wait)

    def _record(self, ticket: int, ok: bool | None, error: P2PError | None, kind: str) -> None:
        state = self.breaker.state
        self.breaker.record(ticket, ok, error, kind)
        self._changed(state)

    def _changed(self, before: str) -> None:
        after = self.breaker.state
        if after == before:
            return
        self._hooks.breaker(after)
        if after == OPEN:
            log.warning("origin %s: breaker open after repeated failures (%s)", self.endpoint, self.breaker.cause)
        else:
            log.info("origin %s: breaker %s", self.endpoint, after)
