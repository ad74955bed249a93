"""Eviction policies sized in bytes: which cached chunk to drop next (LRU, SLRU, S3-FIFO).

Every policy has the same synchronous interface, used by the store and by the simulator
(loadtests/eviction.py): `insert` a chunk after a fill, `restore` one found on disk at startup
(oldest first), `touch` it on a hit, `promote` it when a preload asks for it (kept as a chunk
read often: a preload's later fills must not evict its first ones), `remove` it when it goes
for another reason, `demote` it to make it the next victim, and `victim(skip)`, which chooses
an entry `skip` does not refuse, forgets it and returns its name (None if every entry is
refused). Entries refused by `skip` (being read, kept by a pin) are rotated to the newest end
of their queue, so each is passed over once per cycle: amortised O(1) per operation while
refused entries are a bounded share.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Protocol

__all__ = ["Policy", "LRU", "SLRU", "S3FIFO", "POLICIES", "DEFAULT"]

Skip = Callable[[str], bool]


class Policy(Protocol):
    nbytes: int

    def __contains__(self, name: str) -> bool: ...
    def __len__(self) -> int: ...
    def insert(self, name: str, size: int) -> None: ...
    def restore(self, name: str, size: int) -> None: ...
    def touch(self, name: str) -> None: ...
    def promote(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def demote(self, name: str) -> None: ...
    def victim(self, skip: Skip) -> str | None: ...


def _first(queue: OrderedDict, skip: Skip) -> str | None:
    """The oldest name of `queue` that `skip` passes; refused ones go to the newest end."""
    for _ in range(len(queue)):
        name = next(iter(queue))
        if not skip(name):
            return name
        queue.move_to_end(name)
    return None


class _Demotions:
    """The demoted entries, evicted before any other; a touch puts one back as new."""

    def __init__(self) -> None:
        self._demoted: OrderedDict[str, int] = OrderedDict()
        self.nbytes = 0

    def _take_demoted(self, skip: Skip) -> str | None:
        name = _first(self._demoted, skip)
        if name is not None:
            self.nbytes -= self._demoted.pop(name)
        return name

    def _undemote(self, name: str) -> bool:
        size = self._demoted.pop(name, None)
        if size is None:
            return False
        self.nbytes -= size
        self.insert(name, size)
        return True


class LRU(_Demotions):
    """Least recently used first."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._order: OrderedDict[str, int] = OrderedDict()  # oldest first

    def __contains__(self, name: str) -> bool:
        return name in self._order or name in self._demoted

    def __len__(self) -> int:
        return len(self._order) + len(self._demoted)

    def insert(self, name: str, size: int) -> None:
        self.remove(name)
        self._order[name] = size
        self.nbytes += size

    restore = insert

    def touch(self, name: str) -> None:
        if name in self._order:
            self._order.move_to_end(name)
        else:
            self._undemote(name)

    promote = touch

    def remove(self, name: str) -> None:
        size = self._order.pop(name, None)
        if size is None:
            size = self._demoted.pop(name, 0)
        self.nbytes -= size

    def demote(self, name: str) -> None:
        if name in self._order:
            self._demoted[name] = self._order.pop(name)

    def victim(self, skip: Skip) -> str | None:
        name = self._take_demoted(skip)
        if name is None and (name := _first(self._order, skip)) is not None:
            self.nbytes -= self._order.pop(name)
        return name


class SLRU(_Demotions):
    """Segmented LRU: new entries on probation; a hit there protects them (`protected` of the bytes)."""

    def __init__(self, capacity: int, protected: float = 0.8) -> None:
        super().__init__()
        self._target = int(capacity * protected)
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._protected_bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self._probation or name in self._protected or name in self._demoted

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected) + len(self._demoted)

    def insert(self, name: str, size: int) -> None:
        self.remove(name)
        self._probation[name] = size
        self.nbytes += size

    restore = insert

    def touch(self, name: str) -> None:
        if name in self._protected:
            self._protected.move_to_end(name)
        elif name in self._probation:
            size = self._protected[name] = self._probation.pop(name)
            self._protected_bytes += size
            while self._protected_bytes > self._target and len(self._protected) > 1:
                old, old_size = self._protected.popitem(last=False)
                self._protected_bytes -= old_size
                self._probation[old] = old_size
        else:
            self._undemote(name)

    promote = touch  # on probation, protected at once; protected, the most recent

    def remove(self, name: str) -> None:
        if name in self._protected:
            size = self._protected.pop(name)
            self._protected_bytes -= size
        else:
            size = self._probation.pop(name, None)
            if size is None:
                size = self._demoted.pop(name, 0)
        self.nbytes -= size

    def demote(self, name: str) -> None:
        size = self._probation.get(name, self._protected.get(name))
        if size is not None:
            self.remove(name)
            self._demoted[name] = size
            self.nbytes += size

    def victim(self, skip: Skip) -> str | None:
        name = self._take_demoted(skip)
        if name is None:
            name = _first(self._probation, skip)
            if name is None:
                name = _first(self._protected, skip)
            if name is not None:
                self.remove(name)
        return name


class S3FIFO(_Demotions):
    """S3-FIFO (Yang et al., SOSP'23): a small FIFO for new entries, a main FIFO, a ghost FIFO.

    A new entry goes to the small FIFO (`small` of the bytes) unless the ghost remembers it.
    Leaving the small FIFO, an entry touched again (`threshold` times) moves to the main one;
    the others go, remembered by the ghost. The main FIFO reinserts an entry touched since it
    last passed, with one touch less (a 2-bit counter, at most 3). One-off scans thus pass
    through the small FIFO without pushing out what is read repeatedly. Touches within `window`
    of the bytes after an entry arrives are the same use, not a second one (a reader asking
    for a chunk in several ranges); 2.5% did best on loadtests/eviction.py's ranged trace.
    """

    MAX_COUNT = 3  # touches an entry of the main FIFO is kept for (a 2-bit counter)

    def __init__(self, capacity: int, small: float = 0.1, threshold: int = 1, window: float = 0.025) -> None:
        super().__init__()
        self._small_target = int(capacity * small)
        self._window = int(capacity * window)
        self._clock = 0  # bytes inserted so far
        self._ghost_target = capacity - self._small_target
        self._threshold = threshold
        self._small: OrderedDict[str, list[int]] = OrderedDict()  # name -> [size, touches, clock]
        self._main: OrderedDict[str, list[int]] = OrderedDict()
        self._small_bytes = 0
        # Names only (and sizes), as many as are cached and at most the main FIFO's bytes.
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._ghost_bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self._small or name in self._main or name in self._demoted

    def __len__(self) -> int:
        return len(self._small) + len(self._main) + len(self._demoted)

    def insert(self, name: str, size: int) -> None:
        self.remove(name)
        self._clock += size
        if (ghost := self._ghost.pop(name, None)) is not None:
            self._ghost_bytes -= ghost
            self._main[name] = [size, 0, self._clock]
        else:
            self._small[name] = [size, 0, self._clock]
            self._small_bytes += size
        self.nbytes += size

    def restore(self, name: str, size: int) -> None:
        """Found on disk at startup: into the main FIFO, so a scan after a restart passes by it."""
        self.remove(name)
        self._main[name] = [size, 0, -self._window]
        self.nbytes += size

    def touch(self, name: str) -> None:
        entry = self._small.get(name) or self._main.get(name)
        if entry is not None:
            if self._clock - entry[2] >= self._window:
                entry[1] = min(entry[1] + 1, self.MAX_COUNT)
        else:
            self._undemote(name)

    def promote(self, name: str) -> None:
        """Into the main FIFO with the highest count, as a chunk read often: a new chunk in the
        small FIFO goes first while the main one holds data read again (or restored), so a
        preload's later fills would evict its first ones; in the main one, a chunk with the
        highest count leaves only once the chunks ahead of it, which reach 0 first, have."""
        self._undemote(name)
        if (entry := self._small.pop(name, None)) is not None:
            self._small_bytes -= entry[0]
            self._main[name] = entry
        if (entry := self._main.get(name)) is not None:
            entry[1] = self.MAX_COUNT

    def remove(self, name: str) -> None:
        if (entry := self._small.pop(name, None)) is not None:
            self._small_bytes -= entry[0]
            self.nbytes -= entry[0]
        elif (entry := self._main.pop(name, None)) is not None:
            self.nbytes -= entry[0]
        elif (size := self._demoted.pop(name, None)) is not None:
            self.nbytes -= size

    def demote(self, name: str) -> None:
        entry = self._small.get(name) or self._main.get(name)
        if entry is not None:
            self.remove(name)
            self._demoted[name] = entry[0]
            self.nbytes += entry[0]

    def victim(self, skip: Skip) -> str | None:
        name = self._take_demoted(skip)
        if name is not None:
            return name
        # Entries refused in a row per queue: when a queue's count reaches its length, every
        # entry in it was refused. A decrement in the main FIFO restarts its count (there are
        # at most 3 per entry, so this ends).
        small_skips = main_skips = 0
        while True:
            small_ok = small_skips < len(self._small)
            main_ok = main_skips < len(self._main)
            if not small_ok and not main_ok:
                return None
            if small_ok and (self._small_bytes >= self._small_target or not main_ok):
                name, entry = self._small.popitem(last=False)
                if skip(name):
                    self._small[name] = entry
                    small_skips += 1
                    continue
                self._small_bytes -= entry[0]
                if entry[1] >= self._threshold:
                    entry[1] = 0
                    self._main[name] = entry
                    continue
                self.nbytes -= entry[0]
                self._remember(name, entry[0])
                return name
            name, entry = self._main.popitem(last=False)
            self._main[name] = entry
            if skip(name):
                main_skips += 1
            elif entry[1]:
                entry[1] -= 1
                main_skips = 0
            else:
                del self._main[name]
                self.nbytes -= entry[0]
                return name

    def _remember(self, name: str, size: int) -> None:
        self._ghost[name] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self._ghost_target or len(self._ghost) > len(self):
            self._ghost_bytes -= self._ghost.popitem(last=False)[1]


POLICIES: dict[str, Callable[[int], Policy]] = {"lru": LRU, "slru": SLRU, "s3fifo": S3FIFO}
DEFAULT = "s3fifo"
