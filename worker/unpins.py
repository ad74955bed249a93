"""Unpins this worker missed (it was down, restarting or cut off): the master sends them in its
answers to heartbeats (master/unpins.py), and the keeps pinned before each go."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Missed", "missed"]


class Missed(NamedTuple):
    seq: int
    bucket: str
    prefix: str
    at: float  # when it was made, on this worker's wall clock


def missed(entries: object, sent_at: float) -> list[Missed]:
    """A heartbeat answer's `unpins` (`[[seq, bucket, prefix, age], ...]`), dated on our wall clock;
    ValueError if they are not that.

    `sent_at` is when the heartbeat was sent: the master counted each age later than that, so
    `sent_at - age` is no later than the unpin was made, and a pin made after the unpin is never
    taken for one made before it (a pin made in the heartbeat's round trip before it may be)."""
    if not isinstance(entries, list):
        raise ValueError(f"unpins must be a list, not {entries!r:.100}")
    out = []
    for e in entries:
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], int) and isinstance(e[1], str)
                and e[1] and isinstance(e[2], str) and isinstance(e[3], (int, float)) and e[3] >= 0):
            raise ValueError(f"not an unpin [seq, bucket, prefix, age]: {e!r:.100}")
        out.append(Missed(e[0], e[1], e[2], sent_at - e[3]))
    return out
