"""`p2pcache master`: run the master until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys

from p2pcache.service import run_service

from .config import MasterConfig, add_arguments
from .server import Master

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    try:
        config = MasterConfig.from_args(args)
    except ValueError as exc:
        print(f"p2pcache master: {exc}", file=sys.stderr)
        return 2
    return run_service(lambda: Master(config), "p2pcache master")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="p2pcache master")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
