"""TLS for the master's and workers' listeners, and the trust their outgoing requests use."""

from __future__ import annotations

import os
import ssl

__all__ = ["server_context", "client_context", "check"]


def check(cert: str, key: str, ca: str = "") -> None:
    """Raises ValueError, with one line saying why, unless the files make usable contexts."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{flag}: cannot read {path}")
    for what, build in (("--tls-cert/--tls-key: not a PEM certificate chain and its key",
                         lambda: server_context(cert, key)),
                        ("--tls-ca: not a PEM bundle of CA certificates", lambda: client_context(ca))):
        try:
            build()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{what} ({exc})") from None


def server_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server context for the PEM certificate chain and key, or None without them (plain HTTP)."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: str) -> ssl.SSLContext | bool:
    """Verification for https:// peers and master: the system's CAs, plus `ca` (a PEM bundle) if given."""
    if not ca:
        return True  # aiohttp's default: verify against the system's CAs
    context = ssl.create_default_context()  # loads the system's CAs
    context.load_verify_locations(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
