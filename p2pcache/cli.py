"""The `p2pcache` command: `master`, `worker` and `local` subcommands."""

from __future__ import annotations

import argparse
import sys

from .service import setup_logging

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    # The CLI is the one place that composes the services, so it imports them.
    import master.__main__ as master_cli
    import worker.__main__ as worker_cli

    from . import local

    parser = argparse.ArgumentParser(prog="p2pcache", description="A peer-to-peer S3 chunk cache for loading AI models.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, text in (
        ("master", master_cli, "run the master (membership and the ring)"),
        ("worker", worker_cli, "run a cache worker"),
        ("local", local, "run a local cluster with an embedded S3 and demo data"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
