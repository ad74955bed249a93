"""What a drain handed to the chunks' owners and what it could not: its last log line."""

from __future__ import annotations

from collections import Counter

__all__ = ["DrainTally", "drain_line", "HANDED", "HELD", "NO_OWNER", "FAILED", "STALE"]

HANDED = "handed"  # an owner copied it from us
HELD = "held"  # every owner had it already: nothing to copy
NO_OWNER = "no owner"  # no worker owns it in the ring (every worker is draining, or this is the only one)
FAILED = "failed"  # a take of it failed
STALE = "stale"  # cut at another chunk size than the ring's: no owner may take it


class DrainTally:
    """Each chunk's last outcome while the worker drains (a later pass, on a new ring, plans it
    again), and the takes that failed. A chunk copied to an owner stays handed when a later pass
    finds the owner holding it."""

    def __init__(self) -> None:
        self._outcomes: dict[str, str] = {}
        self.failed_takes = 0

    def note(self, name: str, outcome: str) -> None:
        if not (outcome == HELD and self._outcomes.get(name) == HANDED):
            self._outcomes[name] = outcome

    def gone(self, name: str) -> None:
        """Evicted here meanwhile: nothing left to hand over."""
        self._outcomes.pop(name, None)

    def counts(self) -> Counter:
        return Counter(self._outcomes.values())


def drain_line(counts: Counter, failed_takes: int, seconds: float, done: bool, backlog: int) -> str:
    """The drain's last line: what was handed over in `seconds`, and what was not and why. Not `done`:
    --drain-timeout ran out with `backlog` chunks still to hand over."""
    line = f"drain: handed {counts[HANDED]} chunks to their owners in {seconds:.1f} s"
    if counts[HELD]:
        line += f" ({counts[HELD]} more they held already)"
    left = []
    if not done:
        left.append(f"{backlog or 'what was'} not handed over by --drain-timeout")
    else:
        if counts[NO_OWNER]:
            left.append(f"{counts[NO_OWNER]} with no owner to hand them to (no other worker owns chunks in the ring)")
        if counts[FAILED]:
            left.append(f"{counts[FAILED]} whose takes failed")
        if counts[STALE]:
            left.append(f"{counts[STALE]} cut at another chunk size than the ring's (no owner takes them)")
    if left:
        line += "; leaving with this worker: " + ", ".join(left)
    if failed_takes:
        line += f"; {failed_takes} {'take' if failed_takes == 1 else 'takes'} failed"
    return line
