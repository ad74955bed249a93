"""Run a service under uvloop until SIGINT/SIGTERM, then stop it gracefully."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from typing import Callable, Protocol

import uvloop

__all__ = ["Service", "run_service", "setup_logging", "few_malloc_arenas"]


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def ready_line(self) -> str: ...


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def few_malloc_arenas(arenas: int = 2) -> bool:
    """As `MALLOC_ARENA_MAX=2` would, unless the environment sets it: glibc gives each thread
    that allocates an arena of its own, and the executor's threads (disk reads and writes) each
    keep freed memory there. A worker's peak under 64 streams: 135-140 MiB with two arenas,
    146-153 without (`p2pcache bench --scenarios memory`). True if set; call it first thing."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).mallopt(-8, arenas) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


def run_service(make: Callable[[], Service]) -> int:
    """Start the service, print its ready line, serve until a signal, stop."""

    async def main() -> None:
        service = make()
        await service.start()
        print(service.ready_line(), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logging.getLogger("p2pcache").info("signal received, shutting down")
        await service.stop()

    uvloop.run(main())
    return 0
