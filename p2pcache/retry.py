"""When a failed S3 request is worth another try, and how long to wait before it.

Pure: the caller owns the clock, the randomness and the I/O. A transient
failure (reset, timeout, 5xx, 503 SlowDown or 429, cut body) is retried with jittered
exponential backoff until the deadline; a 412 (the object changed), a 404 or a
403 never is. The backoff doubles with each failure in a row that made no
progress; a try that got some bytes before failing starts the count over,
since resuming from the byte reached costs little.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OriginError, OriginUnavailable

__all__ = ["RetryPolicy", "is_transient"]


def is_transient(exc: BaseException) -> bool:
    """A failure another try may not see: S3 unreachable, slow, throttling, failing with a 5xx."""
    return isinstance(exc, (OriginError, OriginUnavailable)) and exc.transient


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.05  # seconds: the first backoff is 25-50 ms
    cap: float = 1.0  # the longest backoff
    deadline: float = 30.0  # seconds from the first try after which nothing is retried
    attempts: int | None = None  # tries in all (None: as many as the deadline allows)

    def backoff(self, failures: int, rand: float) -> float:
        """Seconds to wait after `failures` (>= 1) failures in a row; `rand` uniform in [0, 1).

        "Equal jitter": half the exponential step, plus a random part of the
        other half, so retries of many fills spread out but never come at once.
        """
        step = min(self.cap, self.base * 2 ** min(failures - 1, 32))
        return step / 2 + rand * step / 2

    def next_delay(self, exc: BaseException, tries: int, failures: int, elapsed: float,
                   rand: float) -> float | None:
        """The wait before try `tries + 1`, or None to give up and raise `exc`.

        `tries`: requests made so far; `failures`: failures in a row without
        progress (0 if the last try got some bytes); `elapsed`: seconds since
        the first try.
        """
        if not is_transient(exc):
            return None
        if self.attempts is not None and tries >= self.attempts:
            return None
        delay = self.backoff(max(1, failures), rand)
        if elapsed + delay >= self.deadline:
            return None
        return delay
