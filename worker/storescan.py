"""The startup scan of a cache dir's chunks: what is a chunk file, what is dropped."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

__all__ = ["scan"]

_NAME = re.compile(r"[0-9a-f]{40}-(\d+)-(\d+)")  # <version digest>-<index>-<length>


def scan(root: Path, well_formed: Callable[[Path, int, int], bool]) -> tuple[list[tuple[float, str, int]], int,
                                                                           list[OSError]]:
    """The chunk files under `root/chunks` as (mtime, name, size), how many entries were dropped
    (removed: not a chunk file, or not `well_formed(path, size, length)`), and the errors of those
    that could be neither read nor removed (left out). `root/tmp` is emptied."""
    (root / "chunks").mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    found, dropped, skipped = [], 0, []
    for entry in (root / "chunks").glob("*/*"):
        try:  # one bad entry (a dangling link, an unreadable file) is that entry's problem only
            chunk = _chunk(entry, well_formed)
        except OSError:
            chunk = None
        if chunk is not None:
            found.append(chunk)
            continue
        try:
            _remove(entry)
            dropped += 1
        except OSError as exc:
            skipped.append(exc)
    return found, dropped, skipped


def _chunk(entry: Path, well_formed: Callable[[Path, int, int], bool]) -> tuple[float, str, int] | None:
    """(mtime, name, size) of a chunk file; None for anything else."""
    match = _NAME.fullmatch(entry.name)
    if not match or entry.parent.name != entry.name[:2] or not entry.is_file():
        return None
    st = entry.stat()
    return (st.st_mtime, entry.name, st.st_size) if well_formed(entry, st.st_size, int(match.group(2))) else None


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
