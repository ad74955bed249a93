"""The ring snapshot the master publishes, and chunk placement on it."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

import msgpack
from uhashring import HashRing

__all__ = ["WorkerInfo", "RingSnapshot", "Placement", "UP", "DRAINING"]

UP, DRAINING = "up", "draining"


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    url: str
    capacity: int = 0
    weight: int = 1
    state: str = UP


@dataclass(frozen=True)
class RingSnapshot:
    """Everything placement depends on, so no two parties can disagree on it.

    `(master_id, epoch)` names a snapshot: a restarted master has a new id, so
    a reader never mistakes its epoch 1 for an old epoch 1.
    """

    master_id: str
    epoch: int
    chunk_size: int
    replicas: int = 1
    vnodes: int = 400
    workers: tuple[WorkerInfo, ...] = field(default_factory=tuple)

    @property
    def version(self) -> tuple[str, int]:
        return (self.master_id, self.epoch)

    def to_dict(self) -> dict:
        return asdict(self) | {"workers": [asdict(w) for w in self.workers]}

    @classmethod
    def from_dict(cls, d: dict) -> "RingSnapshot":
        workers = tuple(WorkerInfo(**w) for w in d.get("workers", ()))
        return cls(**{k: v for k, v in d.items() if k != "workers"}, workers=workers)

    def encode(self) -> bytes:
        return msgpack.packb(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> "RingSnapshot":
        return cls.from_dict(msgpack.unpackb(data))

    def with_workers(self, workers: tuple[WorkerInfo, ...], epoch: int) -> "RingSnapshot":
        return replace(self, workers=workers, epoch=epoch)


class Placement:
    """Who holds which chunk under one snapshot: `owners(key)` in ring order."""

    def __init__(self, ring: RingSnapshot) -> None:
        self.ring = ring
        self.workers = {w.id: w for w in ring.workers if w.state == UP}
        self._hash = HashRing(
            nodes={
                w.id: {"hostname": w.id, "weight": w.weight, "vnodes": ring.vnodes}
                for w in self.workers.values()
            }
        ) if self.workers else None
        # Per-instance, so a replaced placement is freed with its cache.
        self.owners = functools.lru_cache(maxsize=8192)(self._owners)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.workers

    def _owners(self, key: str) -> tuple[WorkerInfo, ...]:
        """The key's `replicas` owners first, then two successors to fall back on."""
        if self._hash is None:
            return ()
        count = min(len(self.workers), self.ring.replicas + 2)
        ids = self._hash.range(key, count, unique=True)
        return tuple(self.workers[node["nodename"]] for node in ids)

    def owner(self, key: str) -> WorkerInfo | None:
        owners = self.owners(key)
        return owners[0] if owners else None
