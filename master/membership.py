"""Cluster membership as a synchronous state machine: register, heartbeat, expire.

No I/O and an injected clock, so every transition is tested without a loop.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

from p2pcache.ring import RingSnapshot, WorkerInfo

__all__ = ["Membership"]


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
        self.ring = RingSnapshot(
            master_id=master_id or uuid.uuid4().hex[:12],
            epoch=0,
            chunk_size=chunk_size,
            replicas=replicas,
            vnodes=vnodes,
        )

    def worker(self, worker_id: str) -> WorkerInfo | None:
        return self._workers.get(worker_id)

    def heartbeat(self, worker: WorkerInfo) -> bool:
        """Register or refresh `worker`; True when the ring changed.

        An address answers as one worker: another id registered at `worker`'s URL is dropped
        (a worker restarted there under a new id, before the old one expired).
        """
        self._seen[worker.id] = self._clock()
        if self._workers.get(worker.id) == worker:
            return False
        if (other := self.at_url(worker)) is not None:
            self._drop(other)
        if (old := self._workers.get(worker.id)) is not None:
            del self._at[old.url]  # a moved worker leaves its old address
        self._workers[worker.id], self._at[worker.url] = worker, worker.id
        self._publish()
        return True

    def at_url(self, worker: WorkerInfo) -> str | None:
        """The other id registered at `worker`'s URL, if any (there is one per URL: `heartbeat`)."""
        wid = self._at.get(worker.url)
        return wid if wid != worker.id else None

    def leave(self, worker_id: str) -> bool:
        if worker_id not in self._workers:
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
        if gone:
            self._publish()
        return gone

    def _drop(self, worker_id: str) -> None:
        del self._at[self._workers.pop(worker_id).url], self._seen[worker_id]

    def _publish(self) -> None:
        workers = tuple(sorted(self._workers.values(), key=lambda w: w.id))
        self.ring = self.ring.with_workers(workers, self.ring.epoch + 1)
