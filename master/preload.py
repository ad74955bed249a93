"""A preload job: every chunk of a list of objects filled (and kept, with `pin`) by its owners.

The owners work in parallel, each sent batches of its chunks one after the
other (a worker fills a batch within its origin concurrency). A chunk whose
owner changed or could not be reached is planned again on the next ring, up
to ROUNDS times: the job waits for that ring (`pause`), since an owner that
does not answer stays in the ring until the master drops it, a worker TTL
after its last heartbeat. (A request names the ring it was planned on: an
owner that has not had it yet waits a moment for it, so a ring on its way
costs no round.) Then the owners are asked which chunks they still
hold: the job is done only if they hold every one (a fill may have evicted
another since, the set's own or a reader's). The job is the master's: it goes
on when the caller leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Collection

from p2pcache.control import MAX_BATCH, WorkerControl
from p2pcache.errors import P2PError, PeerError
from p2pcache.objects import ChunkId, ObjectInfo
from p2pcache.ring import Placement
from p2pcache.sizes import format_size

__all__ = ["PreloadJob", "plan", "holding", "pause", "BATCH", "ROUNDS", "UNANSWERED", "REFUSED"]

log = logging.getLogger("p2pcache.master.preload")
BATCH = 32  # chunks per request: above a worker's default origin concurrency of 16, so it stays busy
ROUNDS = 3
# The master drops a dead worker a TTL after its last heartbeat, at an expiry pass that comes
# every quarter TTL: the ring has changed within 1.25 TTLs of the crash, whatever its beat.
DROP_TTLS = 1.5
SETTLE = 1.0  # seconds: a worker whose ring lags the master's has it one long-poll answer later
UNANSWERED, REFUSED = "unanswered", "refused"  # why a round left a chunk to try again
MAX_FAILURES = 20  # failure messages kept (all are counted)
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


def pause(why: Collection[str], ring_unchanged: bool, worker_ttl: float) -> float:
    """Seconds to wait for the master's ring to change before the next round; 0: plan it at once.

    A round that left nothing to try again, or whose ring has changed since it was planned, goes on
    at once. An owner that did not answer (UNANSWERED) is still in the ring: it is dropped within
    DROP_TTLS worker TTLs. One that answered but refused (REFUSED: not its chunk in the ring it
    has, or busy) is given SETTLE. When the wait ends without a change the job plans again anyway:
    the owner may be back.
    """
    if not why or not ring_unchanged:
        return 0.0
    return worker_ttl * DROP_TTLS if UNANSWERED in why else SETTLE


def plan(objects: list[ObjectInfo], placement: Placement) -> dict[str, list[ChunkId]]:
    """Worker id -> the chunks it owns (each chunk goes to each of its `replicas` owners)."""
    chunk_size, replicas = placement.ring.chunk_size, placement.ring.replicas
    todo: dict[str, list[ChunkId]] = defaultdict(list)
    for info in objects:
        if info.size == 0:
            continue
        first = info.chunk(0, chunk_size)
        for index in range(first.count):
            c = info.chunk(index, chunk_size)
            for owner in placement.owners(c)[:replicas]:
                todo[owner.id].append(c)
    return dict(todo)


async def holding(control: WorkerControl, placement: Placement,
                  todo: dict[str, list[ChunkId]]) -> dict[str, list[tuple[bool, bool]]]:
    """Worker id -> for each of its chunks in `todo`, whether it holds it and whether it keeps it
    (a pin); both False for the chunks of an owner that does not answer."""
    async def ask(wid: str, chunks: list[ChunkId]) -> list[tuple[bool, bool]]:
        answers: list[tuple[bool, bool]] = []
        for i in range(0, len(chunks), MAX_BATCH):
            part = chunks[i:i + MAX_BATCH]
            try:
                present, kept = await control.has(placement.members[wid], [c.name for c in part])
            except P2PError:  # an unreachable worker holds nothing we can read
                present = kept = [False] * len(part)
            answers += zip(present, kept)
        return answers

    return dict(zip(todo, await asyncio.gather(*(ask(wid, cs) for wid, cs in todo.items()))))


@dataclass
class _Round:
    """One round: the ring its chunks were planned on (or nearly), and what it leaves to try again."""
    planned: Placement
    last: bool
    again: list[tuple[ChunkId, int]] = field(default_factory=list)  # (chunk, its owner's rank)
    why: set[str] = field(default_factory=set)  # UNANSWERED, REFUSED


RingChanged = Callable[[tuple[str, int], float], Awaitable[object]]


class PreloadJob:
    """`ring_changed(version, seconds)` returns when the master's ring is no longer `version`, or
    after `seconds`; `worker_ttl` is the master's --worker-ttl."""

    def __init__(self, urls: list[str], pin: bool, objects: list[ObjectInfo], todo: dict[str, list[ChunkId]],
                 control: WorkerControl, placement: Callable[[], Placement], ring_changed: RingChanged,
                 worker_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.urls, self.pin = urls, pin
        self.state = RUNNING
        self._control, self._placement, self._clock = control, placement, clock
        self._ring_changed, self._worker_ttl = ring_changed, worker_ttl
        self._objects, self._todo = objects, todo
        self._left = Counter((c.bucket, c.key) for cs in todo.values() for c in cs)  # assignments per object
        self.objects_total = len(objects)
        self.objects_done = self.objects_total - len(self._left)  # empty objects have nothing to fill
        self.chunks_total = sum(len(cs) for cs in todo.values())
        self.bytes_total = sum(c.length for cs in todo.values() for c in cs)
        self.chunks_done = self.chunks_failed = self.bytes_done = self.bytes_fetched = 0
        self.chunks_cached: int | None = None  # held by their owners when the fills ended
        self.bytes_cached: int | None = None
        self.failures: list[str] = []
        self.created = time.time()
        self._start, self._end = clock(), None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def to_dict(self) -> dict:
        elapsed = (self._end or self._clock()) - self._start
        return {
            "id": self.id, "state": self.state, "urls": self.urls, "pin": self.pin,
            "objects_total": self.objects_total, "objects_done": self.objects_done,
            "chunks_total": self.chunks_total, "chunks_done": self.chunks_done,
            "chunks_failed": self.chunks_failed, "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done, "bytes_from_s3": self.bytes_fetched,
            "chunks_cached": self.chunks_cached, "bytes_cached": self.bytes_cached,
            "rate": self.bytes_done / elapsed if elapsed > 0 else 0.0, "elapsed": elapsed,
            "created": self.created, "failures": self.failures,
        }

    async def _run(self) -> None:
        try:
            todo = self._todo
            for n in range(1, ROUNDS + 1):
                round_ = _Round(self._placement(), last=n == ROUNDS)
                await asyncio.gather(*(self._owner(wid, cs, round_) for wid, cs in todo.items()))
                if not round_.again:
                    break
                await self._pause(round_)
                todo = _regroup(round_.again, self._placement())
            missing = await self.count_cached()
            if missing:
                self._say_missing(missing)
            self.state = FAILED if self.chunks_failed or missing else DONE
        except asyncio.CancelledError:
            self.state = CANCELLED
        except Exception as exc:  # a bug must end the job visibly, not leave it "running"
            log.exception("preload %s failed", self.id)
            self._fail(f"internal error: {exc!r}", 0)
            self.state = FAILED
        finally:
            self._end = self._clock()
            log.info("preload %s %s: %d/%d chunks, %d bytes (%d from S3), %d failed", self.id, self.state,
                     self.chunks_done, self.chunks_total, self.bytes_done, self.bytes_fetched, self.chunks_failed)

    async def _pause(self, round_: _Round) -> None:
        """Wait as `pause` says for the ring that `round_.again` is planned on."""
        version = round_.planned.ring.version
        seconds = pause(round_.why, self._placement().ring.version == version, self._worker_ttl)
        log.info("preload %s: %d chunks to plan again (%s), %s", self.id, len(round_.again),
                 " and ".join(sorted(round_.why)),
                 f"on the next ring (waiting up to {seconds:g} s for it)" if seconds else "on the current ring")
        if seconds:
            await self._ring_changed(version, seconds)

    async def _owner(self, worker_id: str, chunks: list[ChunkId], round_: _Round) -> None:
        """Send one owner its chunks, a batch at a time; what is to be tried again goes to
        `round_.again` with this owner's rank among the chunk's owners, so a follower's copy is
        retried at the follower of the next ring, not at the primary."""
        def retry(cs: list[ChunkId], why: str, kind: str) -> None:
            self._retry_or_fail([(c, _rank(round_.planned, c, worker_id)) for c in cs], round_, why, kind)

        for i in range(0, len(chunks), BATCH):
            batch = chunks[i:i + BATCH]
            worker = self._placement().members.get(worker_id)
            try:
                if worker is None:
                    raise PeerError(f"worker {worker_id} left the ring")
                results = await self._control.preload(worker, batch, self.pin, round_.planned.ring.version)
            except PeerError as exc:  # the worker is gone or failing: its chunks go elsewhere
                retry(batch, f"{worker_id}: {exc}", UNANSWERED)
                continue
            except P2PError as exc:
                for c in batch:
                    self._fail(f"s3://{c.bucket}/{c.key} chunk {c.index} on {worker_id}: {exc}", 1)
                continue
            for c, (status, detail) in zip(batch, results):
                if status in ("cached", "filled", "joined"):
                    self._done(c, status == "filled")
                elif detail.startswith(("NotOwner:", "ServiceUnavailable:", "SlowDown:")):
                    retry([c], f"{worker_id}: {detail}", REFUSED)
                else:
                    self._fail(f"s3://{c.bucket}/{c.key} chunk {c.index} on {worker_id}: {detail}", 1)

    async def count_cached(self) -> int:
        """Ask the owners which chunks of the set they hold, as `status` does; the chunks they do not.

        A chunk counted done may be gone by now: the set's later fills, a reader's or another
        preload's evicted it. The job says so rather than report cached what is not. A cancelled
        job counts too: progress is counted per batch answered, and its owners had filled (and
        kept) part of the batches running when it was cancelled."""
        placement = self._placement()
        todo = plan(self._objects, placement)
        held = await holding(self._control, placement, todo)
        cached = [c for wid, cs in todo.items() for c, (present, _) in zip(cs, held[wid]) if present]
        self.chunks_cached, self.bytes_cached = len(cached), sum(c.length for c in cached)
        return sum(map(len, todo.values())) - len(cached)

    def _say_missing(self, missing: int) -> None:
        message = (f"{missing} of {missing + self.chunks_cached} chunks were not cached when the job ended "
                   f"({format_size(self.bytes_cached)} of {format_size(self.bytes_total)} cached): failed, "
                   f"evicted since they were filled (the set and what else its owners cache are more than "
                   f"they hold), or their owner changed; `p2pcache status {' '.join(self.urls)}` shows which")
        self.failures = [message, *self.failures][:MAX_FAILURES]

    def _retry_or_fail(self, chunks: list[tuple[ChunkId, int]], round_: _Round, why: str, kind: str) -> None:
        if round_.last:
            for c, _ in chunks:
                self._fail(f"s3://{c.bucket}/{c.key} chunk {c.index}: {why}", 1)
        else:
            round_.again.extend(chunks)
            round_.why.add(kind)

    def _done(self, c: ChunkId, fetched: bool) -> None:
        self.chunks_done += 1
        self.bytes_done += c.length
        if fetched:
            self.bytes_fetched += c.length
        key = (c.bucket, c.key)
        self._left[key] -= 1
        if self._left[key] == 0:
            self.objects_done += 1

    def _fail(self, message: str, chunks: int) -> None:
        self.chunks_failed += chunks
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(message)


def _rank(placement: Placement, c: ChunkId, worker_id: str) -> int:
    """`worker_id`'s place among the owners of `c` (0: the primary; 0 if it is not one)."""
    ids = [w.id for w in placement.owners(c)[:placement.ring.replicas]]
    return ids.index(worker_id) if worker_id in ids else 0


def _regroup(chunks: list[tuple[ChunkId, int]], placement: Placement) -> dict[str, list[ChunkId]]:
    """Worker id -> the chunks to try again: each at the owner of the same rank on `placement`."""
    todo: dict[str, list[ChunkId]] = defaultdict(list)
    for c, rank in chunks:
        owners = placement.owners(c)[:placement.ring.replicas]
        if owners:
            todo[owners[min(rank, len(owners) - 1)].id].append(c)
    return dict(todo)
