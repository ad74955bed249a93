"""Blocking file-system calls off the event loop: the store's, the chunk files' and the keeps'."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

__all__ = ["run", "unlink_all"]


async def run(fn, *args):
    """`fn(*args)` in the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def unlink_all(paths: list[Path]) -> None:
    """Remove each of `paths` that is still there (blocking: `run` it)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
