"""`p2pcache sync s3://bucket/prefix DIR`: copy a prefix through the cache into a directory, skipping complete files.

Each file is read owner-direct by the loader client (`Client.download`: chunks
in parallel, written to a temp file, renamed in). A file counts as complete
when its size and the ETag recorded for it in `DIR/.p2pcache-sync.json` match
the listing, so a restarted init container copies only what is missing or changed.
A key's path under the prefix is its file's path, part for part, so two keys never share a file;
a key whose path cannot be one (`a//b`, `x/./y`, `a` beside `a/b`) fails alone.
One sync at a time writes into a directory (a lock on `DIR/.p2pcache-sync.lock`), so
the temp files it finds next to its files are left by one that was killed: removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from . import tls
from .cli import run_command
from .client import Client
from .config import add_flag, add_reader_key_flags, master_url, number_arg, reader_key, s3_url, split_s3_url
from .errors import NotFound, P2PError
from .get import Progress
from .outputs import TEMP_NAME, temp_stem
from .sizes import format_size

__all__ = ["add_arguments", "main", "sync", "MANIFEST", "LOCK", "SyncResult"]

log = logging.getLogger("p2pcache.sync")
MANIFEST = ".p2pcache-sync.json"
LOCK = ".p2pcache-sync.lock"
SAVE_EVERY = 2.0  # seconds between manifest writes while files land
LOCK_POLL = 1.0  # seconds between tries of a lock another sync holds


class SyncResult(dict):
    """{"copied": [...], "skipped": [...], "failed": {key: reason}, "bytes": n}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="s3://bucket/prefix", type=s3_url,
                   help="the prefix to copy, a directory as in `aws s3 sync` (or a key: that object alone)")
    p.add_argument("dir", help="the local directory (created if missing); keys keep their path under the prefix")
    p.add_argument("--files", type=number_arg(int, 1), default=4, help="files copied at once (default 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_flag(p, "--master", "URL of the master", type=master_url, required=True)
    add_flag(p, "--concurrency", "chunk requests in flight", type=number_arg(int, 1), default=16)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for an https:// master and workers, on top of the "
             "system's", default="")
    add_reader_key_flags(p)


def main(args: argparse.Namespace) -> int:
    """0 when every file is complete; 1 naming what failed (run_command's codes)."""
    bucket, prefix = split_s3_url(args.url)
    return run_command("sync", _main(args, bucket, prefix))


async def _main(args: argparse.Namespace, bucket: str, prefix: str) -> int:
    tls.check("", "", args.tls_ca)
    tty = sys.stderr.isatty()
    progress = Progress(sys.stderr, interval=0.2 if tty else 5.0, lines=not tty)
    try:
        async with Client(args.master, concurrency=args.concurrency, tls_ca=args.tls_ca, **reader_key(args)) as client:
            result = await sync(client, bucket, prefix, Path(args.dir), files=args.files, progress=progress)
    finally:
        progress.finish()
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
    # An empty key ending in `/` is a directory marker (S3 consoles make them): not a file, skipped.
    objects = exact or [o for o in listed if o["Key"].startswith(base) and not _marker(o)]
    if not objects:
        raise NotFound(f"no objects under s3://{bucket}/{prefix}")
    paths, refused = _targets(root, base, [o["Key"] for o in objects])
    unfit = {key for key in refused if _unfit(_rel(base, key))}
    result = SyncResult(copied=[], skipped=[], failed=dict(refused), bytes=0)
    targets = [(o, paths[o["Key"]]) for o in objects if o["Key"] in paths]
    await loop.run_in_executor(None, lambda: root.mkdir(parents=True, exist_ok=True))
    async with _locked(root):
        await loop.run_in_executor(None, _remove_stale_temp_files, [path for _, path in targets])
        await _copy(client, bucket, root, targets, set(refused), unfit, result, files, progress)
    return result


async def _copy(client: Client, bucket: str, root: Path, targets: list[tuple[dict, Path]], refused: set[str],
                unfit: set[str], result: SyncResult, files: int, progress: Callable[[int, int], None] | None) -> None:
    """Copy the files of `targets` that are not complete, recording each in the manifest.

    `refused`: the keys with no file; `unfit`: those of them refused for their own path.
    """
    loop = asyncio.get_running_loop()
    manifest, trusted = _trusted(await loop.run_in_executor(None, _load, root / MANIFEST), refused, unfit)
    if not trusted:
        log.warning("%s records keys that cannot be files there (an earlier p2pcache wrote them over other "
                    "keys' files): copying every file again", root / MANIFEST)
    todo = []
    for o, path in targets:
        entry = manifest.get(o["Key"])
        if entry == {"size": o["Size"], "etag": o["ETag"]} and \
                await loop.run_in_executor(None, _size, path) == o["Size"]:
            result["skipped"].append(o["Key"])
        else:
            todo.append((o, path))
    total, done, saved = sum(o["Size"] for o, _ in todo), 0, time.monotonic()
    slots = asyncio.Semaphore(max(1, files))
    # One thread writes the manifest: writes never overlap, and run in the order they were asked
    # for, so the last one holds every file recorded (a cancelled await does not stop its write).
    writer = ThreadPoolExecutor(1, thread_name_prefix="p2pcache-sync-manifest")

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
                await loop.run_in_executor(writer, _save, root / MANIFEST, dict(manifest))

    try:
        await asyncio.gather(*(one(o, path) for o, path in todo))
    finally:  # also when stopped (SIGINT, SIGTERM): the files that landed are not copied again
        try:
            await loop.run_in_executor(writer, _save, root / MANIFEST, dict(manifest))
        finally:
            writer.shutdown(wait=False)  # its thread ends after the writes asked for


@contextlib.asynccontextmanager
async def _locked(root: Path):
    """Hold the lock on `root` (waiting while another sync holds it): the temp files there are no one else's."""
    loop = asyncio.get_running_loop()
    fd = await loop.run_in_executor(None, lambda: os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644))

    def take() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        if not take():
            log.info("waiting for another p2pcache sync into %s to finish", root)
            while not take():
                await asyncio.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_temp_files(paths: list[Path]) -> None:
    """Remove the temp files of `paths` (`.NAME.<8 hex>.part`) that a killed sync left next to them."""
    names: dict[Path, set[str]] = {}
    for path in paths:
        names.setdefault(path.parent, set()).add(path.name)
    for parent, wanted in names.items():
        stems = {temp_stem(name) for name in wanted}
        # No directory there (or a file in its place): no temp files; its files' copies fail alone, saying why.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(parent):
                match = TEMP_NAME.fullmatch(entry.name)
                if match and match["name"] in stems and entry.name not in wanted and entry.is_file():
                    log.info("removing %s, left by an earlier sync", entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def _trusted(manifest: dict, refused: set[str], unfit: set[str]) -> tuple[dict, bool]:
    """The entries of `manifest` to start from (none for a key with no file), and whether it is trusted.

    Versions that dropped a path's empty and `.` parts copied `a//b` onto `a/b`'s file and
    recorded both: a manifest recording a key refused for its own path (`unfit`, which this
    version never records) trusts none of its files, so none of its entries is kept. A key refused
    only because a key under it appeared since (`a`, then `a/b`) had a file of its own: the others stand.
    """
    if unfit & manifest.keys():
        return {}, False
    return {key: entry for key, entry in manifest.items() if key not in refused}, True


def _marker(o: dict) -> bool:
    """Whether the listed object `o` is a directory marker: an empty key ending in `/`."""
    return o["Key"].endswith("/") and o["Size"] == 0


def _rel(base: str, key: str) -> str:
    """The path of `key` under the directory `base` (of the key `base` names: its name)."""
    return key[len(base):] if key.startswith(base) else key.rpartition("/")[2]


def _targets(root: Path, base: str, keys: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Each key's file under `root` ({key: path}), or why it has none ({key: reason}).

    The path of a key under the directory `base` (of the key `base` names: its name) is its file's
    path under `root`, part for part. Then the file maps back to one key, and no key lands outside
    `root`: a path with an empty part (`//`, a leading `/`), a `.` or `..` part, or the name of
    sync's own files has no file; nor does one that is the directory of another key's file (`a`
    beside `a/b`: the directory wins, whatever order the copies run in).
    """
    rels: dict[str, str] = {}
    refused: dict[str, str] = {}
    for key in keys:
        rel = _rel(base, key)
        why = _unfit(rel)
        if why:
            refused[key] = f"cannot be a file under {root}: {why}"
        else:
            rels[key] = rel
    directories: dict[str, str] = {}  # a directory's path -> the first key under it
    for key, rel in rels.items():
        parts = rel.split("/")
        for n in range(1, len(parts)):
            directories.setdefault("/".join(parts[:n]), key)
    for key, rel in rels.items():
        if rel in directories:
            refused[key] = (f"cannot be a file under {root}: {rel!r} is the directory of key "
                            f"{directories[rel]!r}")
    return {key: root.joinpath(*rel.split("/")) for key, rel in rels.items() if key not in refused}, refused


def _unfit(rel: str) -> str:
    """Why the path `rel` cannot be a file's path under the directory, part for part ("" if it can)."""
    parts = rel.split("/")
    if "" in parts:
        return f"its path {rel!r} has an empty part (a leading or trailing '/', or '//')"
    if "." in parts or ".." in parts:
        return f"its path {rel!r} has a {'..' if '..' in parts else '.'!r} part"
    if parts[-1] in (MANIFEST, MANIFEST + ".tmp", LOCK):
        return f"{parts[-1]!r} is the name of sync's own file"
    return ""


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
