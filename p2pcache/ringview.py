"""A loader's view of the ring: fetched once, kept fresh by a long-poll, never waited on by reads."""

from __future__ import annotations

import asyncio
import logging

from .errors import Unavailable
from .master_client import MasterClient
from .ring import Placement, RingSnapshot

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
        self._taking = asyncio.Lock()

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            raise Unavailable("no ring yet: the client is not started")
        return self._placement

    async def start(self) -> None:
        """Fetch the ring (the master must be up for this one) and start following it."""
        await self._take(await self._master.ring())
        self._watch = asyncio.create_task(self._follow())

    async def close(self) -> None:
        """Stop following; never raises what a fetch failed with (it was logged)."""
        tasks = [task for task in (self._watch, self._refreshing) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def refresh(self) -> Placement:
        """Ask the master now (one request however many callers); on failure keep the last ring."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fetch())
        await asyncio.shield(self._refreshing)
        return self.placement

    async def _fetch(self) -> None:
        try:
            await self._take(await self._master.ring())
        except Unavailable as exc:
            log.warning("could not refresh the ring, keeping epoch %d: %s",
                        self.placement.ring.epoch, exc)

    async def _follow(self) -> None:
        failing = False  # the last try failed: the next failure is not logged again
        while True:
            try:
                if await self._take(await self._master.ring(self.placement.ring.version, wait=LONG_POLL)):
                    if failing:
                        log.info("following the master's ring again, epoch %d", self.placement.ring.epoch)
                    failing = False
                    continue
            except Unavailable as exc:  # unreachable, or no ring in its answer (a proxy's page)
                if not failing:
                    log.warning("could not follow the ring, keeping epoch %d, asking again every %g s: %s",
                                self.placement.ring.epoch, RETRY, exc)
                failing = True
            except Exception:  # the follower must outlive any answer: a dead one never takes a ring again
                if not failing:
                    log.exception("bug: the ring could not be followed, keeping epoch %d", self.placement.ring.epoch)
                failing = True
            await asyncio.sleep(RETRY)  # the master is away, or its ring was not taken

    async def _take(self, ring: RingSnapshot) -> bool:
        """Take `ring` if it is new; False if it is refused. One at a time, in arrival order."""
        async with self._taking:
            return await self._set(ring)

    async def _set(self, ring: RingSnapshot) -> bool:
        current = self._placement
        if current is not None and ring.version == current.ring.version:
            return True
        if ring.chunk_size <= 0:
            raise Unavailable(f"the master's ring has chunk size {ring.chunk_size}")
        # Building the hash ring grows with workers x vnodes: off the event loop.
        placement = await asyncio.to_thread(Placement, ring)
        if current is not None and current.workers and not placement.workers:
            # A restarted master publishes no workers until they heartbeat again;
            # the ones we know are likely still serving.
            log.warning("keeping ring epoch %d: the master's ring %d has no workers",
                        current.ring.epoch, ring.epoch)
            return False
        self._placement = placement
        log.debug("ring epoch %d: %d workers", ring.epoch, len(placement.workers))
        return True
