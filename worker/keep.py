"""Chunks kept from eviction by a pinned preload, remembered on disk (one small file per chunk)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path

from p2pcache.objects import ChunkId

__all__ = ["Keeps"]

log = logging.getLogger("p2pcache.keep")
_NAME = re.compile(r"[0-9a-f]{40}-\d+-\d+")


async def _run(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Keeps:
    """The kept chunks: their names (what the store's eviction asks about) and ids (to unpin by prefix).

    Kept apart from the chunk files (under `<cache dir>/kept/`), so they survive a
    restart and never change a chunk file's format. A keep is recorded in memory
    first, then on disk: a crash in between loses the keep, never a chunk.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._kept: dict[str, ChunkId] = {}
        self.bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    async def load(self) -> None:
        found, dropped = await _run(_scan, self._root)
        for c in found:
            self._kept[c.name] = c
            self.bytes += c.length
        if dropped:
            log.warning("dropped %d malformed keep records from %s", dropped, self._root)

    async def add(self, c: ChunkId) -> bool:
        """Keep `c`; False if it already was."""
        if c.name in self._kept:
            return False
        self._kept[c.name] = c
        self.bytes += c.length
        try:
            await _run(_write, self._root / c.name, c.pack())
        except OSError as exc:
            log.warning("cannot record the keep of %s on disk (%s): it will not survive a restart",
                        c.ring_key, exc)
        return True

    async def discard(self, names: list[str]) -> int:
        """Stop keeping `names`; how many were kept."""
        gone = [self._kept.pop(n) for n in names if n in self._kept]
        self.bytes -= sum(c.length for c in gone)
        if gone:
            await _run(_unlink_all, [self._root / c.name for c in gone])
        return len(gone)

    def matching(self, bucket: str, prefix: str) -> list[str]:
        return [n for n, c in self._kept.items() if c.bucket == bucket and c.key.startswith(prefix)]


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _scan(root: Path) -> tuple[list[ChunkId], int]:
    root.mkdir(parents=True, exist_ok=True)
    found, dropped = [], 0
    for entry in root.iterdir():
        try:
            c = ChunkId.unpack(entry.read_bytes()) if _NAME.fullmatch(entry.name) else None
        except (OSError, ValueError, TypeError):  # msgpack's errors are ValueErrors
            c = None
        if c is not None and c.name == entry.name:
            found.append(c)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
            dropped += 1
    return found, dropped
