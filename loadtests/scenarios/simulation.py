"""Scenario 6: the scale simulation (loadtests/simulate.py), placement for 8-1,000 workers and the heartbeats one master answers."""

from __future__ import annotations

from ..simulate import TITLE, run, table

__all__ = ["TITLE", "run", "table"]
