"""HMAC-SHA256 signatures on the cluster's internal requests, made and checked with the cluster secret.

A signed request carries one header, `X-P2P-Auth: t=<unix ms>,n=<nonce>,s=<hex>`,
where `s` is the HMAC of the method, the (decoded) path, the canonical query,
the time, the nonce, the SHA-256 of the body and, on a request to a worker,
the worker's id (`to`: a signature is good at that worker only) and the headers
that decide what bytes a peer's answer holds (`SIGNED_HEADERS`). The secret
itself never travels. A signature is valid for `WINDOW` seconds either side of
the receiver's clock; on a route that changes state a receiver also refuses a
nonce it has seen (`ReplayGuard`), so a captured request cannot be played back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping
from urllib.parse import quote

__all__ = [
    "HEADER", "WINDOW", "MIN_SECRET", "SIGNED_HEADERS", "AuthError", "canonical_query", "signed_headers",
    "string_to_sign", "sign", "verify", "ReplayGuard", "Signer", "Verifier", "load_secret", "new_secret",
]

HEADER = "X-P2P-Auth"
SCHEME = "P2P1-HMAC-SHA256"
# Pods keep their clocks within a second or so (NTP); 30 s covers a slow request
# and a little skew while keeping a captured signature useful only briefly.
WINDOW = 30.0
MIN_SECRET = 16  # bytes: a shorter secret could be guessed from one captured signature
_VALUE = re.compile(r"t=([0-9]{1,16}),n=([0-9a-f]{16,64}),s=([0-9a-f]{64})")
_EMPTY = hashlib.sha256(b"").hexdigest()
# The headers that decide which bytes a peer's answer holds (worker/peer.py): signed when sent,
# so a proxy that rewrites one (another block of the chunk, another hop) breaks the signature.
SIGNED_HEADERS = ("Range", "X-P2P-Hop")


class AuthError(Exception):
    """A request without a valid signature: 401 when it is missing or stale, 403 when wrong."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded query pairs, each part percent-encoded, sorted: independent of how the URL was written."""
    return "&".join(sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs))


def signed_headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The request's headers that are signed: (lower-case name, value) of each of SIGNED_HEADERS it
    has, the first of a repeated one (what the receiver reads), names matched in any case."""
    if not headers:
        return ()
    first: dict[str, str] = {}
    for name, value in headers.items():
        first.setdefault(name.lower(), value)
    return tuple((n, first[n]) for n in (h.lower() for h in SIGNED_HEADERS) if n in first)


def string_to_sign(method: str, path: str, query: str, millis: int, nonce: str, body_digest: str,
                   to: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Without `to` and `headers` (the master's requests) the text is what it was before they
    were signed; with them, one more line each."""
    fields = [SCHEME, method.upper(), quote(path, safe="/-_.~"), query, str(millis), nonce, body_digest]
    if to or headers:
        fields += [f"to:{to}", *(f"{name}:{value}" for name, value in headers)]
    return "\n".join(fields).encode()


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest() if body else _EMPTY


def _mac(secret: bytes, text: bytes) -> str:
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, query: Iterable[tuple[str, str]] = (), body: bytes = b"",
         now: float | None = None, nonce: str | None = None, to: str = "",
         headers: Mapping[str, str] | None = None) -> str:
    """The `X-P2P-Auth` header value for this request to worker `to` ("": the master) with
    `headers` (those of SIGNED_HEADERS are signed)."""
    millis = int((time.time() if now is None else now) * 1000)
    nonce = nonce or secrets.token_hex(12)
    text = string_to_sign(method, path, canonical_query(query), millis, nonce, _digest(body), to,
                          signed_headers(headers))
    return f"t={millis},n={nonce},s={_mac(secret, text)}"


def verify(secret: bytes, method: str, path: str, query: Iterable[tuple[str, str]], header: str | None,
           body: bytes = b"", now: float | None = None, window: float = WINDOW, to: str = "",
           headers: Mapping[str, str] | None = None) -> str:
    """Check a request's `X-P2P-Auth` header, as received by worker `to` ("": the master) with
    `headers`; returns its nonce, raises AuthError."""
    if not header:
        raise AuthError(401, f"internal route: a {HEADER} signature made with the cluster secret is required")
    match = _VALUE.fullmatch(header.strip())
    if match is None:
        raise AuthError(401, f"malformed {HEADER} header: want t=<unix ms>,n=<hex nonce>,s=<hex hmac>")
    millis, nonce, mac = int(match[1]), match[2], match[3]
    now = time.time() if now is None else now
    if abs(millis / 1000 - now) > window:
        raise AuthError(401, f"{HEADER} timestamp is {millis / 1000 - now:+.0f} s from this server's clock "
                             f"(allowed: {window:.0f} s); check the clocks")
    text = string_to_sign(method, path, canonical_query(query), millis, nonce, _digest(body), to,
                          signed_headers(headers))
    if not hmac.compare_digest(_mac(secret, text), mac):
        raise AuthError(403, "bad signature: the request was not signed with this cluster's secret"
                             + (f" for worker {to}, or it changed on the way" if to else ""))
    return nonce


class ReplayGuard:
    """Nonces seen within the window; a second use of one is a replay.

    Bounded: past `max_entries` the oldest are forgotten, which a replay could
    only exploit after that many signed requests within one window.
    """

    def __init__(self, window: float = WINDOW, max_entries: int = 100_000) -> None:
        self._window = window
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, nonce: str, now: float) -> None:
        while self._seen and (next(iter(self._seen.values())) < now - 2 * self._window
                              or len(self._seen) >= self._max):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise AuthError(403, "replayed request: this signature was already used")
        self._seen[nonce] = now


class Signer:
    """Adds the `X-P2P-Auth` header to outgoing internal requests; no header without a secret."""

    def __init__(self, secret: bytes | None, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    def headers(self, method: str, path: str, params: Mapping[str, str] | None = None,
                body: bytes = b"", *, to: str = "", sent: Mapping[str, str] | None = None) -> dict[str, str]:
        """The signature of a request to worker `to` ("": the master) that also sends the headers `sent`."""
        if not self._secret:
            return {}
        return {HEADER: sign(self._secret, method, path, (params or {}).items(), body, self._clock(),
                             to=to, headers=sent)}


class Verifier:
    """Checks incoming internal requests.

    `me`: the receiver's worker id, which a signature must name (None: the master, which takes
    signatures made for no worker). `guard`: True, each signature is accepted once; a set of
    paths, once on those (the routes that change state; a read may come again).
    """

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time,
                 guard: bool | Collection[str] = False, window: float = WINDOW,
                 me: Callable[[], str] | None = None) -> None:
        self._secret = secret
        self._clock = clock
        self._window = window
        self._guard = ReplayGuard(window) if guard else None
        self._guarded = None if guard is True else frozenset(guard or ())
        self._me = me

    def check(self, method: str, path: str, query: Iterable[tuple[str, str]], header: str | None,
              body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        """Raises AuthError; `headers`: the request's (those of SIGNED_HEADERS are checked)."""
        now = self._clock()
        to = ""
        if self._me is not None:
            to = self._me()
            if not to:  # before it knows its id it can check no signature made for it
                raise AuthError(403, "this worker does not know its id yet")
        nonce = verify(self._secret, method, path, query, header, body, now, self._window, to, headers)
        if self._guard is not None and (self._guarded is None or path in self._guarded):
            self._guard.check(nonce, now)


def load_secret(value: str | bytes | None, path: str | Path | None) -> bytes | None:
    """The cluster secret from a value or a file (surrounding whitespace dropped); None if neither.

    Raises ValueError for both at once, an unreadable file or a secret shorter than MIN_SECRET.
    """
    if value and path:
        raise ValueError("give the cluster secret with --cluster-secret or --cluster-secret-file, not both")
    if path:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the cluster secret file {path}: {exc.strerror}") from None
    elif value:
        secret = (value.encode() if isinstance(value, str) else value).strip()
    else:
        return None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the cluster secret must be at least {MIN_SECRET} bytes "
                         f"(e.g. `openssl rand -hex 32`), got {len(secret)}")
    return secret


def new_secret() -> str:
    return secrets.token_hex(32)
