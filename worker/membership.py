"""Keeps this worker in the master's ring and the latest ring in hand.

If the master is gone, nothing changes for reads: the last ring stays in use,
heartbeats retry, and a restarted master learns the worker on the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Callable

from p2pcache.errors import Unavailable
from p2pcache.master_client import MasterClient
from p2pcache.ring import DRAINING, Placement, RingSnapshot, WorkerInfo

__all__ = ["MembershipAgent"]

log = logging.getLogger("p2pcache.membership")
LONG_POLL = 30.0


class MembershipAgent:
    def __init__(self, master: MasterClient, me: WorkerInfo, interval: float,
                 on_ring: Callable[[Placement], None]) -> None:
        self._master = master
        self.me = me
        self._interval = interval
        self._on_ring = on_ring
        self._tasks: list[asyncio.Task] = []
        self.ring: RingSnapshot | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._watch())]

    async def stop(self, leave: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if leave:
            try:
                await self._master.leave(self.me.id)
                log.info("left the ring")
            except Unavailable as exc:
                log.warning("could not leave the ring (the master will expire us): %s", exc)

    async def drain(self) -> bool:
        """Tell the master we are draining (own nothing, still serve); False if it cannot be told."""
        self.me = replace(self.me, state=DRAINING)  # later heartbeats say so too
        try:
            await self._master.heartbeat(self.me)
        except Unavailable as exc:
            log.warning("could not announce draining: %s", exc)
            return False
        log.info("draining: handing our chunks to their new owners")
        return True

    async def _heartbeats(self) -> None:
        failing = False
        interval = self._interval
        while True:
            try:
                reply = await self._master.heartbeat(self.me)
                interval = self._pace(reply.get("ttl"), interval)
                if failing:
                    log.info("master reachable again")
                failing = False
            except Unavailable as exc:
                if not failing:
                    log.warning("heartbeat failed, serving on the last ring: %s", exc)
                failing = True
            await asyncio.sleep(interval)

    def _pace(self, ttl: object, now: float) -> float:
        """The heartbeat interval: ours, or a third of the master's TTL if that is shorter, so a
        master whose --worker-ttl is shorter than our --heartbeat-interval never drops us."""
        if not isinstance(ttl, (int, float)) or not ttl > 0:
            return self._interval  # a master that does not say
        interval = min(self._interval, ttl / 3)
        if interval != now:
            log.warning("the master drops a worker after %g s without a heartbeat: beating every %g s "
                        "(--heartbeat-interval %g)", ttl, interval, self._interval)
        return interval

    async def _watch(self) -> None:
        while True:
            try:
                known = self.ring.version if self.ring else None
                ring = await self._master.ring(known, wait=LONG_POLL)
            except Unavailable:
                await asyncio.sleep(self._interval)
                continue
            if self.ring is None or ring.version != self.ring.version:
                # Building the hash ring is CPU work that grows with workers x vnodes
                # (tens of ms for 64 workers): off the event loop.
                placement = await asyncio.to_thread(Placement, ring)
                self.ring = ring
                self._on_ring(placement)
