"""`p2pcache worker`: run a cache worker until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse

from p2pcache.service import run_service

from .config import WorkerConfig, add_arguments
from .server import Worker

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    return run_service(lambda: Worker(WorkerConfig.from_args(args)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="p2pcache worker")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
