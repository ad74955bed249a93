"""Hands the chunks held here to their owners after the ring changes, at a bounded rate.

The holder pushes a name, the owner pulls the bytes: the owner's `take` route
copies the chunk from us through its normal fill (one flight per chunk, shared
with readers that miss it meanwhile), so a reader never waits on S3 for a
chunk that is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable, Iterable

from p2pcache.errors import NotCached, NotOwner, P2PError
from p2pcache.objects import ChunkId
from p2pcache.ring import Placement, WorkerInfo

from .drainreport import FAILED, HANDED, HELD, NO_OWNER, STALE, DrainTally
from .keep import Keeps
from .limits import TokenBucket
from .metrics import WorkerMetrics
from .peer import PeerClient
from .store import ChunkStore

__all__ = ["Rebalancer", "plan", "stale"]

log = logging.getLogger("p2pcache.rebalance")
BATCH = 512  # chunk trailers read per executor hop
RETRY, MAX_RETRY = 0.5, 30.0  # seconds before a pass with failures is planned again
# Seconds before a chunk filled here for an owner that failed is offered to it: by then it is
# back (a restart, a pause) or the master has dropped it (a TTL and a quarter, 12.5 s by default).
HANDBACK = 15.0


def plan(held: Iterable[ChunkId], placement: Placement, me: str) -> list[tuple[ChunkId, tuple[WorkerInfo, ...]]]:
    """Who each chunk held here should go to: its owners, but us. With replicas every owner
    offers its copy to the others, followers too: after a crash the one copy left may be a
    follower's, and the new primary gets it from there, or the next crash loses it. A chunk cut
    at another chunk size than the ring's goes nowhere: no owner may take it (`stale`)."""
    replicas = placement.ring.replicas
    out = []
    for c in held:
        if c.chunk_size != placement.ring.chunk_size:
            continue
        targets = tuple(w for w in placement.owners(c)[:replicas] if w.id != me)
        if targets:
            out.append((c, targets))
    return out


def stale(held: Iterable[ChunkId], placement: Placement) -> list[ChunkId]:
    """The chunks held here cut at another chunk size than the ring's (the master's --chunk-size
    changed): no reader asks for them while it stays so; the first to make room."""
    return [c for c in held if c.chunk_size != placement.ring.chunk_size]


class _Gates:
    """A pass's takes per owner: one at a time until the owner has answered one (a hung owner
    holds one of the pass's slots, not all of them, while the others go on), then up to all the
    slots; none once one failed in this pass (its chunks wait for the next pass)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._answered: set[str] = set()
        self.failed: set[str] = set()

    def gate(self, owner: str) -> asyncio.Semaphore:
        return self._gates.setdefault(owner, asyncio.Semaphore(1))

    def answered(self, owner: str) -> None:
        if owner not in self._answered:
            self._answered.add(owner)
            for _ in range(self._slots - 1):
                self.gate(owner).release()


class Rebalancer:
    def __init__(self, *, me: str, store: ChunkStore, peers: PeerClient, metrics: WorkerMetrics,
                 placement: Callable[[], Placement], rate: float, concurrency: int = 4,
                 keeps: Keeps | None = None) -> None:
        self._me, self._store, self._peers, self._m = me, store, peers, metrics
        self._keeps = keeps
        self._placement = placement
        self._bucket = TokenBucket(rate, burst=16 << 20)
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._extra: list[ChunkId] = []  # filled here since the last pass (see `filled`)
        self._later: dict[str, asyncio.TimerHandle] = {}  # chunk name -> its handback (see `filled`)
        self._back: list[ChunkId] = []  # handbacks due
        self._full = False  # the ring changed since the last full pass
        self._task: asyncio.Task | None = None
        self.tally: DrainTally | None = None  # while draining: what became of each chunk (`drain`)
        self.backlog = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for handle in self._later.values():
            handle.cancel()
        self._later.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def drain(self) -> None:
        """The worker drains: hand everything over as fast as the owners take it, and tally what
        became of each chunk (`tally`), for the drain's last line."""
        self.tally = DrainTally()

    @property
    def draining(self) -> bool:
        """Hand over as fast as the owners take it (since `drain`)."""
        return self.tally is not None

    def changed(self) -> None:
        """The ring changed: plan again from every chunk held here."""
        self._full = True
        self._idle.clear()
        self._wake.set()

    def filled(self, c: ChunkId) -> None:
        """A chunk was just filled here from S3: with replicas, copy it to its followers if we
        are its primary; draining, hand it to its owners, or it leaves with us (`plan`).

        A chunk filled here for an owner that failed is offered to its owner HANDBACK seconds
        later, once, or the owner, back, would read it from S3 again at its next read; if the
        master dropped the owner meanwhile, the offer goes to the new ring's owner, as that
        ring's pass does. (Offered at once, it would go to the failed owner, which may be hung;
        offered again and again, to one that still is.)"""
        placement = self._placement()
        if self.draining or placement.ring.replicas > 1:
            self._extra.append(c)
            self._idle.clear()
            self._wake.set()
        elif not placement.owns(self._me, c) and c.name not in self._later:
            self._later[c.name] = asyncio.get_running_loop().call_later(HANDBACK, self._due, c)

    def kept(self, c: ChunkId) -> None:
        """A pinned preload just kept `c` here. Draining, or no longer its owner, hand it over
        (again, if a pass already did): a pass that gave it away before the keep came carried
        none, and the keep would leave with us, or pin an extra copy here."""
        if self.draining or not self._placement().owns(self._me, c):
            self._extra.append(c)
            self._idle.clear()
            self._wake.set()

    def _due(self, c: ChunkId) -> None:
        self._later.pop(c.name, None)
        self._back.append(c)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Until everything held here is with its owners (True) or `timeout` seconds pass."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def _run(self) -> None:
        delay = RETRY
        while True:
            await self._wake.wait()
            self._wake.clear()
            (full, self._full), (extra, self._extra) = (self._full, False), (self._extra, [])
            back, self._back = self._back, []
            placement = self._placement()
            held = await self._held() if full else extra
            todo = plan(held, placement, self._me)
            self._note_unplanned(held, todo, placement)
            if full and (old := stale(held, placement)):
                log.info("ring epoch %d: %d chunks (%d bytes) held here are cut at another chunk size than "
                         "the ring's %d; they are the first to evict", placement.ring.epoch, len(old),
                         sum(c.length for c in old), placement.ring.chunk_size)
                for c in old:
                    self._store.demote(c.name)
            if todo and full:
                log.info("ring epoch %d: %d chunks (%d bytes) held here belong with other workers; "
                         "handing them over", placement.ring.epoch, len(todo), sum(c.length for c, _ in todo))
            failed = await self._hand_over(todo)
            if back and not full:  # offered once: an owner still failing is the next ring's to replace
                await self._hand_over(plan(back, placement, self._me))
            if failed and not self._wake.is_set():
                self._set_backlog(failed)
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY, delay * 2)
                self._full = True
                self._wake.set()
                continue
            delay = RETRY
            if not self._wake.is_set():
                self._set_backlog(0)
                self._idle.set()

    def _note_unplanned(self, held: list[ChunkId], todo: list, placement: Placement) -> None:
        """Draining: the chunks held that this pass hands to no one, and why."""
        if self.tally is None:
            return
        planned = {c.name for c, _ in todo}
        for c in held:
            if c.name not in planned:
                self.tally.note(c.name, STALE if c.chunk_size != placement.ring.chunk_size else NO_OWNER)

    async def _held(self) -> list[ChunkId]:
        names, held = self._store.names(), []
        for i in range(0, len(names), BATCH):
            for meta in (await self._store.metadata(names[i:i + BATCH])).values():
                with contextlib.suppress(ValueError, TypeError):
                    held.append(ChunkId.unpack(meta))
        return held

    async def _hand_over(self, todo: list[tuple[ChunkId, tuple[WorkerInfo, ...]]]) -> int:
        """Hand each chunk to its targets; the number that failed. Stops early on a new ring."""
        self._set_backlog(len(todo))
        failed = 0
        slots, gates = asyncio.Semaphore(self._concurrency), _Gates(self._concurrency)

        async def one(c: ChunkId, targets: tuple[WorkerInfo, ...]) -> None:
            nonlocal failed
            async with gates.gate(targets[0].id), slots:
                # A newer ring: the next pass plans everything held again. (Not merely a new
                # fill: the rest of this pass would be dropped, its followers never copied.)
                if self._full:
                    return
                if not await self._give(c, targets, gates):
                    failed += 1
                self._set_backlog(self.backlog - 1)

        await asyncio.gather(*(one(c, targets) for c, targets in todo))
        return failed

    async def _give(self, c: ChunkId, targets: tuple[WorkerInfo, ...], gates: _Gates) -> bool:
        """Offer `c` to each of `targets`; whether every one has it now. Only a copy counts as
        handed over and pays the rate: an owner that had it already took nothing."""
        ok, copied = True, False
        pinned = self._keeps.pinned_at(c.name) if self._keeps is not None else None  # None: not kept here
        kept = pinned is not None
        for target in targets:
            if target.id in gates.failed:
                ok = False
                continue
            try:
                took = await self._peers.take(target, c, self._me, keep=kept, pinned=pinned)
                gates.answered(target.id)
                if took:
                    copied = True
                    if not self.draining:  # paid after: the next offer waits off the debt
                        await self._bucket.take(c.length)
            except NotCached as exc:  # it could not copy the chunk from us
                gates.answered(target.id)
                if c.name not in self._store:  # evicted here meanwhile: nothing left to hand over
                    if self.tally is not None:
                        self.tally.gone(c.name)
                    return True
                log.debug("handing %s to %s failed: %s", c.ring_key, target.id, exc)
                ok = self._failed_take()
            except NotOwner as exc:  # its ring differs from ours
                gates.answered(target.id)
                log.debug("handing %s to %s failed: %s", c.ring_key, target.id, exc)
                ok = self._failed_take()
            except P2PError as exc:  # it failed: not asked again in this pass
                gates.failed.add(target.id)
                log.info("handing %s to %s failed: %s; its other chunks wait for the next pass",
                         c.ring_key, target.id, exc)
                ok = self._failed_take()
        if self.tally is not None:
            self.tally.note(c.name, FAILED if not ok else HANDED if copied else HELD)
        if ok:
            if copied:
                self._m.rebalance_sent.inc()
            if not self._placement().owns(self._me, c):
                if kept:  # its owners keep it now
                    await self._keeps.discard([c.name])
                self._store.demote(c.name)  # an extra copy now: the first to make room
        return ok

    def _failed_take(self) -> bool:
        """Counts a failed take while draining; False, for `ok`."""
        if self.tally is not None:
            self.tally.failed_takes += 1
        return False

    def _set_backlog(self, n: int) -> None:
        self.backlog = max(0, n)
        self._m.rebalance_backlog.set(self.backlog)
