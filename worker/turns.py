"""Answers sending an object's bytes to readers: at most `limit` at once in a process, none stalled.

A process's piece budget (worker/budget.py) shrinks the pieces as answers are
added, down to a floor; past it, each answer adds its own pieces. So at most
`limit` answers send at once, and the next waits for a turn, in order of arrival,
up to `wait` seconds; then it gets 503 SlowDown with Retry-After, which S3 SDKs
retry. Only readers' answers take turns: a peer's request for a chunk never waits
behind them (its reader, on another worker, holds a turn there; were peers to wait
here, two workers whose readers wait on each other's chunks would both stop).

A reader that stops taking bytes would keep its turn, its pieces and the pin on
its chunk (which eviction then cannot free) for as long as its connection stays
open: an answer whose bytes have waited for its reader for `stall` seconds is cut,
as nginx's `send_timeout` does. Waiting for its reader is its connection being
paused (what was written is above the transport's high-water mark) with no piece
handed on since, so a reader slower than a piece per `stall` seconds is cut too.
An answer that waits on its own source (a peer, a fill, S3) is not its reader's
stall: its connection is not paused, and that time does not count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, Protocol

from p2pcache.errors import Busy

__all__ = ["Line", "Turn", "Turns"]

log = logging.getLogger("p2pcache.worker.turns")


class Line(Protocol):
    """The connection an answer goes out on."""

    @property
    def paused(self) -> bool:
        """Whether what was written waits for the reader (above the high-water mark)."""

    def abort(self) -> None:
        """End it at once."""


class Turn:
    """One answer's turn: `moved()` after each piece handed to the connection."""

    __slots__ = ("moved_at", "line", "_clock")

    def __init__(self, line: Line, clock: Callable[[], float]) -> None:
        self.line, self._clock = line, clock
        self.moved_at = clock()

    def moved(self) -> None:
        self.moved_at = self._clock()


class Turns:
    def __init__(self, limit: int, wait: float, stall: float, on_cut: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.wait, self.stall = limit, wait, stall
        self._on_cut, self._clock = on_cut, clock
        self._active: set[Turn] = set()
        self._waiting: collections.deque[tuple[asyncio.Future, Line]] = collections.deque()
        self._watch: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def free(self) -> bool:
        """Whether `now` would give a turn."""
        return len(self._active) < self.limit and not self._waiting

    def now(self, line: Line) -> Turn | None:
        """A turn if one is free and nobody waits for one; None: wait with `take`. `line`: the
        connection the answer goes out on (aborted if its reader stalls)."""
        return self._add(line) if self.free() else None

    async def take(self, line: Line) -> Turn:
        """A turn, once one is free (in order of arrival); Busy after `wait` seconds."""
        turn = self.now(line)
        if turn is not None:
            return turn
        handed = asyncio.get_running_loop().create_future()
        self._waiting.append((handed, line))
        try:
            return await asyncio.wait_for(asyncio.shield(handed), self.wait)
        except BaseException as exc:
            if handed.done():  # handed a turn just as it gave up: pass it on
                self.give_back(handed.result())
            else:
                handed.cancel()
                self._waiting.remove((handed, line))
            if isinstance(exc, asyncio.TimeoutError):
                raise Busy(f"{len(self._active)} reads are sending from this process, the most it serves "
                           f"at once; this one waited {self.wait:g} s for its turn", retry_after=1.0) from None
            raise

    def give_back(self, turn: Turn) -> None:
        """The answer is over: its turn goes to the first reader waiting."""
        if turn not in self._active:
            return  # cut for stalling: given back then
        self._active.discard(turn)
        while self._waiting and len(self._active) < self.limit:
            handed, line = self._waiting.popleft()
            if not handed.done():
                handed.set_result(self._add(line))

    @contextlib.asynccontextmanager
    async def turn(self, line: Line) -> AsyncIterator[Turn]:
        turn = await self.take(line)
        try:
            yield turn
        finally:
            self.give_back(turn)

    @contextlib.asynccontextmanager
    async def held(self, line: Line) -> AsyncIterator[Callable[[], Awaitable[Turn]]]:
        """For an answer that may send bytes or not (a HEAD, a 304): `await need()` takes its
        turn the first time it is called; the turn is given back when the block ends."""
        taken: list[Turn] = []

        async def need() -> Turn:
            if not taken:
                taken.append(await self.take(line))
            return taken[0]

        try:
            yield need
        finally:
            if taken:
                self.give_back(taken[0])

    def stalled(self) -> list[Turn]:
        """Turns whose bytes have waited for their reader for `stall` seconds: the connection is
        paused, and no piece went out since. One that is not paused (its reader took what was
        written; it waits on its source, if on anything) counts from now."""
        now = self._clock()
        found = []
        for turn in self._active:
            if not turn.line.paused:
                turn.moved_at = now
            elif turn.moved_at < now - self.stall:
                found.append(turn)
        return found

    def _add(self, line: Line) -> Turn:
        turn = Turn(line, self._clock)
        self._active.add(turn)
        if self._watch is None and self.stall:
            self._watch = asyncio.get_running_loop().create_task(self._watch_stalls())
        return turn

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(self.stall / 10)  # a stall is seen within a tenth of it
            for turn in self.stalled():
                log.warning("cut an answer whose reader took nothing for %g s", self.stall)
                self.give_back(turn)
                try:
                    turn.line.abort()
                    self._on_cut()
                except Exception:  # the watch must go on for the other answers
                    log.exception("bug: cutting a stalled answer failed")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
