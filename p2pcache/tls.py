"""TLS for the master's and workers' listeners, and the trust their outgoing requests use."""

from __future__ import annotations

import ssl

__all__ = ["server_context", "client_context", "check_pair"]


def check_pair(cert: str, key: str) -> None:
    """Raises ValueError unless both or neither of --tls-cert and --tls-key are given."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")


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
