"""`p2pcache status [s3://bucket/prefix]`: one row per worker; per object under a prefix, cached and pinned."""

from __future__ import annotations

import argparse
import json
import sys

from .cli import run_command
from .config import s3_url
from .preload_cli import add_master_flags, admin_from_args
from .sizes import format_size

__all__ = ["add_arguments", "main", "render"]

COLUMNS = ("id", "url", "state", "epoch", "capacity", "used", "pinned", "hit ratio", "served", "from peers",
           "from S3", "fills")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", metavar="s3://bucket/prefix", type=s3_url, help="also show each object under it")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    add_master_flags(p)


def main(args: argparse.Namespace) -> int:
    return run_command("status", _status(args))


async def _status(args: argparse.Namespace) -> int:
    async with admin_from_args(args) as admin:
        status = await admin.status(args.url)
    if not status["workers"]:  # an empty table would pass for a healthy answer: none, this line only
        print(f"p2pcache status: the master at {args.master} has no workers in its ring (the workers "
              f"register with the master they are given as --master)", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=1) if args.json else render(status))
    return 0 if all(w["state"] != "unreachable" for w in status["workers"]) else 1


def render(status: dict) -> str:
    rows = [COLUMNS] + [_row(w) for w in status["workers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [f"ring epoch {status['epoch']}, {len(status['workers'])} workers, "
             f"chunk size {format_size(status['chunk_size'])}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if "objects" in status:
        lines.append("")
        lines.append(f"{'cached':>7}  {'pinned':>7}  {'size':>10}  object")
        for o in status["objects"]:
            lines.append(f"{o['cached']:>7.0%}  {o['pinned']:>7.0%}  {format_size(o['size']):>10}  "
                         f"s3://{o['bucket']}/{o['key']}")
    return "\n".join(lines)


def _row(w: dict) -> tuple[str, ...]:
    if w["state"] == "unreachable":
        return (w["id"], w["url"], "unreachable", *[""] * (len(COLUMNS) - 3))
    ratio = "-" if w["hit_ratio"] is None else f"{w['hit_ratio']:.0%}"
    return (w["id"], w["url"], w["state"], str(w["epoch"]), format_size(w["capacity"]), format_size(w["used"]),
            format_size(w["pinned"]), ratio, format_size(int(w["bytes_served"])),
            _size(w.get("bytes_from_peers")),  # a worker of an earlier version does not say
            format_size(int(w["bytes_from_s3"])), str(w["fills_in_flight"]))


def _size(n: float | None) -> str:
    return "-" if n is None else format_size(int(n))
