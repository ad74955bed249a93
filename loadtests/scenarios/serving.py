"""Scenario 1: warm range reads from one worker vs nginx, measured by loadtests/serve_bench.py."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

from p2pcache.sizes import format_size, parse_size

from .. import serve_bench
from ..targets import check

__all__ = ["run", "table"]

TITLE = "single worker vs nginx, warm ranges"


def run(p: SimpleNamespace) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):  # its table is printed by `table`, once
        detail = serve_bench.main([
            "--size", str(p.serving_size), "--ranges", p.serving_ranges, "--seconds", str(p.seconds),
            "--repeats", str(p.repeats), "--connections", str(p.serving_connections)])
    metrics, checks = {}, []
    for row in detail["rows"]:
        size = parse_size(row["range"])
        tag = format_size(size)
        metrics |= {f"worker_bytes_s_{tag}": row["worker"]["bytes_s"], f"nginx_bytes_s_{tag}": row["nginx"]["bytes_s"],
                    f"worker_req_s_{tag}": row["worker"]["req_s"], f"nginx_req_s_{tag}": row["nginx"]["req_s"],
                    f"throughput_ratio_{tag}": row["throughput_ratio"], f"p99_ratio_{tag}": row["p99_ratio"],
                    f"errors_{tag}": row["worker"]["errors"] + row["worker"]["non2xx"]}
        if size == 4 << 20:
            checks.append(check("worker/nginx throughput, warm 4 MiB ranges", row["throughput_ratio"], ">=", 0.9, "x"))
        elif size == 64 << 10:
            ratio = row["worker"]["req_s"] / row["nginx"]["req_s"]
            checks.append(check("worker/nginx req/s, warm 64 KiB ranges", ratio, ">=", 0.5, "x"))
    params = {"object_size": p.serving_size, "ranges": p.serving_ranges, "connections": p.serving_connections,
              "seconds": p.seconds, "repeats": p.repeats}
    return {"title": TITLE, "params": params, "metrics": metrics, "checks": checks, "detail": detail}


def table(result: dict) -> str:
    return serve_bench.table(result["detail"])
