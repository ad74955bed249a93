"""The `p2pcache` command: `master`, `worker`, `local`, `get`, `bench`, `preload`, `unpin`, `status`, `sync` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import importlib
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


# name -> what it does, and where its arguments and its entry point are (module, add_arguments, main). The
# CLI is the one place that composes the services, so it imports them: only the one a command line runs
# (the worker's imports alone take ~0.4 s, a `p2pcache get` need not pay them).
COMMANDS = {
    "master": ("run the master (membership and the ring)", "master.__main__", "add_arguments", "main"),
    "worker": ("run a cache worker", "worker.__main__", "add_arguments", "main"),
    "local": ("run a local cluster with an embedded S3 and demo data", "p2pcache.local", "add_arguments", "main"),
    "get": ("read an object (or a byte range) through the cache to a file or stdout", "p2pcache.get",
            "add_arguments", "main"),
    "bench": ("run the benchmarks (loadtests/bench.py of a source checkout)", None, "add_arguments", "main"),
    "preload": ("fill the cache with objects under s3:// prefixes (a job on the master)", "p2pcache.preload_cli",
                "add_arguments", "main"),
    "sync": ("copy a prefix through the cache into a local directory, skipping complete files", "p2pcache.sync",
             "add_arguments", "main"),
    "status": ("the workers' state and, for a prefix, how much of each object is cached", "p2pcache.status_cli",
               "add_arguments", "main"),
    "unpin": ("stop keeping pinned chunks under s3:// prefixes from eviction", "p2pcache.preload_cli",
              "add_unpin_arguments", "unpin_main"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `p2pcache` command line; with `only`, the other commands' modules are not imported and their
    parsers take no arguments (a command line runs one command)."""
    parser = argparse.ArgumentParser(prog="p2pcache", description="A peer-to-peer S3 chunk cache for loading AI models.")
    add_flag(parser, "--log-level", "DEBUG, INFO, WARNING or ERROR", type=_log_level, default="INFO",
             metavar="LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, module_name, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if only is None or name == only:
            module = _bench_module() if module_name is None else importlib.import_module(module_name)
            getattr(module, add)(p)
            p.set_defaults(run=getattr(module, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    std_fds_open()  # before anything opens a file or a socket
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(argv)).parse_args(argv)
    setup_logging(args.log_level)
    return args.run(args)


def command_named(argv: list[str]) -> str | None:
    """The command `argv` names, if nothing but `--log-level` comes before it (else the whole parser reads it)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif not word.startswith("--log-level="):
            return None
    return None


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
