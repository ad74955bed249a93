"""A smoke run of loadtests/client_bench.py: every contender measured something, the table says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_client_bench_runs_every_contender(tmp_path):
    out = tmp_path / "client.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.client_bench", "--size", "24MiB", "--repeats", "1",
         "--workers", "2", "--chunk-size", "4MiB", "--json", str(out)],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"curl nginx -> memory", "curl nginx -> tmpfs"} | {
        f"client {mode} {what}" for mode in ("raw", "aiohttp")
        for what in ("read_into -> memory", "read -> memory", "download -> tmpfs")}
    assert all(r["median"] > 0 and len(r["runs"]) == 1 for r in rows.values())
    assert "| client raw read_into -> memory |" in proc.stdout and "vs curl from nginx" in proc.stdout
