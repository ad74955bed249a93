"""The benchmark harness says why a run failed: a process that did not start."""

from __future__ import annotations

import pytest

from loadtests.harness import cluster
from p2pcache.local import NotReady


def test_a_worker_that_does_not_start_is_reported_with_its_own_reason():
    with pytest.raises(NotReady) as exc:
        with cluster(1, worker_args=("--serve-processes", "0")):
            pass
    assert str(exc.value) == ("worker did not become ready (exit code 2): "
                              "p2pcache worker: --serve-processes must be auto or from 1 to 256, not '0'")

