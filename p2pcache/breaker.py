"""A circuit breaker: a synchronous state machine with an injected clock, no I/O.

Outcomes come in kinds (for S3: its ranged GETs, and its HEADs and listings), and a
success clears only the failures of its own kind: S3 answering every HEAD says
nothing of GETs that all stall, and must not hide them. Failures in a row, of any
kinds, still open it as soon as they reach the threshold.

closed ──(`threshold` failures not cleared by a success of their kind)──> open ──(cooldown)──> half-open
half-open lets one request through at a time (the probe): if it fails, open again
with the cooldown doubled, up to `max_cooldown`; if it succeeds and is of a kind
that was failing, closed; a success of another kind proves nothing of those, so
the next request probes. While open, nothing is sent, so a persistent outage
costs one request per cooldown.

`admit()` hands out a ticket (the breaker's epoch); `record(ticket, ok)` counts
only outcomes of requests admitted since the last change of state, so a slow
request that started before the breaker opened cannot close it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

__all__ = ["Breaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    def __init__(self, threshold: int = 8, cooldown: float = 1.0, max_cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold  # 0: never opens
        self._base, self._max = cooldown, max(cooldown, max_cooldown)
        self._clock = clock
        self.state = CLOSED
        self.cause: Any = None  # the last failure recorded: what readers are told
        self._cooldown = cooldown
        self._failures: Counter[str] = Counter()  # by kind, since that kind's last success
        self._failing: set[str] = set()  # the kinds that were failing when it opened
        self._epoch = 0
        self._until = 0.0
        self._probing = False

    def admit(self) -> int | None:
        """A ticket to send one request, or None: not now (see `retry_after`)."""
        if self.state == OPEN:
            if self._clock() < self._until:
                return None
            self._become(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probing:
                return None
            self._probing = True
        return self._epoch

    def record(self, ticket: int, ok: bool | None, cause: Any = None, kind: str = "") -> None:
        """The outcome of an admitted request of `kind`: True (the origin answered), False
        (a failure worth opening for), None (no verdict: the request was abandoned)."""
        if ok is False:
            self.cause = cause
        if ticket != self._epoch:
            return
        if self.state == HALF_OPEN:
            self._probing = False
            if ok is True and kind in self._failing:
                self._cooldown = self._base
                self._become(CLOSED)
            elif ok is False:
                self._cooldown = min(self._max, self._cooldown * 2)
                self._open(self._failing | {kind})
        elif ok is True:
            self._failures[kind] = 0
        elif ok is False:
            self._failures[kind] += 1
            if self.threshold and self._failures.total() >= self.threshold:
                self._open({k for k, n in self._failures.items() if n})

    def retry_after(self) -> float:
        """Seconds until a request may be admitted again (an estimate while a probe runs)."""
        if self.state == OPEN:
            return max(0.0, self._until - self._clock())
        return self._cooldown if self.state == HALF_OPEN and self._probing else 0.0

    def _open(self, failing: set[str]) -> None:
        self._until = self._clock() + self._cooldown
        self._failing = failing
        self._become(OPEN)

    def _become(self, state: str) -> None:
        self.state = state
        self._epoch += 1
        self._failures.clear()
        self._probing = False
