"""Keeps this worker in the master's ring and the latest ring in hand.

If the master is gone, nothing changes for reads: the last ring stays in use,
heartbeats retry, and a restarted master learns the worker on the next beat, and the
ring it holds (its owners are the restarted master's earlier ones: master/earlier.py). If
it refuses the worker, at registration or later, that is Fatal: it would refuse
every beat (400), or its cluster secret is not ours (401/403 on REFUSALS beats
in a row: a master restarted with a rotated secret; the pod restarted holds the
new one). A refusal that passes (a clock stepped back into line, a proxy's
passing 403) is logged and outlived, as an unreachable master is; so is its 409 to a second
process with a live worker's id at another URL in an open cluster (Refused: until the first
leaves or expires).

On SIGTERM the worker's own calls to the master (announcing the drain, leaving) wait only
for what is left of --drain-timeout: a master that is restarting is asked again until it
answers or the drain is out of time; a hung one does not hold the worker past its grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Awaitable, Callable

from p2pcache.errors import BadRequest, Refused, Unauthorized, Unavailable
from p2pcache.master_client import TIMEOUT, MasterClient
from p2pcache.ring import DRAINING, Placement, RingSnapshot, WorkerInfo
from p2pcache.ringreport import RingReport
from p2pcache.service import Fatal

from .unpins import Missed, missed

__all__ = ["MembershipAgent", "announce_delay", "call_timeout"]

log = logging.getLogger("p2pcache.membership")
LONG_POLL = 30.0
REFUSALS = 5  # heartbeats in a row refused as unauthenticated before this worker gives up (10 s by default)
# Announcing a drain to a master that cannot be reached: tried again after 0.1 s, 0.2 s, ... at
# most 1 s apart (a restarting master is back within seconds, and a refused connection costs
# it nothing), while at least MIN_TRY seconds of the drain would be left for the try.
ANNOUNCE_BACKOFF, ANNOUNCE_BACKOFF_CAP = 0.1, 1.0
MIN_TRY = 0.25  # seconds: the least a call to the master is given, however little of the drain is left


def announce_delay(failures: int, left: float) -> float | None:
    """Seconds to wait before announcing the drain again after `failures` (>= 1) failed tries in a
    row, with `left` seconds of --drain-timeout; None when too little would be left for the try."""
    delay = min(ANNOUNCE_BACKOFF_CAP, ANNOUNCE_BACKOFF * 2 ** min(failures - 1, 16))
    return delay if left - delay >= MIN_TRY else None


def call_timeout(left: float) -> float:
    """Seconds a call to the master may take with `left` seconds of the drain: no more than is
    left, but at least MIN_TRY (a leave past the deadline still gets one short try; and a
    timeout of 0 would be none at all), at most the usual TIMEOUT."""
    return min(TIMEOUT, max(left, MIN_TRY))


class MembershipAgent:
    def __init__(self, master: MasterClient, me: WorkerInfo, interval: float,
                 on_ring: Callable[[Placement], None],
                 on_unpins: Callable[[list[Missed]], Awaitable[None]] | None = None,
                 wall_clock: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic) -> None:
        self._master = master
        self.me = me
        self._interval = interval
        self._pace_now = interval  # seconds between heartbeats (see _pace)
        self._failing = False
        self._declined = False  # the master refuses this worker for now (Refused)
        self._refusals = 0  # heartbeats refused in a row as unauthenticated (401/403)
        self._on_ring = on_ring
        self._on_unpins, self._wall_clock, self._clock = on_unpins, wall_clock, clock
        # The master's unpins had (worker/unpins.py): [master_id, seq] of the last, [] for none.
        self.unpins_seen: list = []
        self._tasks: list[asyncio.Task] = []
        self.ring: RingSnapshot | None = None
        self._ring_at = 0.0  # when `ring` came (`clock`)
        # The master that answered the last heartbeat (None: none since one failed), and whether it
        # may be told our ring (see _report).
        self._heard: str | None = None
        self._reporting = True
        # Set when the master refuses a heartbeat: it would refuse every beat again.
        self.refused: asyncio.Future[Fatal] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Register, then heartbeat and follow the ring. Fatal if the master refuses us; an
        unreachable master is logged and retried (reads do not need it). While the master
        refuses our signature, we are not in its ring: wait here until it takes us, or Fatal
        (or goes: then as above)."""
        await self._beat()
        while self._refusals and not self._failing:
            await asyncio.sleep(self._pace_now)
            await self._beat()
        self._tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._watch())]

    async def stop(self, leave: bool = True, left: float = TIMEOUT) -> None:
        """Stop beating and following the ring; with `leave`, tell the master we are gone,
        waiting for its answer no longer than `call_timeout(left)`."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if leave:
            try:
                await self._master.leave(self.me.id, timeout=call_timeout(left))
                log.info("left the ring" if not self._declined else
                         "told the master this process is gone (it refused this worker: its id stays the other's)")
            except Unavailable as exc:
                log.warning("could not leave the ring (the master will expire us): %s", exc)

    async def drain(self, left: Callable[[], float]) -> bool:
        """Tell the master we are draining (own nothing, still serve), trying again while the
        master cannot be reached, until `left()` (the seconds left of the drain) is too short for
        another try (`announce_delay`); False, logged, if it could not be told."""
        self.me = replace(self.me, state=DRAINING)  # later heartbeats say so too
        began, failures = left(), 0
        while True:
            try:
                await self._master.heartbeat(self.me, timeout=call_timeout(left()))
                break
            except BadRequest as exc:
                log.warning("the master refused the drain: leaving without a handoff: %s", exc)
                return False
            except Refused as exc:  # another process holds our id: we own nothing to hand off
                log.warning("%s; this worker is not in the ring: leaving without a handoff", exc)
                return False
            except (Unavailable, Unauthorized) as exc:  # a refusal that may pass, as in _beat
                failures += 1
                delay = announce_delay(failures, left())
                if delay is None:
                    log.warning("the master %s for the whole drain (%d %s in %.1f s): leaving without a handoff; "
                                "last error: %s", "refused this worker" if isinstance(exc, Unauthorized)
                                else "was unreachable", failures, "try" if failures == 1 else "tries",
                                began - left(), exc)
                    return False
                if failures == 1:
                    log.warning("could not announce draining, trying again for up to --drain-timeout (%.1f s "
                                "left), serving meanwhile: %s", left(), exc)
            await asyncio.sleep(delay)
        if failures:
            log.info("announced draining after %d failed tries", failures)
        log.info("draining: handing our chunks to their new owners")
        return True

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._pace_now)
            try:
                await self._beat()
            except Fatal as exc:
                log.error("%s", exc)
                self.refused.set_result(exc)
                return

    async def _beat(self) -> None:
        """One heartbeat; Fatal if the master refuses it for good."""
        sent, report = self._wall_clock(), self._report()
        try:
            reply = await self._master.heartbeat(self.me, unpins=self.unpins_seen if self._on_unpins else None,
                                                 ring=report)
        except BadRequest as exc:
            if report is None:
                raise Fatal(str(exc)) from None
            # Was it our ring the master refused (a master of another version)? Then it is no reason to stop.
            self._reporting = False
            await self._beat()  # Fatal if it refuses the heartbeat without it too
            log.warning("the master refused the ring this worker holds: beating without it from now on: %s", exc)
            return
        except Unauthorized as exc:
            self._refusals += 1
            if self._refusals >= REFUSALS:
                raise Fatal(str(exc)) from None
            log.warning("heartbeat refused (%d in a row; this worker gives up at %d): %s",
                        self._refusals, REFUSALS, exc)
            return
        except Refused as exc:  # it answered: not a failing master, and no reason to stop
            if not self._declined:
                log.warning("%s; asking again at each heartbeat%s", exc,
                            ", serving on the last ring" if self.ring is not None else "")
            self._declined, self._heard = True, None
            return
        except Unavailable as exc:
            if not self._failing:
                log.warning("heartbeat failed, %s: %s", "serving on the last ring" if self.ring is not None
                            else "no ring yet", exc)
            self._failing, self._heard = True, None  # it may come back as a new master
            return
        if self._declined:
            log.info("the master took this worker")
        elif self._failing or self._refusals:
            log.info("master reachable again")
        self._failing, self._refusals, self._declined = False, 0, False
        self._heard = reply.get("master_id") if isinstance(reply.get("master_id"), str) else None
        self._pace(reply.get("ttl"))
        if self._on_unpins and reply.get("unpins"):
            await self._unpinned(reply, sent)
        if report is None and self._report() is not None:
            # A master restarted between two beats (we never saw it gone): tell it our ring now, not a
            # heartbeat interval later, when its --startup-grace may have ended.
            await self._beat()

    async def _unpinned(self, reply: dict, sent: float) -> None:
        """Drop the keeps the master's unpins in `reply` were made after; they are had then."""
        try:
            unpins, master_id = missed(reply["unpins"], sent), reply.get("master_id")
            if not isinstance(master_id, str):
                raise ValueError(f"master_id must be a string, not {master_id!r:.100}")
        except ValueError as exc:
            log.warning("ignored the unpins in the master's answer: %s", exc)
            return
        await self._on_unpins(unpins)
        self.unpins_seen = [master_id, unpins[-1].seq]

    def _report(self) -> RingReport | None:
        """The ring we hold, for a master that has not given us one: a restarted master (a new id, or
        one we could not reach since our last beat) carries its owners into its first ring, so a
        chunk's new owner asks them before S3 (master/earlier.py). None for the master whose ring it is."""
        if not self._reporting or self.ring is None or self.ring.master_id == self._heard:
            return None
        return RingReport.of(self.ring, self._clock() - self._ring_at)

    def _pace(self, ttl: object) -> None:
        """Beat every --heartbeat-interval, or a third of the master's TTL if that is shorter, so a
        master whose --worker-ttl is shorter than our --heartbeat-interval never drops us."""
        if not isinstance(ttl, (int, float)) or not ttl > 0:
            return  # a master that does not say
        interval = min(self._interval, ttl / 3)
        if interval != self._pace_now:
            log.warning("the master drops a worker after %g s without a heartbeat: beating every %g s "
                        "(--heartbeat-interval %g)", ttl, interval, self._interval)
        self._pace_now = interval

    async def _watch(self) -> None:
        failing = False  # the last ask failed: the next failure is not logged again
        while True:
            try:
                known = self.ring.version if self.ring else None
                ring = await self._master.ring(known, wait=LONG_POLL)
            except Unavailable as exc:  # unreachable, or no ring in its answer (a proxy's page): ask again
                if not failing:
                    log.warning("could not fetch the ring, %s, asking again every %g s: %s",
                                "serving on the last one" if self.ring is not None else "none yet",
                                self._interval, exc)
                failing = True
                await asyncio.sleep(self._interval)
                continue
            failing = False
            if self.ring is None or ring.version != self.ring.version:
                # Building the hash ring is CPU work that grows with workers x vnodes
                # (tens of ms for 64 workers): off the event loop.
                placement = await asyncio.to_thread(Placement, ring)
                self.ring, self._ring_at = ring, self._clock()
                self._on_ring(placement)
