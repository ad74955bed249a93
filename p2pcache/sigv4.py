"""AWS Signature Version 4 for S3, verified on the server: pure functions over a request's parts.

The canonical request is S3's (no path normalisation, the path URI-encoded once), so it
is byte for byte what botocore's `S3SigV4Auth` and `S3SigV4QueryAuth` sign: the path and
the query are percent-decoded and encoded again with AWS's rules, which leaves what
botocore sends unchanged and tolerates clients that escape a little more or less.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple, Protocol, Sequence
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

from .errors import AccessDenied, MalformedAuthorization, RequestTimeTooSkewed

__all__ = [
    "ALGORITHM", "UNSIGNED_PAYLOAD", "EMPTY_SHA256", "MAX_SKEW", "MAX_EXPIRES",
    "SignedRequest", "SigningKeys", "query_pairs", "parse", "canonical_uri", "canonical_query",
    "canonical_headers", "canonical_request", "string_to_sign", "derive_signing_key", "signature",
    "check_time", "unsigned_amz_headers",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60  # seconds: S3's window between the signing time and its clock
MAX_EXPIRES = 7 * 24 * 3600  # S3's longest-lived presigned URL
_TIMESTAMP = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=([^\s,]+), ?SignedHeaders=([^\s,]+), ?Signature=(\S+)")
# Already in canonical form: unreserved characters, and upper-case escapes of anything else
# (the escapes of unreserved characters -.0-9A-Z_a-z~ are not canonical, nor is %2F in a path).
_ESCAPE = r"%(?:[01][0-9A-F]|2[0-9A-C{}]|3[A-F]|40|5[B-E]|60|7[B-DF]|[89A-F][0-9A-F])"
_CANONICAL_PART = re.compile(r"(?:[A-Za-z0-9\-_.~]|" + _ESCAPE.format("F") + ")*")
_CANONICAL_PATH = re.compile(r"(?:[A-Za-z0-9\-_.~/]|" + _ESCAPE.format("") + ")*")
_QUERY_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                 "X-Amz-SignedHeaders", "X-Amz-Signature")
_QUERY_REQUIRED = ("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                   "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
_UNSUPPORTED = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."


class Headers(Protocol):
    """What is read of the request's headers (aiohttp's and multidict's `CIMultiDict` fit)."""

    def get(self, name: str, default: str | None = None) -> str | None: ...
    def getall(self, name: str, default: Sequence[str]) -> Sequence[str]: ...
    def keys(self): ...


class SignedRequest(NamedTuple):
    """What a request claims: the key and scope it was signed with, when, over what, the signature."""

    key_id: str
    date: str  # YYYYMMDD, the credential scope's
    region: str
    service: str
    timestamp: str  # YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str
    payload_hash: str
    expires: int | None = None  # seconds; set for presigned URLs only

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"

    @property
    def presigned(self) -> bool:
        return self.expires is not None


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The raw query's `name=value` pairs, each part in canonical form (decoded, `+` as a
    space as aiohttp reads it, and encoded again with AWS's rules)."""
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((_canonical_part(name), _canonical_part(value)))
    return pairs


def _canonical_part(raw: str) -> str:
    if _CANONICAL_PART.fullmatch(raw):
        return raw  # what botocore sends: nothing to decode or encode
    return quote_from_bytes(unquote_to_bytes(raw.replace("+", " ")), safe="-_.~")


def parse(headers: Headers, query: list[tuple[str, str]]) -> SignedRequest | None:
    """The signature a request carries (Authorization header or presigned query), None if unsigned.

    Malformed signatures raise `MalformedAuthorization` (400) with S3's code.
    """
    authorization = headers.get("Authorization")
    presigned = any(name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature") for name, _ in query)
    if authorization is not None and presigned:
        raise MalformedAuthorization(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
            "string parameter or the Authorization header should be specified", "InvalidArgument")
    if presigned:
        return _parse_query(query)
    if authorization is not None:
        return _parse_header(authorization, headers)
    if any(name == "AWSAccessKeyId" for name, _ in query):
        raise MalformedAuthorization(_UNSUPPORTED, "InvalidRequest")  # a Signature V2 presigned URL
    return None


def _parse_header(authorization: str, headers: Headers) -> SignedRequest:
    match = _AUTHORIZATION.fullmatch(authorization)  # botocore's form; others take the long way
    credential, names, sig = match.groups() if match else _authorization_fields(authorization)
    timestamp = headers.get("X-Amz-Date")
    if timestamp is None and headers.get("Date") is not None:
        timestamp = _http_date_as_timestamp(headers.get("Date"))
    if timestamp is None or _TIMESTAMP.fullmatch(timestamp) is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    # S3 requires x-amz-content-sha256; generic SigV4 signers (curl 7.x --aws-sigv4) sign the
    # empty body's hash without sending it, which is what a GET or HEAD carries.
    payload_hash = headers.get("X-Amz-Content-SHA256", EMPTY_SHA256)
    return _signed(credential, timestamp, names, sig, payload_hash.strip(), None, "AuthorizationHeaderMalformed")


def _authorization_fields(authorization: str) -> tuple[str, str, str]:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise MalformedAuthorization(_UNSUPPORTED, "InvalidRequest")
    fields = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    wanted = ("Credential", "SignedHeaders", "Signature")
    missing = [f for f in wanted if not fields.get(f)]
    if missing:
        raise MalformedAuthorization(f"The authorization header is malformed; missing {', '.join(missing)}.")
    return tuple(fields[f] for f in wanted)


def _parse_query(query: list[tuple[str, str]]) -> SignedRequest:
    params = {}
    for name, value in query:
        if name in _QUERY_PARAMS or name == "X-Amz-Content-Sha256":
            params[name] = unquote(value, errors="replace")
    if any(not params.get(p) for p in _QUERY_PARAMS):
        raise MalformedAuthorization(_QUERY_REQUIRED, "AuthorizationQueryParametersError")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise MalformedAuthorization("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
                                     "AuthorizationQueryParametersError")
    if _TIMESTAMP.fullmatch(params["X-Amz-Date"]) is None:
        raise MalformedAuthorization("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
                                     "AuthorizationQueryParametersError")
    expires = params["X-Amz-Expires"]
    if re.fullmatch(r"[0-9]+", expires) is None:
        raise MalformedAuthorization("X-Amz-Expires should be a number", "AuthorizationQueryParametersError")
    if len(expires) > 7 or int(expires) > MAX_EXPIRES:
        raise MalformedAuthorization("X-Amz-Expires must be less than a week (in seconds) that is 604800",
                                     "AuthorizationQueryParametersError")
    return _signed(params["X-Amz-Credential"], params["X-Amz-Date"], params["X-Amz-SignedHeaders"],
                   params["X-Amz-Signature"], params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD),
                   int(expires), "AuthorizationQueryParametersError")


def _signed(credential: str, timestamp: str, signed_headers: str, signature: str, payload_hash: str,
            expires: int | None, code: str) -> SignedRequest:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or parts[4] != "aws4_request":
        raise MalformedAuthorization(
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
            "expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".", code)
    key_id, date, region, service, _ = parts
    if service != "s3":
        shown = "".join(c if c.isprintable() else "?" for c in service[:64])  # it goes into a header
        raise MalformedAuthorization(
            f"Error parsing the X-Amz-Credential parameter; incorrect service \"{shown}\". "
            f"This endpoint belongs to \"s3\".", code)
    if date != timestamp[:8]:
        raise MalformedAuthorization(
            "Error parsing the X-Amz-Credential parameter; Invalid credential date. "
            "Date is not the same as X-Amz-Date.", code)
    if not region or len(region) > 64:
        raise MalformedAuthorization("Error parsing the X-Amz-Credential parameter; the region is invalid.", code)
    names = tuple(signed_headers.split(";"))
    return SignedRequest(key_id, date, region, service, timestamp, names, signature, payload_hash, expires)


def _http_date_as_timestamp(value: str) -> str | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def canonical_uri(raw_path: str) -> str:
    """The path as S3 signs it: every byte but unreserved ones and `/` percent-encoded, once."""
    if raw_path and _CANONICAL_PATH.fullmatch(raw_path):
        return raw_path
    return quote_from_bytes(unquote_to_bytes(raw_path or "/"), safe="/~") or "/"


def canonical_query(query: list[tuple[str, str]], presigned: bool) -> str:
    """The sorted `name=value` pairs; a presigned URL's own signature is left out."""
    pairs = sorted(pair for pair in query if not (presigned and pair[0] == "X-Amz-Signature"))
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_headers(headers: Headers, names: Sequence[str]) -> str:
    """`name:value` lines of the signed headers; repeated headers joined by `,`, spaces collapsed."""
    return "".join(f"{name}:{','.join(' '.join(v.split()) for v in headers.getall(name, ()))}\n"
                   for name in names)


def canonical_request(method: str, raw_path: str, query: list[tuple[str, str]], headers: Headers,
                      signed: SignedRequest) -> str:
    return "\n".join((method, canonical_uri(raw_path), canonical_query(query, signed.presigned),
                      canonical_headers(headers, signed.signed_headers), ";".join(signed.signed_headers),
                      signed.payload_hash))


def string_to_sign(signed: SignedRequest, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{signed.timestamp}\n{signed.scope}\n{digest}"


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode("utf-8", "surrogateescape"), "sha256")
    return key


def signature(signing_key: bytes, to_sign: str) -> str:
    return hmac.digest(signing_key, to_sign.encode("utf-8", "surrogateescape"), "sha256").hex()


class SigningKeys:
    """Derived signing keys per (key id, date, region, service): one HMAC per request, not five.

    Bounded, because the scope a request names is the client's choice, valid or not.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._keys: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
        self._max = max_entries

    def get(self, key_id: str, secret: str, date: str, region: str, service: str) -> bytes:
        scope = (key_id, date, region, service)
        key = self._keys.get(scope)
        if key is None:
            key = self._keys[scope] = derive_signing_key(secret, date, region, service)
            if len(self._keys) > self._max:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(scope)
        return key

    def __len__(self) -> int:
        return len(self._keys)


def check_time(signed: SignedRequest, now: float) -> None:
    """Raise unless `now` (Unix seconds) is inside the signature's window.

    A header signature is good for S3's 15 minutes either side of its time; a presigned URL
    from its time (15 minutes early at most) until it expires.
    """
    signed_at = _epoch(signed.timestamp)
    if signed_at is None:
        raise MalformedAuthorization(f"invalid signing time {signed.timestamp!r}",
                                     "AuthorizationQueryParametersError" if signed.presigned
                                     else "AuthorizationHeaderMalformed")
    if signed.presigned:
        if now < signed_at - MAX_SKEW:
            raise AccessDenied("Request is not valid yet")
        if now > signed_at + signed.expires:
            raise AccessDenied("Request has expired")
    elif abs(now - signed_at) > MAX_SKEW:
        raise RequestTimeTooSkewed()


@lru_cache(maxsize=256)  # requests signed in the same second share their timestamp
def _epoch(timestamp: str) -> float | None:
    match = _TIMESTAMP.fullmatch(timestamp)
    try:
        return datetime(*(int(g) for g in match.groups()), tzinfo=timezone.utc).timestamp() if match else None
    except ValueError:  # 20241332T...: digits, but not a date
        return None


def unsigned_amz_headers(headers: Headers, signed: SignedRequest) -> list[str]:
    """`x-amz-*` headers the signature does not cover (S3 refuses them)."""
    names = {name.lower() for name in signed.signed_headers}
    return sorted({k.lower() for k in headers.keys() if k[:6].lower() == "x-amz-"} - names)
