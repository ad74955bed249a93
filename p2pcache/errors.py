"""Named domain errors, each with the HTTP status it maps to.

P2PError
├── BadRequest            400  input a user sent that cannot be served (or S3 refused as such)
│   ├── InvalidArgument        a query argument out of its range (max-keys, partNumber)
│   └── MalformedAuthorization  a signature that cannot be parsed (S3's code)
├── Unauthorized          401  an internal route without a valid cluster signature (also the
│                               master's 403 to a worker's heartbeat: another secret)
├── AccessDenied          403  bucket not in the allowlist or the reader key's list, or S3 said 403
│   ├── InvalidAccessKeyId     a signature by a key not in --client-keys
│   ├── SignatureDoesNotMatch  a signature that does not verify
│   └── RequestTimeTooSkewed   a signature dated outside S3's 15-minute window
├── NotFound              404  no such bucket or key
├── NotCached             404  (internal) a peer asked for a chunk it only may have: it has not
├── NotOwner              409  (internal) a handoff to a worker that does not own the chunk
├── ReadOnly              405  a write method: the cache is read-only
├── RequestTimeout        408  a request body not whole within its limit (p2pcache/httpserver.py)
├── PreconditionFailed    412  an If-Match / If-Unmodified-Since condition is false
├── RangeNotSatisfiable   416  carries the object size for `Content-Range: bytes */size`
├── InvalidPartNumber     416  partNumber beyond the object's parts
├── Unsupported           501  a request the cache cannot answer correctly (versionId, ?acl, ...)
├── ObjectChanged         412→502  the object's ETag changed under a read
├── OriginError           502  S3 answered, but with a failure (5xx: transient; 403: not), also
│                               while the breaker is open after 5xx (with a Retry-After)
├── Unavailable           503  something needed is not reachable or has no capacity
│   ├── OriginUnavailable      S3 cannot be reached, or cut the connection (transient)
│   │   ├── OriginTimeout      S3 sent nothing for the read timeout
│   │   └── OriginThrottled    S3 answered 503 SlowDown or 429 TooManyRequests
│   ├── PeerUnavailable        no owner of a chunk answered
│   ├── NoRing                 the worker has not received a ring yet
│   ├── Refused                the master refuses this worker for now (409: its id is registered
│   │                           at another URL, until that registration leaves or expires)
│   ├── StoreError             the cache disk failed (reads go around it)
│   ├── CorruptChunk           a cached chunk failed its checksum (dropped; read elsewhere)
│   └── Busy                   a concurrency cap, or the store cannot take a chunk
├── PeerError             (internal) one peer failed; the caller tries the next
└── Relayed               any  (internal) another process's error answer, passed on as it gave it

Foreign exceptions are converted where they enter (origin, peer client) with
`raise ... from exc`, and mapped to HTTP in one place (worker/errors middleware).
An origin error names its cause (`X-P2P-Origin`), so a worker that asked the
owner of a chunk passes S3's failure on instead of blaming the owner; an
Unavailable may carry a `Retry-After`.
"""

from __future__ import annotations

import math

__all__ = [
    "P2PError", "BadRequest", "InvalidArgument", "MalformedAuthorization", "Unauthorized",
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed", "NotFound",
    "NotCached", "NotOwner", "ReadOnly", "RequestTimeout", "PreconditionFailed", "RangeNotSatisfiable",
    "InvalidPartNumber", "Unsupported",
    "ObjectChanged", "OriginError", "OriginDenied", "Unavailable", "OriginUnavailable",
    "PeerUnavailable", "NoRing", "Refused", "Busy", "PeerError", "PeerStarting", "OriginTimeout", "OriginThrottled",
    "StoreError", "CorruptChunk", "Relayed", "NO_RING_HEADER", "ORIGIN_HEADER", "origin_error", "said",
]

ORIGIN_HEADER = "X-P2P-Origin"  # on an error caused by S3: the cause (origin_error() reads it)
NO_RING_HEADER = "X-P2P-No-Ring"  # on a worker's 503 before its first ring (a peer does not count it as failed)


class P2PError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self)

    @property
    def headers(self) -> dict[str, str]:
        """Headers the HTTP answer to this error carries."""
        return {}

    @property
    def details(self) -> dict[str, str]:
        """Extra elements of S3's XML error body (`ArgumentName`, ...)."""
        return {}


class BadRequest(P2PError):
    """The request is malformed."""
    status, code = 400, "InvalidRequest"

    def __init__(self, message: str = "", code: str = "InvalidRequest") -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(BadRequest):
    """An argument of the request is invalid."""

    def __init__(self, message: str, name: str, value: str) -> None:
        super().__init__(message, code="InvalidArgument")
        self.name, self.value = name, value

    @property
    def details(self) -> dict[str, str]:
        return {"ArgumentName": self.name, "ArgumentValue": self.value}


class MalformedAuthorization(BadRequest):
    """The request's signature cannot be parsed; `code` is S3's name for what is wrong."""

    def __init__(self, message: str, code: str = "AuthorizationHeaderMalformed") -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(P2PError):
    """A valid signature is required."""
    status, code = 401, "Unauthorized"


class AccessDenied(P2PError):
    """Access Denied"""
    status, code = 403, "AccessDenied"


class InvalidAccessKeyId(AccessDenied):
    """The AWS Access Key Id you provided does not exist in our records."""
    code = "InvalidAccessKeyId"


class SignatureDoesNotMatch(AccessDenied):
    """The request signature we calculated does not match the signature you provided. Check your key and signing method."""
    code = "SignatureDoesNotMatch"


class RequestTimeTooSkewed(AccessDenied):
    """The difference between the request time and the current time is too large."""
    code = "RequestTimeTooSkewed"


class NotFound(P2PError):
    """The object does not exist."""
    status, code = 404, "NoSuchKey"

    def __init__(self, message: str = "", code: str = "NoSuchKey") -> None:
        super().__init__(message)
        self.code = code


class NotCached(P2PError):
    """This worker does not hold the chunk."""
    status, code = 404, "NotCached"


class NotOwner(P2PError):
    """This worker does not own the chunk under its ring."""
    status, code = 409, "NotOwner"


class ReadOnly(P2PError):
    """p2pcache is a read-only cache."""
    status, code = 405, "NotImplemented"


class RequestTimeout(P2PError):
    """Your socket connection to the server was not read from or written to within the timeout period."""
    status, code = 408, "RequestTimeout"


class PreconditionFailed(P2PError):
    """At least one of the preconditions you specified did not hold."""
    status, code = 412, "PreconditionFailed"

    def __init__(self, etag: str = "") -> None:
        super().__init__()
        self.etag = etag

    @property
    def headers(self) -> dict[str, str]:
        return {"ETag": self.etag} if self.etag else {}  # the version there is now


class RangeNotSatisfiable(P2PError):
    """The requested range is not satisfiable."""
    status, code = 416, "InvalidRange"

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for an object of {size} bytes")
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class InvalidPartNumber(P2PError):
    """The requested partnumber is not satisfiable"""
    status, code = 416, "InvalidPartNumber"

    def __init__(self, requested: int, count: int) -> None:
        super().__init__()
        self.requested, self.count = requested, count

    @property
    def details(self) -> dict[str, str]:
        return {"PartNumberRequested": str(self.requested), "ActualPartCount": str(self.count)}


class Unsupported(P2PError):
    """The cache does not implement this request."""
    status, code = 501, "NotImplemented"


class ObjectChanged(P2PError):
    """The object changed at the origin while it was being read."""
    status, code = 502, "ObjectChanged"


class OriginError(P2PError):
    """The origin answered with an error."""
    status, code = 502, "OriginError"
    cause = "error"

    def __init__(self, message: str = "", transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient  # worth another try (a 5xx), unlike a 403
        self.retry_after = retry_after  # set while the origin's breaker is open: not asked until then

    @property
    def headers(self) -> dict[str, str]:
        wait = {} if self.retry_after is None else {"Retry-After": str(max(1, math.ceil(self.retry_after)))}
        return wait | {ORIGIN_HEADER: self.cause}


class Unavailable(P2PError):
    """A dependency is unavailable."""
    status, code = 503, "ServiceUnavailable"

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds before asking again is worth it

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class OriginDenied(OriginError):
    """The origin refused this cache's credentials (403): the cache's to fix, not the reader's."""


class OriginUnavailable(Unavailable):
    """The origin cannot be reached."""
    cause = "unreachable"
    transient = True

    @property
    def headers(self) -> dict[str, str]:
        return super().headers | {ORIGIN_HEADER: self.cause}


class OriginTimeout(OriginUnavailable):
    """The origin sent nothing for the read timeout, or too little by a read's deadline."""
    cause = "timeout"


class OriginThrottled(OriginUnavailable):
    """The origin is throttling reads (503 SlowDown, or 429 TooManyRequests)."""
    code, cause = "SlowDown", "throttled"


class StoreError(Unavailable):
    """The cache disk failed."""


class CorruptChunk(Unavailable):
    """A chunk's bytes on disk do not match its checksums: never served; the reader's
    bytes come from another copy or a refill (a reader sees this only if none worked)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"cached chunk {name} is corrupt: {detail}")
        self.name = name


def origin_error(cause: str, message: str, retry_after: float | None = None) -> P2PError:
    """The origin error an `X-P2P-Origin: cause` answer stands for (from another worker)."""
    kinds = {c.cause: c for c in (OriginUnavailable, OriginTimeout, OriginThrottled)}
    if cause in kinds:
        return kinds[cause](message, retry_after=retry_after)
    return OriginError(message, retry_after=retry_after)


class PeerUnavailable(Unavailable):
    """No owner of the chunk could be reached."""


class NoRing(Unavailable):
    """This worker has not received a ring from the master yet."""

    @property
    def headers(self) -> dict[str, str]:
        return super().headers | {NO_RING_HEADER: "1"}


class Refused(Unavailable):
    """The master answered, refusing this worker until another registration of its id leaves or
    expires (an unsigned move to another URL: 409). Asked again, as an unreachable master is."""


class Busy(Unavailable):
    """Over capacity; retry later."""
    code = "SlowDown"


class PeerError(P2PError):
    """A peer failed to serve a chunk."""
    status, code = 502, "PeerError"


class PeerStarting(PeerError):
    """A peer answered that it has no ring yet (it just started, or its master restarted): alive,
    so not asked last for a while as a failed one is; it has its ring within a heartbeat interval."""


class Relayed(P2PError):
    """An error answer of another process of this worker (a serving process's coordinator),
    answered again with its status, code, message and headers, as that process gave it."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.status, self.code, self._headers = status, code, headers

    @property
    def headers(self) -> dict[str, str]:
        return self._headers


def said(body: bytes, limit: int) -> str:
    """An answer's body as one line of text for a message: decoded (what is not UTF-8 replaced),
    its whitespace runs made one space, cut to `limit` characters."""
    return " ".join(body.decode(errors="replace").split())[:limit]
