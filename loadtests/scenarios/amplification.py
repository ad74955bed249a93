"""Scenario 4: origin amplification, bytes read from S3 (counted at the S3 server) per distinct byte requested."""

from __future__ import annotations

import random
import statistics
from types import SimpleNamespace

from ..datasets import dataset_files, seed
from ..harness import cluster, s3_client
from ..plans import distinct_bytes, random_tiling
from ..readers import run_reader
from ..targets import check

__all__ = ["run", "table"]

TITLE = "origin amplification under concurrent cold readers on all workers"


def run(p: SimpleNamespace) -> dict:
    """Each repeat reads new (cold) objects: `amp_readers` readers each cover the whole dataset in
    ranges of random unaligned lengths (64 KiB to 2 chunks), all their ranges shuffled together
    and dealt over every worker, `amp_concurrency` at a time."""
    runs = []
    with cluster(p.amp_workers, chunk_size=str(p.chunk_size)) as c:
        client = s3_client(c.s3.url)
        for r in range(p.repeats):
            files = dataset_files("origin", f"run-{r}", p.amp_objects, p.amp_object_size)
            seed(client, files)
            rng = random.Random(r)
            parts = [part for _ in range(p.amp_readers)
                     for part in random_tiling(files, 64 << 10, 2 * p.chunk_size, rng)]
            rng.shuffle(parts)
            bytes_before, gets_before = c.s3.get_bytes, c.s3.get_requests
            read = run_reader({"mode": "cluster", "urls": c.workers, "routing": "spread", "files": files,
                               "parts": parts, "concurrency": p.amp_concurrency, "timeout": p.timeout})
            chunks = sum(-(-f.size // p.chunk_size) for f in files)
            distinct = distinct_bytes(parts)
            s3_bytes = c.s3.get_bytes - bytes_before
            runs.append({"s3_bytes": s3_bytes, "distinct_bytes": distinct, "amplification": s3_bytes / distinct,
                         "s3_gets": c.s3.get_requests - gets_before, "chunks": chunks,
                         "bytes_served": read["bytes"], "seconds": read["seconds"]})
    worst = max(runs, key=lambda x: abs(x["amplification"] - 1))
    m = {"amplification": worst["amplification"], "s3_bytes": worst["s3_bytes"],
         "distinct_bytes": worst["distinct_bytes"], "s3_gets": worst["s3_gets"], "chunks": worst["chunks"],
         "bytes_served": worst["bytes_served"],
         "requested_per_distinct_byte": worst["bytes_served"] / worst["distinct_bytes"],
         "seconds": statistics.median(x["seconds"] for x in runs)}
    checks = [check("origin amplification (S3 bytes / distinct bytes requested)", m["amplification"], "==", 1.0,
                    note="the run furthest from 1 of all repeats")]
    params = {"workers": p.amp_workers, "objects": p.amp_objects, "object_size": p.amp_object_size,
              "chunk_size": p.chunk_size, "readers": p.amp_readers, "concurrency": p.amp_concurrency,
              "repeats": p.repeats, "routing": "spread"}
    return {"title": TITLE, "params": params, "metrics": m, "checks": checks, "runs": runs}


def table(result: dict) -> str:
    p = result["params"]
    lines = [f"{TITLE}: {p['workers']} workers, {p['readers']} readers x {p['objects']} objects of "
             f"{p['object_size']:,} B, {p['concurrency']} concurrent ranges",
             "| run | requested by clients | distinct | from S3 | S3 GETs / chunks | amplification | seconds |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, r in enumerate(result["runs"]):
        lines.append(f"| {n + 1} | {r['bytes_served']:,} | {r['distinct_bytes']:,} | {r['s3_bytes']:,} | "
                     f"{r['s3_gets']} / {r['chunks']} | {r['amplification']:.4f} | {r['seconds']:.2f} |")
    return "\n".join(lines)
