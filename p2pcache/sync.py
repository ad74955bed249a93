"""`p2pcache sync s3://bucket/prefix DIR`: copy a prefix through the cache into a directory, skipping complete files.

Each file is read owner-direct by the loader client (`Client.download`: chunks
in parallel, written to a temp file, renamed in). A file counts as complete
when its size and the ETag recorded for it in `DIR/.p2pcache-sync.json` match
the listing, so a restarted init container copies only what is missing or changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Callable, TextIO

from .cli import run_command
from .client import Client
from .config import add_flag
from .errors import NotFound, P2PError
from .sizes import format_size

__all__ = ["add_arguments", "main", "sync", "MANIFEST", "SyncResult"]

MANIFEST = ".p2pcache-sync.json"
SAVE_EVERY = 2.0  # seconds between manifest writes while files land


class SyncResult(dict):
    """{"copied": [...], "skipped": [...], "failed": {key: reason}, "bytes": n}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="s3://bucket/prefix", help="the prefix to copy, a directory as in `aws s3 sync` "
                   "(or a key: that object alone)")
    p.add_argument("dir", help="the local directory (created if missing); keys keep their path under the prefix")
    p.add_argument("--files", type=int, default=4, help="files copied at once (default 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_flag(p, "--master", "URL of the master", required=True)
    add_flag(p, "--concurrency", "chunk requests in flight", type=int, default=16)


def main(args: argparse.Namespace) -> int:
    """0 when every file is complete; 1 naming what failed (run_command's codes)."""
    bucket, _, prefix = args.url.removeprefix("s3://").partition("/")
    if not args.url.startswith("s3://") or not bucket:
        print(f"p2pcache sync: {args.url!r} is not an s3://bucket/prefix URL", file=sys.stderr)
        return 1
    return run_command("sync", _main(args, bucket, prefix))


async def _main(args: argparse.Namespace, bucket: str, prefix: str) -> int:
    async with Client(args.master, concurrency=args.concurrency) as client:
        result = await sync(client, bucket, prefix, Path(args.dir), files=args.files,
                            progress=_Lines(sys.stderr, sys.stderr.isatty()))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"synced {args.url} to {args.dir}: {len(result['copied'])} files copied "
              f"({format_size(result['bytes'])}), {len(result['skipped'])} already complete, "
              f"{len(result['failed'])} failed")
    for key, reason in result["failed"].items():
        print(f"  failed: {key}: {reason}", file=sys.stderr)
    return 1 if result["failed"] else 0


async def sync(client: Client, bucket: str, prefix: str, root: Path, files: int = 4,
               progress: Callable[[int, int], None] | None = None) -> SyncResult:
    """Copy every object under `prefix`, a directory, to `root`/<key without the prefix>.

    As `aws s3 sync`, `ds/a` is `ds/a/`: `ds/a/x` lands as `root/x`, `ds/a.bin` is not copied. A
    prefix that is a key names that object alone, copied to `root`/<its name>. A key that cannot be
    a file under `root` fails alone.
    """
    loop = asyncio.get_running_loop()
    listed, _ = await client.list(bucket, prefix)
    base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    exact = [o for o in listed if o["Key"] == prefix] if prefix != base else []
    objects = exact or [o for o in listed if o["Key"].startswith(base) and not o["Key"].endswith("/")]
    if not objects:
        raise NotFound(f"no objects under s3://{bucket}/{prefix}")
    result = SyncResult(copied=[], skipped=[], failed={}, bytes=0)
    targets = []
    for o in objects:
        try:
            targets.append((o, _target(root, base, o["Key"])))
        except ValueError as exc:
            result["failed"][o["Key"]] = str(exc)
    await loop.run_in_executor(None, lambda: root.mkdir(parents=True, exist_ok=True))
    manifest = await loop.run_in_executor(None, _load, root / MANIFEST)
    todo = []
    for o, path in targets:
        entry = manifest.get(o["Key"])
        if entry == {"size": o["Size"], "etag": o["ETag"]} and await loop.run_in_executor(None, _size, path) == o["Size"]:
            result["skipped"].append(o["Key"])
        else:
            todo.append((o, path))
    total, done, saved = sum(o["Size"] for o, _ in todo), 0, time.monotonic()
    slots = asyncio.Semaphore(max(1, files))

    async def one(o: dict, path: Path) -> None:
        nonlocal done, saved
        async with slots:
            try:
                await loop.run_in_executor(None, lambda: path.parent.mkdir(parents=True, exist_ok=True))
                info = await client.download(bucket, o["Key"], path)
                size = await loop.run_in_executor(None, _size, path)
                if size != info.size:
                    raise OSError(f"wrote {size} bytes, want {info.size}")
            except (P2PError, OSError) as exc:
                result["failed"][o["Key"]] = str(exc)
                return
            manifest[o["Key"]] = {"size": info.size, "etag": info.etag}
            result["copied"].append(o["Key"])
            result["bytes"] += info.size
            done += o["Size"]
            if progress:
                progress(done, total)
            if time.monotonic() - saved > SAVE_EVERY:
                saved = time.monotonic()
                await loop.run_in_executor(None, _save, root / MANIFEST, dict(manifest))

    await asyncio.gather(*(one(o, path) for o, path in todo))
    await loop.run_in_executor(None, _save, root / MANIFEST, manifest)
    if progress and todo:
        progress(total, total)
    return result


def _target(root: Path, base: str, key: str) -> Path:
    """Where a key under the directory `base` (or named by it) goes; one that would land outside `root` is refused."""
    rel = PurePosixPath(key[len(base):].lstrip("/") if key.startswith(base) else PurePosixPath(key).name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.name == MANIFEST:
        raise ValueError(f"key {key!r} cannot be a file under {root}")
    return root.joinpath(*rel.parts)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, manifest: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, sort_keys=True))
    os.replace(tmp, path)


class _Lines:
    """Progress on stderr: redrawn in place on a terminal, else a line at most every 5 s."""

    def __init__(self, stream: TextIO, tty: bool, interval: float = 5.0) -> None:
        self._stream, self._tty, self._interval = stream, tty, interval
        self._start = self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._tty and done < total and now - self._last < self._interval:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-3)
        text = f"{format_size(done)} / {format_size(total)} ({100 * done // max(total, 1)}%) {format_size(int(rate))}/s"
        self._stream.write(("\r" + text + "  ") if self._tty else text + "\n")
        if self._tty and done >= total:
            self._stream.write("\n")
        self._stream.flush()
