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
SCENARIOS = {"serving", "scaling", "cold-start", "amplification", "memory", "simulation"}


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


def test_scaling_reads_whole_models_from_the_owners_and_plots_the_curve(smoke):
    report, out, _ = smoke
    result = report["scenarios"]["scaling"]
    params, points = result["params"], result["points"]
    assert [p["workers"] for p in points] == [1, 2]
    for p in points:
        assert p["bytes_s"] > 0 and p["efficiency"] > 0
        assert sum(p["owned_bytes"]) == params["objects"] * params["object_size"]
        # Owner-routed: each worker sent exactly its own chunks, once per loader, and nothing else.
        assert sorted(p["per_worker_bytes"]) == sorted(params["loaders"] * b for b in p["owned_bytes"])
        assert p["busiest_share"] >= 1 and p["placement_ceiling"] == pytest.approx(1 / p["busiest_share"])
        # Egress-capped: the aggregate cannot be far above the sum of the caps (burst aside).
        assert p["bytes_s"] < 2 * p["workers"] * params["egress_limit"]
    assert points[0]["efficiency"] == pytest.approx(1.0)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulation_reports_every_size_within_the_placement_bounds(smoke):
    result = smoke[0]["scenarios"]["simulation"]
    _check_simulation(result, workers=[4, 16], models=["2 x 4MiB", "6 x 4MiB"])
    assert "| 16 | 6 x 4MiB | 96 |" in smoke[2]


def test_simulate_command_prints_the_tables_and_writes_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.simulate", "--workers", "3,5", "--models", "2", "--shard-size", "1MiB",
         "--chunk-size", "64KiB", "--trials", "2", "--repeats", "2", "--heartbeat-workers", "10",
         "--heartbeat-seconds", "1", "--heartbeat-connections", "4", "--json", str(tmp_path / "sim.json")],
        cwd=LOCUSTFILE.parent.parent, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((tmp_path / "sim.json").read_text())
    _check_simulation(result, workers=[3, 5], models=["2 x 1MiB"])
    for row in ("| 3 | 2 x 1MiB | 32 | 10.7 |", "| 5 | 2 x 1MiB | 32 | 6.4 |", "| 10 | "):
        assert row in proc.stdout, row


def _check_simulation(result: dict, workers: list[int], models: list[str]) -> None:
    rows = result["placement"]
    assert [(r["workers"], r["model"]) for r in rows] == [(n, m) for n in workers for m in models]
    for r in rows:
        assert r["object_max_over_mean"] <= r["object_bound"] + 1e-9  # ceil(1.05 x share), per object
        assert 1 <= r["model_ideal"] <= r["model_max_over_mean"] <= r["object_bound"] + 1e-9
        assert r["join_moved_over_ideal_max"] >= r["join_moved_over_ideal_median"] > 0
        assert r["leave_moved_over_owned_max"] >= r["leave_moved_over_owned_median"] >= 1  # what it owned moves
        assert 0 <= r["join_cascade_max"] < 1
    assert [c["workers"] for c in result["costs"]] == workers
    for c in result["costs"]:
        assert c["ring_build_ms"] > 0 and c["first_lookup_us"] > c["cached_lookup_us"] > 0
    hb = result["heartbeats"]
    assert hb["heartbeats"] > hb["workers"] and hb["errors"] == 0 and hb["heartbeats_s"] > 0
    assert hb["per_master_cpu_second"] > 0
    assert 0 < hb["master_cpu"] < 1.5  # one process, one thread: a core at most (tick rounding aside)


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


def test_memory_reports_the_peak_rss_of_every_worker_process(smoke):
    result = smoke[0]["scenarios"]["memory"]
    m, p = result["metrics"], result["params"]
    assert 10 < m["idle_peak_rss_mib"] <= m["peak_rss_mib"] < 4096
    assert [r["serve_processes"] for r in result["runs"]] == p["serve_processes"] == [1, 2]
    for r in result["runs"]:
        processes = 1 + (r["serve_processes"] if r["serve_processes"] > 1 else 0)  # a coordinator, then them
        assert [x["pass"] for x in r["passes"]] == ["cold", "warm"]
        assert all(x["bytes"] > 0 and len(x["processes"]) == len(r["idle"]) == processes
                   and len(x["other_workers"]) == p["workers"] - 1 for x in r["passes"])
    assert m["peak_rss"] == max(max(x["processes"]) for r in result["runs"] for x in r["passes"])


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
