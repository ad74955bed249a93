"""Reader keys (`--client-keys`): who may read which buckets, checked by their SigV4 signature."""

from __future__ import annotations

import argparse
import hmac
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from aiohttp import web

from p2pcache import sigv4
from p2pcache.errors import AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch

__all__ = ["ClientKey", "Readers", "parse_client_keys", "client_keys_arg"]

log = logging.getLogger("p2pcache.readers")
_KEY_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII; "/" and "," would break the credential syntax
_BUCKET = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9.\-]*")
_FORMAT = "expected ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,bucket...]"


@dataclass(frozen=True)
class ClientKey:
    key_id: str
    secret: str
    buckets: frozenset[str] = frozenset()  # empty: every bucket the worker serves

    def may_read(self, bucket: str) -> bool:
        return not self.buckets or bucket in self.buckets

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"ClientKey({self.key_id!r}, buckets={sorted(self.buckets)})"


def parse_client_keys(text: str, source: str = "client keys") -> tuple[ClientKey, ...]:
    """One key per line: `ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,bucket...]`; `#` starts a comment.

    Errors name the line and never echo a secret.
    """
    keys: dict[str, ClientKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        for i, word in enumerate(words):
            if word.startswith("#"):
                del words[i:]
                break
        if not words:
            continue
        where = f"{source} line {number}"
        if len(words) not in (2, 3):
            raise ValueError(f"{where}: {_FORMAT}, got {len(words)} words")
        key_id, secret = words[0], words[1]
        if not _KEY_ID.fullmatch(key_id) or "/" in key_id or "," in key_id:
            raise ValueError(f"{where}: invalid access key id (printable ASCII without '/' or ',')")
        if key_id in keys:
            raise ValueError(f"{where}: access key id {key_id!r} is already defined above")
        buckets = frozenset(b for b in words[2].split(",") if b) if len(words) == 3 else frozenset()
        bad = sorted(b for b in buckets if not _BUCKET.fullmatch(b))
        if bad or (len(words) == 3 and not buckets):
            raise ValueError(f"{where}: invalid bucket list {words[2]!r}: use comma-separated bucket names")
        keys[key_id] = ClientKey(key_id, secret, buckets)
    if not keys:
        raise ValueError(f"{source} holds no keys: {_FORMAT} on each line")
    return tuple(keys.values())


def client_keys_arg(path: str) -> tuple[ClientKey, ...]:
    """`--client-keys FILE` for argparse: the parsed keys, or () when the flag is empty."""
    if not path:
        return ()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    try:
        return parse_client_keys(text, path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Readers:
    """Checks that an S3 request is signed (SigV4) by a known key that may read its bucket."""

    def __init__(self, keys: Iterable[ClientKey], wall_clock: Callable[[], float] = time.time,
                 max_presigned: int = 1024) -> None:
        self.keys = {k.key_id: k for k in keys}
        self.wall_clock = wall_clock
        self._signing_keys = sigv4.SigningKeys()
        # Presigned URLs that verified, by (method, request target, Host): a loader reads many
        # ranges through one URL. With only `host` signed these determine the canonical request,
        # so a hit needs no new HMAC; its time, headers and bucket are still checked every time.
        self._presigned: OrderedDict[tuple[str, str, str], tuple[ClientKey, sigv4.SignedRequest]] = OrderedDict()
        self._max_presigned = max_presigned

    def check(self, request: web.BaseRequest, bucket: str) -> ClientKey:
        """The key that signed `request`, if it may read `bucket` ("" for ListBuckets); else raise.

        The signature covers the raw request target as the client sent it; `bucket` is the
        one the worker will read, so no re-encoding or path normalisation can widen access.
        """
        target = request.raw_path
        path, _, raw_query = target.partition("?")
        cache_key = None
        if "X-Amz-Signature=" in raw_query and "Authorization" not in request.headers:
            cache_key = (request.method, target, request.headers.get("Host", ""))
            hit = self._presigned.get(cache_key)
            if hit is not None:
                self._presigned.move_to_end(cache_key)
                return self._authorize(request, *hit, bucket)
        query = sigv4.query_pairs(raw_query) if raw_query else []
        signed = sigv4.parse(request.headers, query)
        if signed is None:
            raise AccessDenied()
        key = self.keys.get(signed.key_id)
        if key is None:
            raise InvalidAccessKeyId()
        sigv4.check_time(signed, self.wall_clock())
        canonical = sigv4.canonical_request(request.method, path, query, request.headers, signed)
        to_sign = sigv4.string_to_sign(signed, canonical)
        signing_key = self._signing_keys.get(key.key_id, key.secret, signed.date, signed.region, signed.service)
        expected = sigv4.signature(signing_key, to_sign)
        if not hmac.compare_digest(expected.encode(), signed.signature.encode("utf-8", "surrogateescape")):
            log.debug("signature mismatch for key %s; canonical request:\n%s", key.key_id, canonical)
            raise SignatureDoesNotMatch()
        if cache_key is not None and signed.presigned and signed.signed_headers == ("host",):
            self._presigned[cache_key] = (key, signed)
            if len(self._presigned) > self._max_presigned:
                self._presigned.popitem(last=False)
        return self._authorize(request, key, signed, bucket, checked_time=True)

    def _authorize(self, request: web.BaseRequest, key: ClientKey, signed: sigv4.SignedRequest, bucket: str,
                   checked_time: bool = False) -> ClientKey:
        """What a verified signature still has to pass: its time, its headers, the key's buckets."""
        if not checked_time:
            sigv4.check_time(signed, self.wall_clock())
        unsigned = sigv4.unsigned_amz_headers(request.headers, signed)
        if unsigned:
            raise AccessDenied(f"There were headers present in the request which were not signed: "
                               f"{', '.join(unsigned)[:200]}")
        if bucket and not key.may_read(bucket):
            raise AccessDenied()
        return key
