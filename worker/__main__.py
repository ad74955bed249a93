"""`p2pcache worker`: run a cache worker until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse
import sys

from p2pcache.service import few_malloc_arenas, run_service

from .config import WorkerConfig, add_arguments
from .server import Worker

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    try:
        config = WorkerConfig.from_args(args)
    except ValueError as exc:
        print(f"p2pcache worker: {exc}", file=sys.stderr)
        return 2
    few_malloc_arenas()
    return run_service(lambda: Worker(config), "p2pcache worker")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="p2pcache worker")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
