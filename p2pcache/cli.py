"""The `p2pcache` command: `master`, `worker`, `local`, `get`, `bench`, `preload`, `unpin`, `status`, `sync` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Coroutine

import uvloop

from .config import add_flag
from .errors import AccessDenied, P2PError
from .service import setup_logging, std_fds_open

__all__ = ["main", "run_command", "describe"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    # The CLI is the one place that composes the services, so it imports them.
    import master.__main__ as master_cli
    import worker.__main__ as worker_cli

    from . import get, local, preload_cli, status_cli, sync

    parser = argparse.ArgumentParser(prog="p2pcache", description="A peer-to-peer S3 chunk cache for loading AI models.")
    add_flag(parser, "--log-level", "DEBUG, INFO, WARNING or ERROR", type=_log_level, default="INFO",
             metavar="LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, text in (
        ("master", master_cli, "run the master (membership and the ring)"),
        ("worker", worker_cli, "run a cache worker"),
        ("local", local, "run a local cluster with an embedded S3 and demo data"),
        ("get", get, "read an object (or a byte range) through the cache to a file or stdout"),
        ("bench", _bench_module(), "run the benchmarks (loadtests/bench.py of a source checkout)"),
        ("preload", preload_cli, "fill the cache with objects under s3:// prefixes (a job on the master)"),
        ("sync", sync, "copy a prefix through the cache into a local directory, skipping complete files"),
        ("status", status_cli, "the workers' state and, for a prefix, how much of each object is cached"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(run=module.main)
    p = sub.add_parser("unpin", help="stop keeping pinned chunks under s3:// prefixes from eviction")
    preload_cli.add_unpin_arguments(p)
    p.set_defaults(run=preload_cli.unpin_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    std_fds_open()  # before anything opens a file or a socket
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.run(args)


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: use {', '.join(LOG_LEVELS)}")
    return text.upper()


def run_command(name: str, command: Coroutine[None, None, int],
                explain: Callable[[Exception], str] | None = None) -> int:
    """Run a command's coroutine to its exit status, never a traceback: an error is one line on stderr.

    2 for bad arguments (ValueError), 1 for a refusal or a failure (a named error, a file that
    cannot be written), 130 on SIGINT and 143 on SIGTERM (how a pod's container is stopped):
    either signal cancels the coroutine, so its `finally`s remove what it left half done.
    """
    std_fds_open()
    try:
        return uvloop.run(_cancelled_by_sigterm(command))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader of stdout went away (`| head`): not an error worth a line
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, P2PError, OSError) as exc:
        print(f"p2pcache {name}: {(explain or describe)(exc)}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ValueError) else 1


def describe(exc: Exception) -> str:
    """An error as one line: a file's error names the file, a refused signature or key its S3 code."""
    if isinstance(exc, AccessDenied):
        return f"access denied ({exc.code}): {' '.join(str(exc).split())}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__


class _Terminated(Exception):
    """SIGTERM cancelled the command."""


async def _cancelled_by_sigterm(command: Coroutine[None, None, int]) -> int:
    """`command`, cancelled by SIGTERM as asyncio's runner cancels it on SIGINT."""
    task, terminated = asyncio.current_task(), []

    def terminate() -> None:
        terminated.append(True)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await command
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated() from None
        raise


def _bench_module():
    """`loadtests/bench.py` of the source checkout this package runs from (an editable install).

    loadtests/ is not installed with the package; without a checkout, or without the `bench`
    extra's dependencies, `p2pcache bench` explains what is missing instead.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "loadtests" / "bench.py").is_file():
        return _Unavailable(f"p2pcache bench runs loadtests/bench.py of a source checkout, and there is none "
                            f"next to {Path(__file__).parent}: clone the repository and run "
                            f"`pip install -e \".[bench]\"` in it (or `python -m loadtests.bench` there).")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        from loadtests import bench
    except ImportError as exc:
        return _Unavailable(f"p2pcache bench could not import loadtests/bench.py ({exc}): "
                            f"run `pip install -e \".[bench]\"` in {root}.")
    return bench


class _Unavailable:
    """Stands in for the bench module when it cannot be imported: any arguments, one clear error."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def main(self, args: argparse.Namespace) -> int:
        print(self.reason, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
