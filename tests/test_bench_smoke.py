"""Smoke runs of every benchmark scenario (`p2pcache bench --smoke`) and of the locustfile: they run and their numbers are sane.

Speed targets are reported by the benchmarks as PASS/MISS, never asserted here; what is asserted
is that each scenario measured something, and the invariants that do not depend on speed (bytes
fetched from S3, counted at the S3 server).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
SCENARIOS = {"serving", "scaling", "cold-start", "amplification", "memory"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path, str]:
    """One `p2pcache bench --smoke` of every scenario, run from outside the checkout."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "p2pcache", "--log-level", "WARNING", "bench", "--smoke",
         "--json", str(out / "bench.json"), "--plot", str(out / "scaling.png")],
        cwd=out, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "bench.json").read_text()), out, proc.stdout


def test_every_scenario_ran_and_states_its_targets(smoke):
    report, _, stdout = smoke
    assert set(report["scenarios"]) == SCENARIOS
    assert report["smoke"] is True and report["machine"]["cpus"] >= 1
    for name, result in report["scenarios"].items():
        assert "error" not in result, (name, result.get("error"))
        assert result["checks"], name
        for c in result["checks"]:
            assert c["status"] in ("PASS", "MISS", "n/a"), c
            assert isinstance(c["margin"], float) and isinstance(c["value"], float), c
            assert f"{c['status']:4}  {c['name']}" in stdout  # the verdict is printed, not only stored


def test_serving_compares_one_worker_with_nginx(smoke):
    m = smoke[0]["scenarios"]["serving"]["metrics"]
    for tag in ("4MiB", "64KiB"):
        assert m[f"worker_bytes_s_{tag}"] > 0 and m[f"nginx_bytes_s_{tag}"] > 0
        assert m[f"throughput_ratio_{tag}"] > 0 and m[f"p99_ratio_{tag}"] > 0
        assert m[f"errors_{tag}"] == 0
    names = [c["name"] for c in smoke[0]["scenarios"]["serving"]["checks"]]
    assert names == ["worker/nginx throughput, warm 4 MiB ranges", "worker/nginx req/s, warm 64 KiB ranges"]


def test_scaling_measures_every_cluster_size_and_plots_the_curve(smoke):
    report, out, _ = smoke
    result = report["scenarios"]["scaling"]
    points = result["points"]
    assert [p["workers"] for p in points] == [1, 2]
    for p in points:
        assert p["bytes_s"] > 0 and p["efficiency"] > 0 and p["errors"] + p["non2xx"] == 0
        assert len(p["per_server_bytes_s"]) == p["owning_workers"] == p["workers"]
        # Egress-capped: the aggregate cannot be far above the sum of the caps (burst aside).
        assert p["bytes_s"] < 2 * p["workers"] * result["params"]["egress_limit"]
    assert points[0]["efficiency"] == pytest.approx(1.0)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cold_start_reads_the_model_from_s3_once(smoke):
    m = smoke[0]["scenarios"]["cold-start"]["metrics"]
    assert m["direct_s"] > 0 and m["cold_s"] > 0 and m["warm_s"] > 0
    assert m["cold_s3_bytes"] == m["total_bytes"]  # every byte fetched once, by its owner
    assert m["warm_s3_bytes"] == 0
    assert smoke[0]["scenarios"]["cold-start"]["params"]["s3_throttle"] > 0


def test_origin_amplification_is_exactly_one(smoke):
    result = smoke[0]["scenarios"]["amplification"]
    m = result["metrics"]
    assert m["amplification"] == 1.0
    assert m["s3_bytes"] == m["distinct_bytes"] > 0
    assert m["s3_gets"] == m["chunks"]
    assert m["bytes_served"] == result["params"]["readers"] * m["distinct_bytes"]


def test_memory_reports_the_workers_peak_rss(smoke):
    result = smoke[0]["scenarios"]["memory"]
    m = result["metrics"]
    assert 10 < m["idle_peak_rss_mib"] <= m["peak_rss_mib"] < 4096
    assert [p["pass"] for p in result["passes"]] == ["cold", "warm"]
    assert all(p["bytes"] > 0 and len(p["peak_rss"]) == result["params"]["workers"] for p in result["passes"])


async def test_locustfile_reports_bandwidth(cluster_factory, s3_client, bucket, tmp_path):
    c = await cluster_factory(2)
    s3_client.put_object(Bucket=bucket, Key="model/a.safetensors", Body=os.urandom(3 << 20))
    s3_client.put_object(Bucket=bucket, Key="model/b.safetensors", Body=os.urandom(1 << 20))
    proc = await asyncio.create_subprocess_exec(  # async: the workers serve from this event loop
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4", "-t", "2s",
        "--host", c.workers[0].url, "--endpoints", ",".join(w.url for w in c.workers), "--only-summary",
        "--objects", f"{bucket}/model/a.safetensors,{bucket}/model/b.safetensors:{1 << 20}",
        "--large-size", "512KiB", "--small-size", "16KiB", "--csv", str(tmp_path / "run"),
        "--bandwidth-json", str(tmp_path / "bandwidth.json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    stdout = out.decode()
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{err.decode()[-3000:]}"
    s = json.loads((tmp_path / "bandwidth.json").read_text())
    assert s["requests"] > 0 and s["failures"] == 0 and s["bytes"] > 0 and s["MB_per_s"] > 0
    assert s["bytes"] >= s["requests"] * (16 << 10)  # every read got its full length (checked per response too)
    assert "p2pcache bandwidth:" in stdout
    with open(tmp_path / "run_bandwidth.csv") as f:
        assert int(next(csv.DictReader(f))["bytes"]) == s["bytes"]
