"""Run a service under uvloop until SIGINT/SIGTERM, then stop it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Awaitable, Callable, Iterator, Protocol

import uvloop

__all__ = ["Service", "Fatal", "run_service", "listening", "setup_logging", "few_malloc_arenas", "std_fds_open",
           "die_with_parent"]


class Fatal(Exception):
    """The service cannot start, or go on: its message is the one line the process exits with."""


class Service(Protocol):
    async def start(self) -> None: ...  # may raise Fatal; stop() then releases what it took
    async def fatal(self) -> Fatal: ...  # returns when the service cannot go on (most never do)
    async def stop(self) -> None: ...
    def ready_line(self) -> str: ...


@contextlib.contextmanager
def listening(host: str, port: int) -> Iterator[None]:
    """Turns a failure to bind `host:port` into Fatal: `cannot listen on HOST:PORT: address already in use`."""
    try:
        yield
    except OSError as exc:
        # uvloop's strerror repeats the address; a resolver error's errno is not an OS one.
        known = exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror)
        reason = os.strerror(exc.errno) if known else exc.strerror or str(exc)
        shown = f"[{host}]" if ":" in host else host
        raise Fatal(f"cannot listen on {shown}:{port}: {reason[:1].lower()}{reason[1:]}") from exc


def std_fds_open() -> None:
    """Open /dev/null onto whichever of fds 0, 1, 2 is closed (`p2pcache get ... <&-`); call it first thing.

    Else the next socket takes that number, and libuv aborts the process when it closes it
    (`uv__close: Assertion 'fd > STDERR_FILENO' failed`). A closed stderr gets a `sys.stderr` that
    discards what is written (Python's None would send `print(file=sys.stderr)` to stdout); a
    closed stdout keeps `sys.stdout` None, so a command that writes data there fails, not loses it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # EBADF: closed
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` (0 to 2 in turn)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            if fd == 2 and sys.stderr is None:
                sys.stderr = open(2, "w", closefd=False)


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


def _prctl():
    """libc's prctl, looked up here, in the parent: a child between fork and exec must not import or load."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the parent's signal handlers still stop the children


_PRCTL = _prctl()


def die_with_parent() -> None:
    """SIGTERM to this process when its parent exits, even by SIGKILL (Linux's PR_SET_PDEATHSIG);
    as a `preexec_fn`, a child that would outlive its parent (nginx, wrk) stops with it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def run_service(make: Callable[[], Service], name: str) -> int:
    """Start the service, print its ready line, serve until a signal, stop; the exit code.

    A service that cannot start, or go on, is stopped (it releases what it took) and
    the process exits 1 with one line on stderr, `NAME: why`.
    """

    async def main() -> int:
        service = make()
        try:
            await service.start()
        except Fatal as exc:
            fatal: Fatal | None = exc
        else:
            print(service.ready_line(), flush=True)
            fatal = await _until_signal(service.fatal())
        if fatal is None:
            logging.getLogger("p2pcache").info("signal received, shutting down")
        await service.stop()
        if fatal is not None:
            print(f"{name}: {fatal}", file=sys.stderr, flush=True)
            return 1
        return 0

    std_fds_open()
    return uvloop.run(main())


async def _until_signal(fatal: Awaitable[Fatal]) -> Fatal | None:
    """Waits for SIGINT or SIGTERM (None), or for the service's Fatal, whichever comes first."""
    loop = asyncio.get_running_loop()
    signalled = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: signalled.done() or signalled.set_result(None))
    failed = asyncio.ensure_future(fatal)
    await asyncio.wait((signalled, failed), return_when=asyncio.FIRST_COMPLETED)
    if failed.done():
        return failed.result()
    failed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await failed
    return None
