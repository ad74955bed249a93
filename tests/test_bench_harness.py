"""The benchmark harness says why a run failed: a process that did not start, a reference that failed its requests."""

from __future__ import annotations

import pytest

from loadtests import serve_bench
from loadtests.harness import RunFailed, cluster
from p2pcache.local import NotReady


def test_a_worker_that_does_not_start_is_reported_with_its_own_reason():
    with pytest.raises(NotReady) as exc:
        with cluster(1, worker_args=("--serve-processes", "0")):
            pass
    assert str(exc.value) == ("worker did not become ready (exit code 2): "
                              "p2pcache worker: --serve-processes must be auto or from 1 to 256, not '0'")


def _wrk(req_s: float, errors: int = 0) -> dict:
    return {"req_s": req_s, "bytes_s": req_s * 65536, "p50_ms": 1.0, "p99_ms": 2.0, "errors": errors, "non2xx": 0,
            "requests": int(req_s), "cpu_us": 50.0}


def test_ratios_are_to_nginx_medians():
    row = serve_bench.row(65536, 8, {"nginx": [_wrk(1000), _wrk(3000), _wrk(2000)],
                                     "worker x1": [_wrk(500), _wrk(1500), _wrk(1000)]})
    assert row["range"] == "64KiB" and row["connections"] == 8
    assert row["servers"]["nginx"]["ratio"] == 1 and row["servers"]["worker x1"]["ratio"] == 0.5


def test_no_ratio_when_nginx_the_reference_failed_requests():
    # One run of three with errors: its median is 0 errors, but its req/s counted failures.
    with pytest.raises(RunFailed, match=r"nginx, the reference, failed 7 of 6,000 requests \(64KiB ranges, c=8\)"):
        serve_bench.row(65536, 8, {"nginx": [_wrk(1000), _wrk(3000, errors=7), _wrk(2000)],
                                   "worker x1": [_wrk(500), _wrk(1500), _wrk(1000)]})
