"""How a benchmark run stops: SIGTERM unwinds it as Ctrl-C does, and a failed run is one line, not a traceback."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

from p2pcache.local import NotReady

__all__ = ["run_main", "held", "RunFailed"]


class RunFailed(RuntimeError):
    """A run whose numbers mean nothing (its reference failed): a failure, never a result."""


class _Hold:
    """SIGTERM held back while a process is being started and put where the clean-up finds it,
    and while processes are being stopped.

    Raised inside `subprocess.Popen` (which waits for the child to exec: long with a
    preexec_fn) or before the list or `try` that stops the process, it would leave that child
    running, unknown to every `finally`: a worker that then recreates its removed cache dir.
    Raised inside a clean-up (the one between two repeats, say), it would cut it short.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False  # a SIGTERM came while held
        self.terminated = False  # the run is being stopped by SIGTERM, not Ctrl-C


_HOLD = _Hold()  # as process-wide as the signal handler that consults it


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A SIGTERM arriving inside is raised at its end (start a process, then record it, inside)."""
    _HOLD.depth += 1
    try:
        yield
    finally:
        _HOLD.depth -= 1
    if _HOLD.depth == 0 and _HOLD.pending:
        _HOLD.pending = False
        signal.raise_signal(signal.SIGINT)


def run_main(name: str, main: Callable[[], object]) -> int:
    """`main()`'s exit status (its int, else 0); SIGTERM stops it as SIGINT does, with all it started.

    On Ctrl-C Python unwinds: every `with` and `finally` stops its processes (the cluster, nginx,
    wrk, the readers) and removes its temp dirs. SIGTERM (`kill`, `timeout`, a CI runner) ended
    the process on the spot instead, and nginx and wrk, which do not die with their parent, kept
    running. Here it is turned into a SIGINT, so it unwinds alike: a KeyboardInterrupt in plain
    code, and inside `asyncio.run`/`uvloop.run` their own SIGINT handling, which cancels the main
    task (an exception raised from the handler in the middle of the event loop's callbacks would
    break a transport instead, and the loop could hang). A second SIGTERM while unwinding is
    ignored, not to cut the clean-up short. SIGKILL still ends it at once: then the processes it
    started get SIGTERM from the kernel (`p2pcache.service.die_with_parent`) and stop; its temp
    dirs stay.
    130 on SIGINT, 143 on SIGTERM; 1 with one line for a failed run or a process that did not start.
    """
    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _HOLD.terminated = True
        if _HOLD.depth:  # a process is being started: `held` raises it once it is recorded
            _HOLD.pending = True
            return
        signal.raise_signal(signal.SIGINT)

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    # Started in the background of a script (`bench &`), it inherits SIGINT ignored, and the
    # SIGINT a SIGTERM becomes would be lost: SIGINT gets Python's handler back for the run.
    ignored = main_thread and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = main()
    except KeyboardInterrupt:
        number = signal.SIGTERM if _HOLD.terminated else signal.SIGINT
        print(f"{name}: stopped by {number.name}; what it started has stopped", file=sys.stderr, flush=True)
        return 128 + number
    except (RunFailed, NotReady) as exc:
        print(f"{name}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status if isinstance(status, int) else 0
