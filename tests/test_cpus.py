"""The CPUs a worker may use: affinity, capped by a cgroup v2 quota."""

from __future__ import annotations

import os

import pytest

from worker.cpus import available_cpus, quota_cpus


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1),
    ("", None), (None, None), ("garbage", None), ("0 100000", None), ("x 100000", None),
])
def test_quota_cpus(text, cpus):
    assert quota_cpus(text) == cpus


def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no cpu.max: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 3) * 100000} 100000\n")
    assert available_cpus(tmp_path) == affinity
