"""Cluster membership as a synchronous state machine: register, heartbeat, expire.

No I/O and an injected clock, so every transition is tested without a loop.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Callable

from p2pcache.ring import RingSnapshot, WorkerInfo
from p2pcache.ringreport import RingReport

from .earlier import Earlier

__all__ = ["Membership", "Replaced"]


class Replaced(ValueError):
    """A heartbeat from a worker process whose id or URL a newer process has taken (409): two live
    processes claiming one id or one URL would otherwise take it back from each other on every beat."""


class Membership:
    def __init__(
        self,
        *,
        chunk_size: int,
        replicas: int = 1,
        vnodes: int = 100,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        master_id: str | None = None,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._workers: dict[str, WorkerInfo] = {}
        self._seen: dict[str, float] = {}
        self._at: dict[str, str] = {}  # URL -> the id registered there (one per URL: `heartbeat`)
        self._instance: dict[str, str] = {}  # id -> the process registered under it, if it says
        # Processes a newer one replaced -> (why, when last heard): refused while they keep beating.
        self._replaced: dict[str, tuple[str, float]] = {}
        self.publish_at = 0.0  # the ring is not published before (the master's startup grace)
        self.ring = RingSnapshot(
            master_id=master_id or uuid.uuid4().hex[:12],
            epoch=0,
            chunk_size=chunk_size,
            replicas=replicas,
            vnodes=vnodes,
        )
        # The ring before a restart, as workers report it while the ring is not published yet.
        self.earlier = Earlier(self.ring.master_id, self.ring.parameters())

    def worker(self, worker_id: str) -> WorkerInfo | None:
        return self._workers.get(worker_id)

    def instance(self, worker_id: str) -> str | None:
        """The process registered under `worker_id`, for workers that name theirs."""
        return self._instance.get(worker_id)

    def starting(self) -> bool:
        """The ring is not published yet: its memberships are nobody's earlier owners."""
        return self._clock() < self.publish_at

    def heartbeat(self, worker: WorkerInfo, instance: str | None = None) -> bool:
        """Register or refresh `worker`, sent by the process `instance`; True when the ring changed.

        An address answers as one worker: another id registered at `worker`'s URL is dropped
        (a worker restarted there under a new id, before the old one expired). The newest process
        of an id or URL holds it: one the master has not heard before takes it at once (a restart
        needs no TTL), and the process it replaced is refused (Replaced) from then on, so two live
        ones never take turns. Workers that do not name their process (`instance` None: from
        before instances) are never refused.
        """
        now = self._clock()
        if instance is not None and (gone := self._replaced.get(instance)) is not None:
            self._replaced[instance] = (gone[0], now)
            raise Replaced(gone[0])
        self._seen[worker.id] = now
        if instance is not None:
            self._replace(worker, instance, now)
        else:
            self._instance.pop(worker.id, None)
        if self._workers.get(worker.id) == worker:
            return False
        if (other := self.at_url(worker)) is not None:
            self._drop(other)
        if (old := self._workers.get(worker.id)) is not None:
            del self._at[old.url]  # a moved worker leaves its old address
        self._workers[worker.id], self._at[worker.url] = worker, worker.id
        self._publish()
        return True

    def _replace(self, worker: WorkerInfo, instance: str, now: float) -> None:
        """`instance` is now the process of `worker.id` and of its URL; the ones it replaces are refused."""
        held = self._instance.get(worker.id)
        if held is not None and held != instance:
            self._replaced[held] = (f"worker id {worker.id!r} was registered since by another process, at "
                                    f"{worker.url}: two live processes must not share an id (--id)", now)
        other = self.at_url(worker)
        if other is not None and (theirs := self._instance.get(other)) is not None:
            self._replaced[theirs] = (f"{worker.url} was registered since by another worker, {worker.id!r}: "
                                      f"two live workers must not share a URL (--advertise)", now)
        self._instance[worker.id] = instance

    def reported(self, report: RingReport) -> bool:
        """A worker's ring, `report.age` seconds old; True if it is the newest heard, and then the ring's
        history is its memberships. Only before the ring is published: a published ring never changes,
        and a master's first ring is the only one that follows another master's."""
        if not self.starting() or not self.earlier.heard(report, self._clock() - report.age):
            return False
        self.ring = replace(self.ring, history=self.earlier.history(self.ring.owning()))
        return True

    def at_url(self, worker: WorkerInfo) -> str | None:
        """The other id registered at `worker`'s URL, if any (there is one per URL: `heartbeat`)."""
        wid = self._at.get(worker.url)
        return wid if wid != worker.id else None

    def leave(self, worker_id: str, instance: str | None = None) -> bool:
        """Drop `worker_id`; with `instance`, only if that process holds it (not one it replaced)."""
        if worker_id not in self._workers:
            return False
        if instance is not None and self._instance.get(worker_id) != instance:
            return False
        self._drop(worker_id)
        self._publish()
        return True

    def expire(self) -> list[str]:
        """Drop workers not heard from for `ttl` seconds; returns their ids."""
        cutoff = self._clock() - self.ttl
        gone = [wid for wid, seen in self._seen.items() if seen < cutoff]
        for wid in gone:
            self._drop(wid)
        for instance in [i for i, (_, seen) in self._replaced.items() if seen < cutoff]:
            del self._replaced[instance]  # stopped beating: it is gone, and so is its refusal
        if gone:
            self._publish()
        return gone

    def _drop(self, worker_id: str) -> None:
        del self._at[self._workers.pop(worker_id).url], self._seen[worker_id]
        self._instance.pop(worker_id, None)

    def _publish(self) -> None:
        workers = tuple(sorted(self._workers.values(), key=lambda w: w.id))
        if self.starting():  # a membership no one was given owned nothing: not history
            ring = replace(self.ring, workers=workers, epoch=self.ring.epoch + 1)
            self.ring = replace(ring, history=self.earlier.history(ring.owning()))
        else:
            self.ring = self.ring.with_workers(workers, self.ring.epoch + 1)
