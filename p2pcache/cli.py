"""The `p2pcache` command: `master`, `worker`, `local`, `get`, `bench`, `preload`, `unpin`, `status`, `sync` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .service import setup_logging

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    # The CLI is the one place that composes the services, so it imports them.
    import master.__main__ as master_cli
    import worker.__main__ as worker_cli

    from . import get, local, preload_cli, status_cli, sync

    parser = argparse.ArgumentParser(prog="p2pcache", description="A peer-to-peer S3 chunk cache for loading AI models.")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="what to log (any case)")
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
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.run(args)


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
