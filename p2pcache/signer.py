"""SigV4 header signing of the loader client's requests with a reader key (UNSIGNED-PAYLOAD)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Callable, Mapping

from . import sigv4

__all__ = ["Signer", "signer_from"]

SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"


class Signer:
    """Adds `Authorization`, `x-amz-date` and `x-amz-content-sha256` to a request; the signing key per day."""

    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1",
                 clock: Callable[[], float] = time.time) -> None:
        if not access_key or not secret_key:
            raise ValueError("a reader key needs both access_key and secret_key")
        self.access_key, self.region = access_key, region or "us-east-1"
        self._secret, self._clock = secret_key, clock
        self._day, self._key = "", b""

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Signer({self.access_key!r}, region={self.region!r})"

    def sign(self, method: str, host: str, raw_path: str, raw_query: str = "") -> dict[str, str]:
        """The headers that sign `method` of `raw_path?raw_query` (as sent, already percent-encoded) on `host`."""
        timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        day = timestamp[:8]
        if day != self._day:
            self._day, self._key = day, sigv4.derive_signing_key(self._secret, day, self.region, "s3")
        query = sigv4.canonical_query(sigv4.query_pairs(raw_query), False) if raw_query else ""
        canonical = "\n".join((
            method, sigv4.canonical_uri(raw_path), query,
            f"host:{host}\nx-amz-content-sha256:{sigv4.UNSIGNED_PAYLOAD}\nx-amz-date:{timestamp}\n",
            SIGNED_HEADERS, sigv4.UNSIGNED_PAYLOAD))
        scope = f"{day}/{self.region}/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
        sig = sigv4.signature(self._key, f"{sigv4.ALGORITHM}\n{timestamp}\n{scope}\n{digest}")
        return {"Host": host, "x-amz-date": timestamp, "x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD,
                "Authorization": f"{sigv4.ALGORITHM} Credential={self.access_key}/{scope}, "
                                 f"SignedHeaders={SIGNED_HEADERS}, Signature={sig}"}


def signer_from(access_key: str | None, secret_key: str | None, region: str | None,
                credentials: str | None, environ: Mapping[str, str] = os.environ) -> Signer | None:
    """The client's signer: explicit keys, else the AWS_* environment if `credentials="env"`, else None."""
    if credentials not in (None, "", "none", "env"):
        raise ValueError(f"credentials={credentials!r}: use 'env' (AWS_ACCESS_KEY_ID, ...) or give the keys")
    if credentials == "env":
        access_key = access_key or environ.get("AWS_ACCESS_KEY_ID")
        secret_key = secret_key or environ.get("AWS_SECRET_ACCESS_KEY")
        region = region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if not access_key or not secret_key:
            raise ValueError("credentials='env': AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set")
    if not access_key and not secret_key:
        return None
    return Signer(access_key or "", secret_key or "", region or "us-east-1")
