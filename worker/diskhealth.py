"""The cache disk's health: after a store failure, reads go around the disk for a while.

A breaker (p2pcache.breaker) with a threshold of one: a failed write or read
opens it, and while it is open, missing chunks are streamed to readers without
being cached; after the cooldown one fill tries the disk again. Each failure
is counted; the warning is logged at most once per `LOG_EVERY` seconds.

A store with no room for a chunk (Busy: every cached chunk is being read or
pinned, or the volume is under its free-space floor) is not a failing disk:
that chunk is streamed uncached, nothing is counted against the disk, and the
next fill tries again (a full store refuses at once, before S3 is asked).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from p2pcache.breaker import CLOSED, Breaker
from p2pcache.errors import Busy

__all__ = ["DiskHealth"]

log = logging.getLogger("p2pcache.disk")
LOG_EVERY = 10.0
RETRY_AFTER, MAX_RETRY_AFTER = 5.0, 60.0  # seconds before the disk is tried again, doubling


class DiskHealth:
    def __init__(self, on_error: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._breaker = Breaker(1, RETRY_AFTER, MAX_RETRY_AFTER, clock)
        self._on_error, self._clock = on_error, clock
        self._full: Exception | None = None  # why the last fill found no room, until one is stored
        self._logged_at = -LOG_EVERY
        self._unlogged = 0

    @property
    def degraded(self) -> str | None:
        """Why reads go around the disk now, or None."""
        if self._breaker.state != CLOSED:
            return f"cache disk failing, reads not cached: {self._breaker.cause}"
        if self._full is not None:
            return f"new chunks not cached: {self._full}"
        return None

    def admit(self) -> int | None:
        """A ticket to fill a chunk on disk, or None: go around the disk."""
        return self._breaker.admit()

    def record(self, ticket: int, ok: bool | None, error: Exception | None = None) -> None:
        """The outcome of an admitted fill; a StoreError raised from Busy is a full store."""
        room = getattr(error, "__cause__", None)
        if ok is False and isinstance(room, Busy):
            self._full = room
            self._warn("no room in the cache, streaming a chunk uncached", room)
            self._breaker.record(ticket, None)  # no verdict on the disk
            return
        if ok is True:
            self._full = None
        elif ok is False:
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
        self._warn("cache disk failed, serving around it", error)

    def _warn(self, what: str, error: Exception | None) -> None:
        now = self._clock()
        if now - self._logged_at < LOG_EVERY:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning("%s: %s%s", what, error, more)
        self._logged_at, self._unlogged = now, 0
