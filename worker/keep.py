"""Chunks kept from eviction by a pinned preload, remembered on disk (one small file per chunk)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from p2pcache.control import KEEP_SHARE
from p2pcache.objects import ChunkId

from .blocking import run, unlink_all

__all__ = ["Keeps", "over_limit"]

log = logging.getLogger("p2pcache.keep")
_NAME = re.compile(r"[0-9a-f]{40}-\d+-\d+")


class Keeps:
    """The kept chunks: their names (what the store's eviction asks about) and ids (to unpin by prefix).

    Kept apart from the chunk files (under `<cache dir>/kept/`), so they survive a
    restart and never change a chunk file's format. A keep is recorded in memory
    first, then on disk: a crash in between loses the keep, never a chunk. When it was
    pinned (last) is the record's mtime: an unpin this worker hears of late drops only the
    keeps made before it (`release`).

    A keep is for the object's current version: one that S3 has replaced can never be read
    again (chunks are named by the ETag), so the worker releases it when it learns of a newer
    version (`supersede`); the chunks stay cached, evicted as any other.

    At most `limit` bytes are kept (KEEP_SHARE of the store's capacity). A chunk is
    filled before it is kept, so the bytes of the chunks being filled to be kept are
    held against the limit from the check on (`would_keep`, then `holding`, with no
    await between): checks made together (a preload's batch, two preloads) cannot all
    pass and add up past it.
    """

    def __init__(self, root: Path, capacity: int, clock: Callable[[], float] = time.time,
                 on_superseded: Callable[[int], None] = lambda chunks: None) -> None:
        self._root = Path(root)
        self.limit = int(capacity * KEEP_SHARE)
        self._clock = clock  # a wall clock: it dates the records on disk
        self._kept: dict[str, ChunkId] = {}
        self._at: dict[str, float] = {}  # name -> when it was pinned last
        self._objects: dict[tuple[str, str], set[str]] = {}  # (bucket, key) -> its kept chunks, any version
        self._on_superseded = on_superseded  # chunks released by `supersede`
        self.bytes = 0
        self._held: dict[str, int] = {}  # name -> how many fills to keep it run (preloads)
        self._held_bytes = 0  # of the held chunks not kept yet (a kept one is in `bytes`)
        self.unreadable: OSError | None = None  # why the keeps on disk could not be read at start

    def __contains__(self, name: str) -> bool:
        return name in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    async def load(self) -> None:
        """Read the keeps recorded on disk. One that cannot be read (or all, if the directory
        cannot be) is left in place for a later start, and said as an error: nothing is kept
        from eviction in its name until then. Only malformed records are removed."""
        try:
            found, dropped, unread = await run(_scan, self._root)
        except OSError as exc:
            self.unreadable = exc
            log.error("cannot read the pinned chunks kept in %s (%s): this worker keeps none of them from "
                      "eviction, and pins made now are not recorded; it serves its cached chunks as usual. "
                      "Fix or remove %s and restart to keep them again", self._root, exc, self._root)
            return
        for c, at in found:
            if c.name not in self._kept:
                self._remember(c, at)
        await self._trim()
        if dropped:
            log.warning("dropped %d malformed keep records from %s", dropped, self._root)
        if unread:
            log.error("cannot read %d keep records in %s (%s): those chunks are not kept from eviction until "
                      "a restart reads them", len(unread), self._root, unread[0])

    async def _trim(self) -> None:
        """Release the keeps over the limit (a restart with a smaller --capacity), whole objects at a
        time: kept, they would hold the store over its capacity and leave no room for other reads."""
        released = over_limit(self._kept.values(), self.limit)
        if not released:
            return
        before = self.bytes
        objects = sorted({f"s3://{c.bucket}/{c.key}" for c in released})
        await self.discard([c.name for c in released])
        shown = ", ".join(objects[:5]) + (f" and {len(objects) - 5} more" if len(objects) > 5 else "")
        log.warning("pinned chunks hold %d bytes, over this worker's limit of %d for kept chunks (%s of "
                    "--capacity): released the pins of %d objects (%d chunks, %d bytes), which are now evicted "
                    "as any other chunk: %s. To keep them, raise --capacity and pin them again "
                    "(p2pcache preload --pin), after unpinning others (p2pcache unpin) if need be",
                    before, self.limit, f"{KEEP_SHARE:.0%}", len(objects), len(released), before - self.bytes, shown)

    async def load_again(self) -> None:
        """`load`, if the last one could not read the keeps (the cache dir may be back)."""
        if self.unreadable is not None:
            self.unreadable = None
            await self.load()

    def would_keep(self, c: ChunkId) -> int:
        """The bytes kept and held if `c` is kept too (nothing more if it is kept or held already)."""
        more = 0 if c.name in self._kept or c.name in self._held else c.length
        return self.bytes + self._held_bytes + more

    @contextlib.contextmanager
    def holding(self, c: ChunkId) -> Iterator[None]:
        """Count `c` against the limit while its block runs (its fill, then `add`)."""
        self._held[c.name] = self._held.get(c.name, 0) + 1
        if self._held[c.name] == 1 and c.name not in self._kept:
            self._held_bytes += c.length
        try:
            yield
        finally:
            self._held[c.name] -= 1
            if not self._held[c.name]:
                del self._held[c.name]
                if c.name not in self._kept:
                    self._held_bytes -= c.length

    def pinned_at(self, name: str) -> float | None:
        """When the chunk `name` was pinned last (this worker's wall clock), None if it is not kept."""
        return self._at.get(name)

    async def add(self, c: ChunkId, at: float | None = None) -> bool:
        """Keep `c`, pinned now, or at `at` (a pin handed over with its chunk: dated when it was made,
        never later than now); False if it already was. A keep is dated by its latest pin: a pin made
        after an unpin outlives that unpin, however late this worker hears of it, and one made before
        it does not, wherever the chunk has moved meanwhile."""
        new, now = c.name not in self._kept, self._clock()
        at = now if at is None else min(at, now)
        if not new:
            at = max(at, self._at[c.name])
        if new:
            self._remember(c, at)
            if c.name in self._held:  # counted in `bytes` now
                self._held_bytes -= c.length
        self._at[c.name] = at
        if self.unreadable is not None:  # said at start, once, rather than for every chunk
            return new
        try:
            await run(_write if new else _date, self._root / c.name, c.pack(), at)
        except OSError as exc:
            log.warning("cannot record the keep of %s on disk (%s): %s", c.ring_key, exc,
                        "it will not survive a restart" if new else
                        "after a restart, it is dated as pinned earlier (an unpin made since drops it)")
        return new

    async def discard(self, names: list[str]) -> int:
        """Stop keeping `names`; how many were kept."""
        gone = [self._kept.pop(n) for n in names if n in self._kept]
        for c in gone:
            del self._at[c.name]
            same = self._objects[(c.bucket, c.key)]
            same.discard(c.name)
            if not same:
                del self._objects[(c.bucket, c.key)]
        self.bytes -= sum(c.length for c in gone)
        self._held_bytes += sum(c.length for c in gone if c.name in self._held)  # unpinned while filled
        if gone and self.unreadable is None:  # with it, none was recorded
            await run(unlink_all, [self._root / c.name for c in gone])
        return len(gone)

    def _remember(self, c: ChunkId, at: float) -> None:
        self._kept[c.name], self._at[c.name] = c, at
        self._objects.setdefault((c.bucket, c.key), set()).add(c.name)
        self.bytes += c.length

    def superseded(self, bucket: str, key: str, etag: str) -> list[ChunkId]:
        """The kept chunks of s3://bucket/key at another version than `etag`."""
        return [c for c in self._of(bucket, key) if c.etag != etag]

    async def supersede(self, bucket: str, key: str, etag: str) -> int:
        """S3 has s3://bucket/key at version `etag`: stop keeping its chunks of any other version.
        How many were released."""
        return await self._release_versions(bucket, key, self.superseded(bucket, key, etag),
                                            f"S3 has version {etag} now")

    async def replaced(self, bucket: str, key: str, etag: str) -> int:
        """S3 no longer has s3://bucket/key at version `etag` (it answered a read of it with 412):
        stop keeping its chunks of that version. How many were released."""
        return await self._release_versions(bucket, key, [c for c in self._of(bucket, key) if c.etag == etag],
                                            "S3 has another version now")

    def _of(self, bucket: str, key: str) -> list[ChunkId]:
        return [self._kept[n] for n in self._objects.get((bucket, key), ())]

    async def _release_versions(self, bucket: str, key: str, old: list[ChunkId], why: str) -> int:
        """Stop keeping `old`, chunks of replaced versions of s3://bucket/key: no read asks for them
        again (they stay cached, for a peer whose HEAD is older, until evicted). One line per object."""
        if not old:
            return 0
        versions = sorted({c.etag for c in old})
        try:
            await self.discard([c.name for c in old])  # out of memory before the records go: released all the same
        except OSError as exc:
            log.warning("cannot remove the keep records of the replaced versions of s3://%s/%s (%s): "
                        "they are kept again after a restart, until this worker sees the new version again",
                        bucket, key, exc)
        self._on_superseded(len(old))
        log.info("released the pins of s3://%s/%s at %s %s (%d chunks, %d bytes): %s, so no read asks for "
                 "them; they are evicted as any other chunk", bucket, key,
                 "version" if len(versions) == 1 else "versions", ", ".join(versions), len(old),
                 sum(c.length for c in old), why)
        return len(old)

    async def release(self, bucket: str, prefix: str, before: float) -> int:
        """Stop keeping the chunks under the prefix pinned before `before` (this worker's wall clock)."""
        return await self.discard([n for n in self.matching(bucket, prefix) if self._at[n] < before])

    def matching(self, bucket: str, prefix: str) -> list[str]:
        return [n for n, c in self._kept.items() if c.bucket == bucket and c.key.startswith(prefix)]


def over_limit(kept: Iterable[ChunkId], limit: int) -> list[ChunkId]:
    """The kept chunks to release so that the others fit `limit`: whole objects (a part of a
    pinned object still needs S3 to load it), each object in (bucket, key) order kept if it
    fits after those kept before it."""
    objects: dict[tuple[str, str, str], list[ChunkId]] = {}
    for c in sorted(kept, key=lambda c: (c.bucket, c.key, c.etag, c.index)):
        objects.setdefault((c.bucket, c.key, c.etag), []).append(c)
    if sum(c.length for chunks in objects.values() for c in chunks) <= limit:
        return []
    room, released = limit, []
    for chunks in objects.values():
        size = sum(c.length for c in chunks)
        if size <= room:
            room -= size
        else:
            released += chunks
    return released


def _write(path: Path, data: bytes, at: float) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:  # kept/ (or the whole cache dir) was removed under the worker
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.utime(tmp, (at, at))
    os.replace(tmp, path)


def _date(path: Path, data: bytes, at: float) -> None:
    """The record dated `at`, written again if it is gone."""
    try:
        os.utime(path, (at, at))
    except FileNotFoundError:
        _write(path, data, at)


def _scan(root: Path) -> tuple[list[tuple[ChunkId, float]], int, list[OSError]]:
    """The keeps under `root` and when each was pinned, how many malformed records were removed,
    and the errors of those that could not be read (left in place)."""
    root.mkdir(parents=True, exist_ok=True)
    found, dropped, unread = [], 0, []
    for entry in root.iterdir():
        try:
            c = ChunkId.unpack(entry.read_bytes()) if _NAME.fullmatch(entry.name) else None
            at = entry.stat().st_mtime if c is not None else 0.0
        except (ValueError, TypeError):  # msgpack's errors are ValueErrors
            c = None
        except OSError as exc:  # not malformed: a disk error, or its permissions
            unread.append(exc)
            continue
        if c is not None and c.name == entry.name:
            found.append((c, at))
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
            dropped += 1
    return found, dropped, unread
