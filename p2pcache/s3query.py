"""An S3 request's query arguments as S3 reads them: UTF-8, or a 400."""

from __future__ import annotations

from typing import Collection
from urllib.parse import unquote, unquote_to_bytes

from .errors import InvalidArgument

__all__ = ["check_utf8"]


def check_utf8(raw_query: str, names: Collection[str] | None = None) -> None:
    """Every argument of a query string as sent (or every one of `names`) decodes as UTF-8.

    aiohttp replaces a byte that does not with U+FFFD: S3 would list (and echo) a
    prefix nobody asked for, and a `response-*` override would send a header nobody asked for.
    """
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        if names is not None and unquote(name) not in names:
            continue
        try:
            unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{name} is not valid UTF-8", name, value) from None
