"""Whom a worker asks for a chunk it does not hold: decisions on the ring's owners, with the
peers that just failed asked last."""

from __future__ import annotations

import time
import zlib
from typing import Callable

from p2pcache.errors import PeerError, PeerStarting
from p2pcache.ring import WorkerInfo

__all__ = ["MAX_HOPS", "PEER_DOWN_SECONDS", "DownPeers", "read_order", "prefer_healthy", "fill_source"]

MAX_HOPS = 2  # a peer request may cause one more (a follower filling from its primary)
PEER_DOWN_SECONDS = 5.0  # a peer that just failed is asked last for this long


def read_order(owners: tuple[WorkerInfo, ...], replicas: int, me: str) -> list[WorkerInfo]:
    """Whom to ask for a chunk, best first.

    This worker first if it is an owner; otherwise the owners starting at a
    per-reader offset (so a hot chunk's readers spread over its replicas),
    then the successors, in ring order with this worker in its place among
    them: when the owners are gone, every reader then asks the same first
    live successor, which fills the chunk once (had each asked the others
    first, two successors would each fill it for the other). Last of all if
    it is not among them: it fills the chunk itself rather than fail the read.
    """
    primary, rest = list(owners[:replicas]), list(owners[replicas:])
    if any(w.id == me for w in primary):
        return [w for w in primary if w.id == me] + [w for w in primary + rest if w.id != me]
    k = zlib.crc32(me.encode()) % len(primary) if primary else 0
    order = primary[k:] + primary[:k] + rest
    return order if any(w.id == me for w in rest) else order + [WorkerInfo(me, "")]


def prefer_healthy(order: list[WorkerInfo], down: set[str]) -> list[WorkerInfo]:
    """The same order, with peers that just failed moved to the end."""
    return [w for w in order if w.id not in down] + [w for w in order if w.id in down]


def fill_source(owners: tuple[WorkerInfo, ...], replicas: int, me: str, hop: int) -> WorkerInfo | None:
    """The peer a fill here should copy from (a follower copies its primary), or None for S3."""
    if not owners or owners[0].id == me or hop >= MAX_HOPS:
        return None
    return owners[0] if any(w.id == me for w in owners[1:replicas]) else None


class DownPeers:
    """Peers that just failed, asked last for PEER_DOWN_SECONDS: until the master drops a dead
    worker from the ring, every read of its chunks would otherwise wait on it first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}  # peer id -> until when it is asked last
        self._clock = clock

    def __len__(self) -> int:
        """Peers marked down since they last answered."""
        return len(self._until)

    def failed(self, peer_id: str, exc: PeerError | None = None) -> bool:
        """Ask `peer_id` last for a while, for `exc`; False (not asked last) if `exc` says the peer is
        alive and only has no ring yet (PeerStarting): asked last, it would be passed over as the
        holder of the chunks handed to it, which would then be read from S3."""
        if isinstance(exc, PeerStarting):
            return False
        self._until[peer_id] = self._clock() + PEER_DOWN_SECONDS
        return True

    def answered(self, peer_id: str) -> None:
        self._until.pop(peer_id, None)

    def down(self, peer_id: str) -> bool:
        """Whether `peer_id` failed lately."""
        return self._until.get(peer_id, 0.0) > self._clock()

    def order(self, owners: tuple[WorkerInfo, ...], replicas: int, me: str) -> list[WorkerInfo]:
        """`read_order`, with the peers that failed lately moved to the end."""
        now = self._clock()
        return prefer_healthy(read_order(owners, replicas, me), {p for p, t in self._until.items() if t > now})
