"""What a write into the page cache costs on this machine: into pages it recycles, and into new ones.

    python -m loadtests.pagecache [--size 512MiB] [--repeats 3] [--dir DIR]

Writes `--size` in 8 MiB files of 1 MiB writes (as a fill does, without fsync) twice per
repeat: keeping them all, so every write takes pages the page cache did not have, then
unlinking each file once written, so the next one reuses its pages. Reported: GB/s and the
system CPU-seconds per GB of each, medians (min-max). What new pages cost varies: memory freed
a moment ago is still the VM's, memory freed long ago may have gone back to the host (free
page reporting, a balloon), and taking it back is what costs. A cold read through the cluster
stores every byte it serves, so while the page cache grows it pays the "new pages" figure
(docs/benchmarks.md, "The fill path").
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from p2pcache.sizes import format_size

from .flags import MAX_DATASET, count, size
from .harness import run_main

__all__ = ["main"]

FILE, WRITE = 8 << 20, 1 << 20


def _write(root: str, size: int, keep: bool) -> tuple[float, float]:
    """(GB/s, system CPU-s per GB) of writing `size` bytes under `root`."""
    data = os.urandom(WRITE)
    before, began = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    for i in range(size // FILE):
        path = os.path.join(root, f"{i}")
        with open(path, "wb") as f:
            for _ in range(FILE // WRITE):
                f.write(data)
        if not keep:
            os.unlink(path)
    elapsed = time.perf_counter() - began
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    return size / elapsed / 1e9, system / (size / 1e9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.pagecache", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=size(FILE, MAX_DATASET), default="512MiB", help="at least one 8 MiB file")
    parser.add_argument("--repeats", type=count(1), default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    a = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"new pages": [], "recycled pages": []}
    for _ in range(a.repeats):
        root = tempfile.mkdtemp(prefix="p2pcache-pagecache-", dir=a.dir)
        try:
            results["new pages"].append(_write(root, a.size, keep=True))
            results["recycled pages"].append(_write(root, a.size, keep=False))
        finally:
            shutil.rmtree(root)
    print(f"{format_size(a.size)} written in 1 MiB writes, medians of {a.repeats}:")
    for name, runs in results.items():
        rates, cpus = [r for r, _ in runs], [c for _, c in runs]
        print(f"  into {name}: {statistics.median(rates):.2f} GB/s ({min(rates):.2f}-{max(rates):.2f}), "
              f"{statistics.median(cpus):.2f} system CPU-s/GB ({min(cpus):.2f}-{max(cpus):.2f})")


if __name__ == "__main__":
    sys.exit(run_main("python -m loadtests.pagecache", main))
