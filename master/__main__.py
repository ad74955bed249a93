"""`p2pcache master`: run the master until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse

from p2pcache.service import run_service

from .config import MasterConfig, add_arguments
from .server import Master

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    return run_service(lambda: Master(MasterConfig.from_args(args)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="p2pcache master")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
