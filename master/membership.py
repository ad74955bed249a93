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
        self.ring = RingSnapshot(
            master_id=master_id or uuid.uuid4().hex[:12],
            epoch=0,
            chunk_size=chunk_size,
            replicas=replicas,
            vnodes=vnodes,
        )

    def heartbeat(self, worker: WorkerInfo) -> bool:
        """Register or refresh `worker`; True when the ring changed.

        An address answers as one worker: other ids registered at `worker`'s URL are dropped
        (a worker restarted there under a new id, before the old one expired).
        """
        self._seen[worker.id] = self._clock()
        if self._workers.get(worker.id) == worker:
            return False
        for wid in self.at_url(worker):
            del self._workers[wid], self._seen[wid]
        self._workers[worker.id] = worker
        self._publish()
        return True

    def at_url(self, worker: WorkerInfo) -> list[str]:
        """Ids other than `worker`'s registered at its URL."""
        return [wid for wid, w in self._workers.items() if w.url == worker.url and wid != worker.id]

    def leave(self, worker_id: str) -> bool:
        self._seen.pop(worker_id, None)
        if self._workers.pop(worker_id, None) is None:
            return False
        self._publish()
        return True

    def expire(self) -> list[str]:
        """Drop workers not heard from for `ttl` seconds; returns their ids."""
        cutoff = self._clock() - self.ttl
        gone = [wid for wid, seen in self._seen.items() if seen < cutoff]
        for wid in gone:
            del self._seen[wid]
            del self._workers[wid]
        if gone:
            self._publish()
        return gone

    def _publish(self) -> None:
        workers = tuple(sorted(self._workers.values(), key=lambda w: w.id))
        self.ring = self.ring.with_workers(workers, self.ring.epoch + 1)
