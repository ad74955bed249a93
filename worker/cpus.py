"""How many CPUs this worker may use: its CPU affinity, capped by a cgroup v2 quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "quota_cpus"]


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs of the affinity mask, at most the cgroup's `cpu.max` quota rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = quota_cpus(_read(cgroup_root / "cpu.max"))
    return max(1, min(cpus, quota) if quota else cpus)


def quota_cpus(text: str | None) -> int | None:
    """CPUs a cgroup v2 `cpu.max` line (`QUOTA PERIOD` or `max PERIOD`) allows, rounded up; None if unlimited."""
    words = (text or "").split()
    if len(words) != 2 or words[0] == "max":
        return None
    try:
        quota, period = int(words[0]), int(words[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
