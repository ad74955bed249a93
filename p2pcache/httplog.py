"""The logger given to aiohttp's servers: a malformed request is one line per client and period, not a traceback."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["QuietParseErrors", "OncePer"]


class OncePer:
    """`due(key)` is true once per key and `period`: for log lines any client can trigger.

    Bounded: past `max_keys` the oldest keys are forgotten (and may log again).
    """

    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 4096) -> None:
        self.period = period
        self._clock = clock
        self._max = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self.suppressed = 0

    def due(self, key: str) -> bool:
        now = self._clock()
        while self._last and (next(iter(self._last.values())) < now - self.period
                              or len(self._last) >= self._max):
            self._last.popitem(last=False)
        if key in self._last:
            self.suppressed += 1
            return False
        self._last[key] = now
        return True


class QuietParseErrors:
    """Stands in for aiohttp's server logger (`logger=` of its servers and runners).

    aiohttp answers a request it cannot parse (a garbage request line, an
    oversized header) with 400 and logs it with a full traceback at ERROR, so
    any client could flood the log. Here such a request is a one-line warning,
    at most once per client address per `period`; everything else passes
    through to `log` unchanged.
    """

    def __init__(self, log: logging.Logger, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self.once = OncePer(period, clock)

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            client = str(args[0]) if args else "?"
            if self.once.due(client):
                self._log.warning("malformed request from %s: %s (not logged again for this client "
                                  "for %.0f s)", client, _one_line(exc_info), self.once.period)
            return
        self._log.exception(msg, *args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _one_line(exc: HttpProcessingError) -> str:
    text = f"{type(exc).__name__} {exc.code}: {exc.message}"
    return text.encode("unicode_escape").decode("ascii")[:300]
