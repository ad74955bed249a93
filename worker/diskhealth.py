"""The cache disk's health: after a store failure, reads go around the disk for a while.

A breaker (p2pcache.breaker) with a threshold of one: a failed write or read
opens it, and while it is open, missing chunks are streamed to readers without
being cached; after the cooldown one fill tries the disk again. Each failure
is counted; the warning is logged at most once per `LOG_EVERY` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from p2pcache.breaker import CLOSED, Breaker

__all__ = ["DiskHealth"]

log = logging.getLogger("p2pcache.disk")
LOG_EVERY = 10.0
RETRY_AFTER, MAX_RETRY_AFTER = 5.0, 60.0  # seconds before the disk is tried again, doubling


class DiskHealth:
    def __init__(self, on_error: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._breaker = Breaker(1, RETRY_AFTER, MAX_RETRY_AFTER, clock)
        self._on_error, self._clock = on_error, clock
        self._logged_at = -LOG_EVERY
        self._unlogged = 0

    @property
    def degraded(self) -> str | None:
        """Why reads go around the disk now, or None."""
        if self._breaker.state == CLOSED:
            return None
        return f"cache disk failing, reads not cached: {self._breaker.cause}"

    def admit(self) -> int | None:
        """A ticket to fill a chunk on disk, or None: go around the disk."""
        return self._breaker.admit()

    def record(self, ticket: int, ok: bool | None, error: Exception | None = None) -> None:
        if ok is False:
            self._count(error)
        self._breaker.record(ticket, ok, error)

    def failed(self, error: Exception) -> None:
        """A failure outside an admitted fill (reading a chunk): counts as one."""
        ticket = self._breaker.admit()
        if ticket is None:
            self._count(error)
            self._breaker.cause = error
            return
        self.record(ticket, False, error)

    def _count(self, error: Exception | None) -> None:
        self._on_error()
        now = self._clock()
        if now - self._logged_at < LOG_EVERY:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning("cache disk failed, serving around it: %s%s", error, more)
        self._logged_at, self._unlogged = now, 0
