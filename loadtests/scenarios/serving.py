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
            "--repeats", str(p.repeats), "--connections", str(p.serving_connections),
            "--threads", "1", "--serve-processes", "1"])
    metrics, checks = {}, []
    for row in detail["rows"]:
        size = parse_size(row["range"])
        tag = format_size(size)
        nginx, worker = row["servers"]["nginx"], row["servers"]["worker x1"]
        metrics |= {f"worker_bytes_s_{tag}": worker["bytes_s"], f"nginx_bytes_s_{tag}": nginx["bytes_s"],
                    f"worker_req_s_{tag}": worker["req_s"], f"nginx_req_s_{tag}": nginx["req_s"],
                    f"throughput_ratio_{tag}": worker["ratio"], f"p99_ratio_{tag}": worker["p99_ratio"],
                    f"errors_{tag}": worker["errors"] + worker["non2xx"]}
        if size == 4 << 20:
            checks.append(check("worker/nginx throughput, warm 4 MiB ranges", worker["ratio"], ">=", 0.9, "x"))
        elif size == 64 << 10:
            checks.append(check("worker/nginx req/s, warm 64 KiB ranges", worker["ratio"], ">=", 0.5, "x"))
    params = {"object_size": p.serving_size, "ranges": p.serving_ranges, "connections": p.serving_connections,
              "seconds": p.seconds, "repeats": p.repeats}
    return {"title": TITLE, "params": params, "metrics": metrics, "checks": checks, "detail": detail}


def table(result: dict) -> str:
    return serve_bench.table(result["detail"])
