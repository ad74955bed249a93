"""How much of a read a process holds in memory, whatever the number of readers.

Each stream that sends chunk bytes holds two or three pieces (one being sent, the
next being read), so the piece size is the process's budget over the streams open
*now*, asked afresh for every piece: a stream that began alone in 1 MiB pieces
shrinks to its share when 63 others join. A chunk opened ahead of the one being
sent is a peer response buffering its first few hundred KiB or a fill started
early, so the chunks opened ahead are a budget too: a few reads each open several
(their fills run in parallel), many reads open none (they are parallel already).
"""

from __future__ import annotations

__all__ = ["PieceBudget", "readahead", "fill_piece", "OPEN_AHEAD", "COORDINATOR_PIECES", "SERVING_PIECES",
           "FILL_PIECES"]

OPEN_AHEAD = 16  # chunks opened ahead of the ones being sent, over all reads of a process
# The coordinator (68 MiB idle: botocore) also holds its fills' S3 buffers and the streams from
# its peers; alone (--serve-processes 1) it answers every reader. `p2pcache bench --scenarios
# memory`, 64 streams: peak 133-139 MiB with 8 MiB, 150-154 with 16.
COORDINATOR_PIECES = 8 << 20
# A serving process (43 MiB idle) reads chunk files and peers. 16 MiB keeps warm 4 MiB ranges
# at c=64 in 256 KiB pieces: 0.93-0.94x nginx, against 0.83-0.84x in 128 KiB pieces
# (`python -m loadtests.serve_bench --ranges 4MiB --connections 64 --serve-processes 2 --nginx-workers 2`).
SERVING_PIECES = 16 << 20
# S3 bytes a worker's fills ask for at once; aiohttp buffers up to twice as much. A few fills
# read 1 MiB pieces (a fill in 256 KiB pieces costs 15% more CPU: `python -m
# loadtests.fill_profile`), 16 read 256 KiB (in 1 MiB, the memory scenario peaked ~25 MiB higher).
FILL_PIECES = 4 << 20


class PieceBudget:
    def __init__(self, total: int, least: int = 64 << 10, most: int = 1 << 20) -> None:
        self.total, self.least, self.most = total, least, most
        self.streams = 0  # streams open

    @property
    def floor_streams(self) -> int:
        """Streams at which a piece reaches its floor: past them, each adds its own pieces."""
        return self.total // self.least

    def piece(self) -> int:
        """The size of the next piece a stream reads."""
        return min(self.most, max(self.least, self.total // max(1, self.streams)))

    def open(self) -> None:
        """A stream opens: the pieces of all shrink."""
        self.streams += 1

    def close(self) -> None:
        self.streams -= 1


def fill_piece(fills: int) -> int:
    """The size of the next piece a fill reads from S3, when `fills` fills are running."""
    return min(1 << 20, max(256 << 10, FILL_PIECES // max(1, fills)))


def readahead(configured: int, reads: int) -> int:
    """Chunks a read keeps open ahead of the one it sends, when `reads` reads are running."""
    return max(0, min(configured, OPEN_AHEAD // max(1, reads)))
