"""A loader's view of the ring: fetched once, kept fresh by a long-poll, never waited on by reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .errors import Unavailable
from .master_client import MasterClient
from .ring import Placement

__all__ = ["RingView"]

log = logging.getLogger("p2pcache.client")
LONG_POLL = 30.0
RETRY = 1.0  # seconds between attempts while the master is unreachable


class RingView:
    """The latest placement; if the master goes away, the last one stays in use."""

    def __init__(self, master: MasterClient) -> None:
        self._master = master
        self._placement: Placement | None = None
        self._watch: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            raise Unavailable("no ring yet: the client is not started")
        return self._placement

    async def start(self) -> None:
        """Fetch the ring (the master must be up for this one) and start following it."""
        self._set(await self._master.ring())
        self._watch = asyncio.create_task(self._follow())

    async def close(self) -> None:
        for task in (self._watch, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def refresh(self) -> Placement:
        """Ask the master now (one request however many callers); on failure keep the last ring."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fetch())
        await asyncio.shield(self._refreshing)
        return self.placement

    async def _fetch(self) -> None:
        try:
            self._set(await self._master.ring())
        except Unavailable as exc:
            log.warning("could not refresh the ring, keeping epoch %d: %s",
                        self.placement.ring.epoch, exc)

    async def _follow(self) -> None:
        while True:
            try:
                self._set(await self._master.ring(self.placement.ring.version, wait=LONG_POLL))
            except Unavailable:
                await asyncio.sleep(RETRY)

    def _set(self, ring) -> None:
        if self._placement is None or ring.version != self._placement.ring.version:
            if ring.chunk_size <= 0:
                raise Unavailable(f"the master's ring has chunk size {ring.chunk_size}")
            self._placement = Placement(ring)
            log.debug("ring epoch %d: %d workers", ring.epoch, len(self._placement.workers))
