"""Egress pacing: a token bucket that lets bytes out at a set rate."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` bytes per second with bursts up to `burst` bytes.

    Tokens may go negative: a sender takes what it needs at once and waits off
    the debt, so concurrent senders are paced in arrival order and a large
    write never has to be split.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 20, 256 << 10)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def delay(self, n: int) -> float:
        """Take `n` bytes' worth of tokens; the seconds to wait before sending them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, n: int) -> None:
        wait = self.delay(n)
        if wait > 0:
            await asyncio.sleep(wait)
