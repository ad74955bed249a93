"""What a serving process tells its coordinator, in batches: chunk uses (eviction sees second
uses), corrupt chunks, requests, hits and misses, and bytes (the worker's metrics add up over its
processes, counted as the coordinator counts its own: README, "Metrics")."""

from __future__ import annotations

from collections import Counter

__all__ = ["Reports"]


class Reports:
    """What a serving process tells its coordinator: chunk uses, corrupt chunks, requests, bytes."""

    def __init__(self) -> None:
        self._touched: Counter[str] = Counter()
        self._corrupt: set[str] = set()
        self._requests: Counter[tuple[str, int]] = Counter()  # (method, status)
        self._bytes = 0
        self._peer_bytes_served = 0  # chunk bytes sent to peers
        self._peer_bytes = 0  # chunk bytes received from peers
        self._hits = 0
        self._misses = 0
        self._corrupt_transfers = 0
        self._fast = 0
        self._stalled = 0

    def hit(self, name: str, sent: int) -> None:
        """A chunk of a reader's read found in its file here (`sent` bytes of it, if sent already)."""
        self._touched[name] += 1
        self._hits += 1
        self._bytes += sent

    def touch(self, name: str) -> None:
        """A chunk a peer asked for, found in its file here: a use (eviction), not a reader's hit."""
        self._touched[name] += 1

    def sent_to_peer(self, n: int) -> None:
        self._peer_bytes_served += n

    def from_peer(self, n: int) -> None:
        """`n` bytes of a chunk received from another worker."""
        self._peer_bytes += n

    def sent(self, n: int) -> None:
        self._bytes += n

    def corrupt(self, name: str) -> None:
        self._corrupt.add(name)

    def miss(self) -> None:
        """A chunk of a reader's read not here: read from the worker that holds it."""
        self._misses += 1

    def corrupt_transfer(self) -> None:
        self._corrupt_transfers += 1

    def stalled(self) -> None:
        """An answer cut: its reader took nothing for --send-timeout."""
        self._stalled += 1

    def request(self, method: str, status: int, fast: bool = False) -> None:
        self._requests[method, status] += 1
        self._fast += fast

    def take(self, index: int, force: bool = False) -> dict | None:
        """The batch since the last one (None if there is nothing to say, unless `force`), and a fresh start."""
        if not (self._touched or self._corrupt or self._requests or self._stalled or force):
            return None
        requests = {f"{method} {status}": n for (method, status), n in self._requests.items()}
        batch = {"process": index, "touched": dict(self._touched), "corrupt": sorted(self._corrupt),
                 "requests": requests, "bytes": self._bytes, "hits": self._hits, "misses": self._misses,
                 "peer_bytes_served": self._peer_bytes_served, "peer_bytes": self._peer_bytes,
                 "corrupt_transfers": self._corrupt_transfers, "fast": self._fast, "stalled": self._stalled}
        self.__init__()
        return batch
