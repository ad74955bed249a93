"""What a worker is known by on the ring: one rule for its id, URL and weight, which the master
applies to registrations (400 otherwise) and the worker to its flags (it does not start otherwise)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["InvalidRegistration", "check_id", "check_url", "service_url", "MAX_WEIGHT", "MAX_URL"]

ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Ring points grow with the weight (vnodes x weight per worker): 100 keeps the
# biggest worker at 100x the smallest without letting one registration build
# millions of points on every worker.
MAX_WEIGHT = 100
MAX_URL = 512
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


class InvalidRegistration(ValueError):
    """The registration is malformed (400)."""


def check_id(worker_id: object) -> None:
    if not isinstance(worker_id, str) or not ID.fullmatch(worker_id):
        raise InvalidRegistration("id must be 1-128 characters of A-Z a-z 0-9 . _ -")


def check_url(url: object) -> None:
    """`http(s)://host[:port]`, nothing else: peers append their paths to it."""
    if not isinstance(url, str) or not url.isascii() or len(url) > MAX_URL or not url.isprintable():
        raise InvalidRegistration(f"url must be printable ASCII of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRegistration(f"url {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRegistration(f"url {url!r} must be http:// or https://")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if not _HOST.fullmatch(host) or parts.username is not None or (port is not None and port == 0):
        raise InvalidRegistration(f"url {url!r} must name a host (and a port from 1 to 65535), no user")
    if parts.path or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidRegistration(f"url {url!r} must not have a path, query or fragment")


def service_url(url: str) -> str:
    """A master's URL as a client is given it: `check_url`'s rule, a trailing "/" dropped."""
    url = url.rstrip("/") if isinstance(url, str) else url
    check_url(url)
    return url
