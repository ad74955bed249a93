"""`p2pcache preload` and `p2pcache unpin`: start, follow or cancel a preload job on the master."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Callable, TextIO

from .admin_client import AdminClient
from .auth import load_secret
from .cli import run_command
from .config import add_flag, add_secret_flags, master_url, number_arg, s3_url
from .errors import P2PError, Unavailable
from .sizes import format_size
from . import tls

__all__ = ["add_arguments", "add_unpin_arguments", "main", "unpin_main", "Follower", "summary",
           "add_master_flags", "admin_from_args"]

BAR = 24


def add_master_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--master", "URL of the master", type=master_url, required=True)
    add_secret_flags(p)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for an https:// master, on top of the system's", default="")


def admin_from_args(args: argparse.Namespace) -> AdminClient:
    """Raises ValueError for a bad secret or CA."""
    secret = load_secret(args.cluster_secret, args.cluster_secret_file)
    tls.check("", "", args.tls_ca)
    return AdminClient(args.master, secret, ssl=tls.client_context(args.tls_ca))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="*", metavar="s3://bucket/prefix", type=s3_url,
                   help="prefixes (or keys) whose objects to fill, every chunk by its owner")
    p.add_argument("--pin", action="store_true", help="keep the chunks from eviction until `p2pcache unpin`")
    p.add_argument("--json", action="store_true", help="print the final progress as JSON, no progress lines")
    p.add_argument("--detach", action="store_true", help="print the job id and return; the job goes on")
    p.add_argument("--follow", metavar="JOB", help="follow a job started earlier")
    p.add_argument("--cancel", metavar="JOB", help="cancel a job")
    p.add_argument("--wait-ready", type=number_arg(float, 0), default=0, metavar="SECONDS",
                   help="retry starting the job this long while the master or its workers do not answer "
                        "(a Job started with the cluster; default 0)")
    p.add_argument("--interval", type=number_arg(float, 0), default=5.0,
                   help="seconds between progress lines when stderr is not a terminal (default 5)")
    add_master_flags(p)


def add_unpin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="+", metavar="s3://bucket/prefix", type=s3_url,
                   help="stop keeping the chunks of every key under these prefixes")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_master_flags(p)


def main(args: argparse.Namespace) -> int:
    """0 when every chunk is in the cache; 1 naming what failed; 2 for bad arguments."""
    if bool(args.urls) + bool(args.follow) + bool(args.cancel) != 1:
        print("p2pcache preload: give s3:// URLs, or --follow JOB, or --cancel JOB", file=sys.stderr)
        return 2
    return run_command("preload", _preload(args))


def unpin_main(args: argparse.Namespace) -> int:
    return run_command("unpin", _unpin(args))


async def _preload(args: argparse.Namespace) -> int:
    async with admin_from_args(args) as admin:
        if args.cancel:
            job = await admin.cancel(args.cancel)
            print(json.dumps(job, indent=1) if args.json else summary(job))
            return 0
        job = await admin.job(args.follow) if args.follow else await _start(admin, args)
        if args.detach:
            print(json.dumps(job, indent=1) if args.json else job["id"])
            return 0
        follower = None if args.json else Follower(sys.stderr, sys.stderr.isatty(), args.interval)
        if follower:
            follower.stream.write(f"preload {job['id']}: {job['objects_total']} objects, "
                                  f"{format_size(job['bytes_total'])} in {job['chunks_total']} chunks"
                                  f"{', pinned' if job['pin'] else ''}\n")
        try:
            job = await admin.wait(job["id"], follower)
        except asyncio.CancelledError:  # by SIGINT or SIGTERM (run_command): the master goes on with it
            print(f"p2pcache preload: stopped following (interrupted); job {job['id']} goes on: "
                  f"`p2pcache preload --follow {job['id']}` or `--cancel {job['id']}`", file=sys.stderr)
            raise
        except P2PError as exc:  # the master: it may be gone, and its jobs with it
            print(f"p2pcache preload: stopped following ({exc}); job {job['id']} goes on if the master does "
                  f"(`p2pcache preload --follow {job['id']}`), but a job lives in the master's memory: if the "
                  f"master stopped or restarted, it is lost, and its pins with it; run the same preload again "
                  f"(what is cached is not read from S3 again)", file=sys.stderr)
            return 1
        if follower:
            follower.finish()
    if args.json:
        print(json.dumps(job, indent=1))
    else:
        print(summary(job))
        for failure in job["failures"]:
            print(f"  failed: {failure}", file=sys.stderr)
    return 0 if job["state"] == "done" else 1


async def _start(admin: AdminClient, args: argparse.Namespace) -> dict:
    deadline = time.monotonic() + args.wait_ready
    while True:
        try:
            return await admin.preload(args.urls, args.pin)
        except Unavailable as exc:
            if time.monotonic() >= deadline:
                raise
            print(f"p2pcache preload: waiting for the cluster: {exc}", file=sys.stderr, flush=True)
            await asyncio.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


async def _unpin(args: argparse.Namespace) -> int:
    """0 when every worker in the ring unpinned; 1 with a line naming the workers that failed."""
    async with admin_from_args(args) as admin:
        answer = await admin.unpin(args.urls)
    if args.json:
        print(json.dumps(answer, indent=1))
    elif not answer["failed"]:
        print(f"unpinned {answer['unpinned_chunks']} chunks under {' '.join(args.urls)}")
    if answer["failed"]:
        said = answer.get("message") or f"workers failed: {'; '.join(answer['failed'])}"  # or an older master's
        print(f"p2pcache unpin: {' '.join(said.split())}", file=sys.stderr)
        return 1
    return 0


class Follower:
    """Progress of a job: a bar redrawn in place on a terminal, else a plain line every `interval` s."""

    def __init__(self, stream: TextIO, tty: bool, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self._tty, self._interval, self._clock = stream, tty, interval, clock
        self._last = None

    def __call__(self, job: dict) -> None:
        now = self._clock()
        if self._tty:
            self.stream.write("\r" + bar(job) + "  ")
        elif self._last is None or now - self._last >= self._interval or job["state"] != "running":
            self.stream.write(line(job) + "\n")
        else:
            return
        self._last = now
        self.stream.flush()

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _fraction(job: dict) -> float:
    return job["bytes_done"] / job["bytes_total"] if job["bytes_total"] else 1.0


def _eta(job: dict) -> str:
    left = job["bytes_total"] - job["bytes_done"]
    if not left:
        return "0s"
    return f"{left / job['rate']:.0f}s" if job["rate"] > 0 else "?"


def bar(job: dict) -> str:
    filled = int(BAR * _fraction(job))
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] {_fraction(job):4.0%} "
            f"{format_size(job['bytes_done'])}/{format_size(job['bytes_total'])} "
            f"{format_size(int(job['rate']))}/s ETA {_eta(job)} "
            f"objects {job['objects_done']}/{job['objects_total']} failed {job['chunks_failed']}")


def line(job: dict) -> str:
    return (f"preload {job['id']} {job['state']}: {_fraction(job):.0%}, {format_size(job['bytes_done'])} of "
            f"{format_size(job['bytes_total'])}, objects {job['objects_done']}/{job['objects_total']}, "
            f"chunks {job['chunks_done']}/{job['chunks_total']}, {format_size(job['bytes_from_s3'])} from S3, "
            f"{format_size(int(job['rate']))}/s, {job['chunks_failed']} failed")


def summary(job: dict) -> str:
    """The job's last line; when its owners did not hold all of it at its end, how much they did."""
    text = (f"preload {job['id']} {job['state']}: {job['objects_done']}/{job['objects_total']} objects, "
            f"{format_size(job['bytes_done'])} of {format_size(job['bytes_total'])} in {job['elapsed']:.1f}s "
            f"({format_size(int(job['rate']))}/s), {format_size(job['bytes_from_s3'])} from S3, "
            f"{job['chunks_failed']} chunks failed{', pinned' if job['pin'] else ''}")
    if job.get("bytes_cached") is not None and job["bytes_cached"] < job["bytes_total"]:
        text += f", {format_size(job['bytes_cached'])} of {format_size(job['bytes_total'])} cached"
        if job["state"] == "cancelled" and job["pin"] and job["bytes_cached"]:
            text += " (what was filled before the cancel stays pinned until `p2pcache unpin`)"
    return text
