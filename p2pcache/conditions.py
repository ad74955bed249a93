"""Conditional GET/HEAD (If-Match, If-None-Match, If-(Un)Modified-Since) as S3 decides them,
and how fresh a reader wants the cache's answer (`Cache-Control`)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Mapping

__all__ = ["evaluate", "etag_matches", "max_age", "list_field"]

_MAX_AGE = re.compile(r"(?:^|[\s,])max-age\s*=\s*\"?([0-9]{1,12})(?![0-9])")


def list_field(headers: Mapping[str, str], name: str) -> str | None:
    """A list header's value: its lines joined with ", ", which RFC 9110 (5.3) says means the same.

    `headers.get` would read the first line only (aiohttp's and multidict's headers keep each).
    """
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get(name)
    lines = getall(name, ())
    return ", ".join(lines) if lines else None


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match/If-None-Match list names `etag` (`*` names any)."""
    want = etag.strip().removeprefix("W/").strip('"')
    for item in header.split(","):
        item = item.strip().removeprefix("W/").strip('"')
        if item == "*" or item == want:
            return True
    return False


def _date(text: str | None) -> datetime | None:
    """An HTTP date in any of RFC 9110's three forms (IMF-fixdate, RFC 850, asctime), as UTC.

    asctime has no zone and `-0000` means "unknown": both are GMT in HTTP, so a
    naive result is made aware; an unparseable date is ignored, as HTTP says.
    """
    if not text or len(text) > 100:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def evaluate(headers: Mapping[str, str], etag: str, last_modified: str) -> int | None:
    """None to go on, 412 (precondition failed) or 304 (not modified).

    S3's precedence: a true If-Match overrides a false If-Unmodified-Since, and
    a false If-None-Match overrides a true If-Modified-Since.
    """
    if_match = list_field(headers, "If-Match")
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return 412
    elif "If-Unmodified-Since" in headers:
        since, modified = _date(headers["If-Unmodified-Since"]), _date(last_modified)
        if since and modified and modified > since:
            return 412
    if_none = list_field(headers, "If-None-Match")
    if if_none is not None:
        if etag_matches(if_none, etag):
            return 304
    elif "If-Modified-Since" in headers:
        since, modified = _date(headers["If-Modified-Since"]), _date(last_modified)
        if since and modified and modified <= since:
            return 304
    return None


def max_age(headers: Mapping[str, str]) -> float | None:
    """Seconds of staleness a request's `Cache-Control` accepts: 0 for `no-cache`, n for
    `max-age=n`, None (the cache's own TTL) without either."""
    value = (list_field(headers, "Cache-Control") or "").lower()
    if "no-cache" in value:
        return 0.0
    match = _MAX_AGE.search(value)
    return float(match.group(1)) if match else None
