"""The unpins the master made lately, for the workers that were not there to hear them.

A worker that was down, restarting or cut off when `unpin` ran still keeps those chunks (its
pins are on its disk). Each heartbeat says which of this master's unpins the worker has had
(`[master_id, seq]`, `[]` for none); the answer carries the later ones, each with its age, and
the worker drops the pins it made before each (worker/unpins.py). Kept in memory: a restarted
master has none, and only the last MAX_UNPINS.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

__all__ = ["Unpin", "UnpinLog", "MAX_UNPINS"]

MAX_UNPINS = 4096  # (bucket, prefix) pairs remembered; the oldest is forgotten first


@dataclass(frozen=True)
class Unpin:
    seq: int  # 1, 2, ... in the order this master made them
    bucket: str
    prefix: str
    at: float  # the master's clock


class UnpinLog:
    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = MAX_UNPINS) -> None:
        self.clock = clock
        self._log: deque[Unpin] = deque(maxlen=limit)
        self.seq = 0  # of the last one made

    def __len__(self) -> int:
        return len(self._log)

    def add(self, bucket: str, prefix: str, at: float | None = None) -> Unpin:
        """Remember an unpin made at `at` (now by default); a ValueError for text that is not UTF-8:
        it would go with every heartbeat answer, and no answer could be encoded."""
        bucket.encode(), prefix.encode()  # UnicodeEncodeError is a ValueError
        self.seq += 1
        unpin = Unpin(self.seq, bucket, prefix, self.clock() if at is None else at)
        self._log.append(unpin)
        return unpin

    def since(self, master_id: str, seen: list) -> list[Unpin]:
        """The unpins a worker that has had `seen` (`[master_id, seq]` of its last, or `[]`) has not:
        all of them if it had none of this master's (`master_id`)."""
        last = seen[1] if len(seen) == 2 and seen[0] == master_id else 0
        if not self._log or last >= self.seq:
            return []
        first = self._log[0].seq  # the log holds first..seq, one apart
        return list(self._log)[max(0, last + 1 - first):]

    def to_wire(self, unpins: list[Unpin]) -> list[list]:
        """[[seq, bucket, prefix, age in seconds], ...]: ages, since the worker's clock is not ours."""
        now = self.clock()
        return [[u.seq, u.bucket, u.prefix, max(0.0, now - u.at)] for u in unpins]
