"""Conditional GET/HEAD (If-Match, If-None-Match, If-(Un)Modified-Since) as S3 decides them."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Mapping

__all__ = ["evaluate", "etag_matches"]


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match/If-None-Match list names `etag` (`*` names any)."""
    want = etag.strip().removeprefix("W/").strip('"')
    for item in header.split(","):
        item = item.strip().removeprefix("W/").strip('"')
        if item == "*" or item == want:
            return True
    return False


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None  # an unparseable date is ignored, as HTTP says


def evaluate(headers: Mapping[str, str], etag: str, last_modified: str) -> int | None:
    """None to go on, 412 (precondition failed) or 304 (not modified).

    S3's precedence: a true If-Match overrides a false If-Unmodified-Since, and
    a false If-None-Match overrides a true If-Modified-Since.
    """
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return 412
    elif "If-Unmodified-Since" in headers:
        since, modified = _date(headers["If-Unmodified-Since"]), _date(last_modified)
        if since and modified and modified > since:
            return 412
    if_none = headers.get("If-None-Match")
    if if_none is not None:
        if etag_matches(if_none, etag):
            return 304
    elif "If-Modified-Since" in headers:
        since, modified = _date(headers["If-Modified-Since"]), _date(last_modified)
        if since and modified and modified <= since:
            return 304
    return None
