"""The ring snapshot the master publishes, and chunk placement on it."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import msgpack

from .errors import said
from .objects import ChunkId
from .placement import LOAD, HashPoints, assign

__all__ = ["WorkerInfo", "RingSnapshot", "Placement", "Owning", "NotARing", "NewerRing", "carried", "span", "UP",
           "DRAINING", "HISTORY", "MIN_CHUNK", "MAX_CHUNK", "SPAN"]

UP, DRAINING = "up", "draining"
HISTORY = 3  # earlier memberships published with the ring, to find chunks whose owner changed
OBJECTS = 512  # objects whose owner tables a placement keeps
# An object's chunks are placed in spans of SPAN (32 GiB at 8 MiB), each balanced on its own, so a
# lookup computes at most SPAN chunks' owners (~27 ms at 1,000 workers) whatever size S3 says the
# object has, and the tables kept hold at most ENTRIES chunks' owners (8 bytes each: shared tuples).
SPAN = 4096
ENTRIES = 1 << 20
LEGACY_LOAD = 1.05  # the load bound of rings published before it was part of them
# The chunk sizes a ring may have (the master's --chunk-size). Each chunk costs an S3 GET (tens
# of ms to its first byte), a file with its trailer and an entry in the eviction policy: below
# 64 KiB, the smallest piece a read streams in (worker/budget.py) and two checksum blocks, those
# costs outweigh the bytes.
MIN_CHUNK = 64 << 10
# Above 1 GiB a chunk stops being a unit the cluster spreads and moves: a model shard of a few
# GiB is a handful of chunks on as many workers, a read keeps a whole chunk from eviction, a
# handoff moves it whole (4 s at the default 256 MiB/s), and each open chunk file holds its
# checksum table in memory (1/4096 of the chunk: 256 KiB, for up to 256 open files per serving
# process). A worker takes any chunk size its ring has, and its store's trailer would hold up
# to 16 TiB (a 32-bit table length); at 1 GiB, a worker of 2 GiB keeps the two chunks the master
# asks of every worker (master/registration.py).
MAX_CHUNK = 1 << 30
Owning = tuple[tuple[str, int], ...]  # an owning membership: sorted (id, weight) pairs


class NotARing(ValueError):
    """Bytes or a map that are not a ring snapshot (a proxy's HTML page, another server's answer)."""


class NewerRing(NotARing):
    """A ring with fields this version does not know. Refused, not ignored: the ring carries what
    placement depends on, and a party that skipped a field could place chunks on other owners."""


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
    a reader never mistakes its epoch 1 for an old epoch 1. `history` holds the
    owning memberships before this one (newest first, `(id, weight)` pairs): a
    new owner asks the chunk's earlier owners for it before going to S3.
    """

    master_id: str
    epoch: int
    chunk_size: int
    replicas: int = 1
    vnodes: int = 100
    load: float = LOAD  # placement's load bound: part of the snapshot, so a change reaches all at once
    workers: tuple[WorkerInfo, ...] = field(default_factory=tuple)
    history: tuple[Owning, ...] = ()

    @property
    def version(self) -> tuple[str, int]:
        return (self.master_id, self.epoch)

    def reached(self, version: tuple[str, int]) -> bool:
        """This snapshot is `version` or a later one of the same master (another master's: not known)."""
        return self.master_id == version[0] and self.epoch >= version[1]

    def to_dict(self) -> dict:
        return asdict(self) | {"workers": [asdict(w) for w in self.workers]}

    @classmethod
    def from_dict(cls, d: dict) -> "RingSnapshot":
        """The snapshot `d` holds; NotARing (NewerRing for unknown fields) saying why it holds none."""
        _check_map(d, _FIELDS, _REQUIRED)
        try:
            workers = tuple(WorkerInfo(**_check_map(w, _WORKER_FIELDS, of="a worker")) for w in d.get("workers", ()))
            history = tuple(tuple((wid, weight) for wid, weight in h) for h in d.get("history", ()))
        except NotARing:
            raise
        except (TypeError, ValueError) as exc:  # not lists of maps and of pairs
            raise NotARing(f"its workers or history are malformed: {exc}") from None
        rest = {k: v for k, v in d.items() if k not in ("workers", "history")}
        rest.setdefault("load", LEGACY_LOAD)  # a master from before the bound was published
        return cls(**rest, workers=workers, history=history)

    def encode(self) -> bytes:
        return msgpack.packb(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> "RingSnapshot":
        try:
            d = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise NotARing(f"not msgpack: {said(data[:80], 80)!r}") from None
        return cls.from_dict(d)

    def with_workers(self, workers: tuple[WorkerInfo, ...], epoch: int) -> "RingSnapshot":
        """The next snapshot; the owning membership before it goes into the history if it changed."""
        history = carried(self.owning(), self.history, _owning(workers))
        return replace(self, workers=workers, epoch=epoch, history=history)

    def owning(self) -> Owning:
        return _owning(self.workers)

    def parameters(self) -> tuple[int, int, int, float]:
        """The parameters an owner is computed with, besides the memberships."""
        return (self.chunk_size, self.replicas, self.vnodes, self.load)


# The type of each field of a snapshot and of a worker, as the master sends them (JSON's numbers
# for `load`: an int is a float there).
_FIELDS = {"master_id": str, "epoch": int, "chunk_size": int, "replicas": int, "vnodes": int,
           "load": (int, float), "workers": (list, tuple), "history": (list, tuple)}
_REQUIRED = ("master_id", "epoch", "chunk_size")
_WORKER_FIELDS = {"id": str, "url": str, "capacity": int, "weight": int, "state": str}


def _check_map(d: object, fields: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = (),
               of: str = "") -> dict:
    """`d`, a map of known `fields` of their types, with the `required` ones; else NotARing saying
    why (NewerRing for unknown fields), naming the map `of` ("a worker"; "": the ring itself)."""
    is_, its, named = (f"{of} is ", f"{of}'s ", f"{of.split()[-1]} ") if of else ("", "", "")
    if not isinstance(d, dict):
        raise NotARing(f"{is_}a {type(d).__name__}, not a map")
    unknown = sorted(str(k) for k in d if k not in fields)
    if unknown:
        raise NewerRing(f"{named}fields this version does not know: {', '.join(unknown)}"[:300])
    missing = [k for k in required if k not in d]
    if missing:
        raise NotARing(f"no {', '.join(missing)}")
    for k, v in d.items():
        if not isinstance(v, fields[k]) or isinstance(v, bool):
            raise NotARing(f"{its}{k} is {type(v).__name__} {v!r:.50}")
    return d


def carried(before: Owning, history: tuple[Owning, ...], after: Owning) -> tuple[Owning, ...]:
    """The history of a ring whose owning membership goes from `before` (with its `history`) to `after`."""
    if before and before != after:
        history = (before,) + history
    return history[:HISTORY]


def _owning(workers: tuple[WorkerInfo, ...]) -> Owning:
    return tuple(sorted((w.id, w.weight) for w in workers if w.state == UP))


class Placement:
    """Who holds which chunk under one snapshot (see p2pcache/placement.py).

    Built off the event loop (the ring of 1,000 workers takes ~0.1 s); an
    object's owner table is computed on its first lookup (~2 ms for 590
    chunks; a span of SPAN chunks at a time) and kept for the next OBJECTS
    objects (up to ENTRIES chunks).
    """

    def __init__(self, ring: RingSnapshot) -> None:
        self.ring = ring
        self.members = {w.id: w for w in ring.workers}  # owners and draining sources
        self.workers = {w.id: w for w in ring.workers if w.state == UP}
        self._memberships = [dict(ring.owning())] + [dict(h) for h in ring.history]
        weights = {wid: weight for m in reversed(self._memberships) for wid, weight in m.items()}
        # One ring for the current and the earlier memberships: a worker's points
        # do not depend on the others, so each membership just skips non-members.
        self._points = HashPoints(weights, ring.vnodes) if weights else None
        self._tables: OrderedDict[tuple[int, str], list[tuple[str, ...]]] = OrderedDict()
        self._entries = 0  # chunks in the tables kept

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.workers

    def owners(self, c: ChunkId) -> tuple[WorkerInfo, ...]:
        """The chunk's `replicas` owners first, then successors to fall back on."""
        return tuple(self.workers[wid] for wid in self._owners(0, c))

    def owns(self, worker_id: str, c: ChunkId) -> bool:
        """Whether `worker_id` is one of the chunk's `replicas` owners."""
        return any(w.id == worker_id for w in self.owners(c)[:self.ring.replicas])

    def near(self, key: str) -> tuple[WorkerInfo, ...]:
        """Workers clockwise from `key`'s point, for requests any worker can answer (HEAD, lists)."""
        if self._points is None or not self.workers:
            return ()
        return tuple(self.workers[wid] for wid in
                     assign(self._points, self._memberships[0], key, 1, 1)[0])

    def owner(self, c: ChunkId) -> WorkerInfo | None:
        owners = self.owners(c)
        return owners[0] if owners else None

    def previous_holders(self, c: ChunkId) -> list[WorkerInfo]:
        """Workers still in the ring that may hold `c` although it has no copy where it
        belongs now: its owners (and successors) under earlier memberships, then its other
        owners now. Where a new owner looks before S3; empty for a ring that never changed."""
        if len(self._memberships) == 1:
            return []
        found: list[WorkerInfo] = []
        for k in [*range(1, len(self._memberships)), 0]:
            for wid in self._owners(k, c)[:None if k else self.ring.replicas]:
                member = self.members.get(wid)
                if member is not None and member not in found:
                    found.append(member)
        return found

    def _owners(self, k: int, c: ChunkId) -> tuple[str, ...]:
        """The ids of chunk `c`'s owners, then successors, under membership `k` (0: the current one)."""
        name, n, i = span(c)
        key = (k, name)
        table = self._tables.get(key)
        if table is None:
            if self._points is None or not self._memberships[k]:
                table = [()] * n
            else:
                table = assign(self._points, self._memberships[k], name, n, self.ring.replicas, self.ring.load)
            self._tables[key] = table
            self._entries += n
            while len(self._tables) > OBJECTS * len(self._memberships) or self._entries > ENTRIES:
                self._entries -= len(self._tables.popitem(last=False)[1])
        else:
            self._tables.move_to_end(key)
        return table[i]


def span(c: ChunkId) -> tuple[str, int, int]:
    """(what placement hashes, chunks, `c`'s index among them) for the span of SPAN chunks `c` is in;
    an object of up to SPAN chunks is one span, hashed as the object (p2pcache/objects.py)."""
    s, i = divmod(c.index, SPAN)
    return (c.object_key if s == 0 else f"{c.object_key}+{s}"), min(SPAN, c.count - s * SPAN), i
