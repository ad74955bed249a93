"""Which worker owns each chunk, computed from the master's ring the way a direct client does."""

from __future__ import annotations

import json
import urllib.request

from p2pcache.objects import ChunkId
from p2pcache.ring import Placement, RingSnapshot

from .datasets import File

__all__ = ["Owners"]


class Owners:
    """The owner (first worker on the ring) of every chunk of `files`, under the current ring."""

    def __init__(self, master_url: str, any_worker_url: str, files: list[File]) -> None:
        with urllib.request.urlopen(f"{master_url}/ring?format=json", timeout=10) as resp:
            self.placement = Placement(RingSnapshot.from_dict(json.load(resp)))
        self.chunk_size = self.placement.ring.chunk_size
        self.etags = {f: _etag(f"{any_worker_url}{f.path}") for f in files}

    def owner(self, f: File, offset: int) -> str:
        index = offset // self.chunk_size
        chunk = ChunkId(f.bucket, f.key, self.etags[f], f.size, self.chunk_size, index)
        return self.placement.owner(chunk).url

    def extents_by_owner(self, files: list[File]) -> dict[str, list[tuple[str, int, int]]]:
        """`url -> [(path, start, length)]`: the chunks each worker owns."""
        out: dict[str, list[tuple[str, int, int]]] = {w.url: [] for w in self.placement.workers.values()}
        for f in files:
            for start in range(0, f.size, self.chunk_size):
                out[self.owner(f, start)].append((f.path, start, min(self.chunk_size, f.size - start)))
        return out


def _etag(url: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as resp:
        return resp.headers["ETag"]
