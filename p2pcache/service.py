"""Run a service under uvloop until SIGINT/SIGTERM, then stop it gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Callable, Protocol

import uvloop

__all__ = ["Service", "run_service", "setup_logging"]


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
