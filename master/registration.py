"""What the master accepts as a worker registration: id and URL syntax, sane numbers, no takeovers."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from urllib.parse import urlsplit

import msgpack

from p2pcache.ring import DRAINING, UP, WorkerInfo

__all__ = ["InvalidRegistration", "Takeover", "parse_worker", "check_url", "check_takeover",
           "MAX_WEIGHT", "STATES"]

ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Ring points grow with the weight (vnodes x weight per worker): 100 keeps the
# biggest worker at 100x the smallest without letting one registration build
# millions of points on every worker.
MAX_WEIGHT = 100
MAX_CAPACITY = (1 << 63) - 1
MAX_URL = 512
STATES = frozenset({UP, DRAINING})
_FIELDS = {f.name for f in fields(WorkerInfo)}
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


class InvalidRegistration(ValueError):
    """The registration is malformed (400)."""


class Takeover(ValueError):
    """The id is registered at another URL, and the request could not prove it is the cluster's (409)."""


def parse_worker(body: bytes, content_type: str) -> WorkerInfo:
    """A WorkerInfo from a msgpack (or JSON) registration; unknown fields are ignored."""
    try:
        data = json.loads(body) if content_type == "application/json" else msgpack.unpackb(body)
    except Exception as exc:  # msgpack and json raise a variety of errors on bad input
        raise InvalidRegistration(f"not a {content_type or 'msgpack'} document: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRegistration("want a map of worker fields")
    missing = {"id", "url"} - data.keys()
    if missing:
        raise InvalidRegistration(f"missing {', '.join(sorted(missing))}")
    info = WorkerInfo(**{k: v for k, v in data.items() if k in _FIELDS})
    if not isinstance(info.id, str) or not ID.fullmatch(info.id):
        raise InvalidRegistration("id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    check_url(info.url)
    if not _int(info.weight) or not 1 <= info.weight <= MAX_WEIGHT:
        raise InvalidRegistration(f"weight must be an integer from 1 to {MAX_WEIGHT}")
    if not _int(info.capacity) or not 0 <= info.capacity <= MAX_CAPACITY:
        raise InvalidRegistration("capacity must be a non-negative integer (bytes)")
    if info.state not in STATES:
        raise InvalidRegistration(f"state must be one of {', '.join(sorted(STATES))}")
    return info


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


def check_takeover(current: WorkerInfo | None, new: WorkerInfo, authenticated: bool) -> None:
    """A live id keeps its URL unless the request was signed with the cluster secret.

    With the secret, a new URL is a restarted pod with a new address; without,
    it could be anyone redirecting that worker's chunks to their own server.
    """
    if current is not None and current.url != new.url and not authenticated:
        raise Takeover(f"worker id {new.id!r} is registered at {current.url}; moving it to another URL "
                       f"needs the cluster secret, or the old registration to leave or expire")


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
