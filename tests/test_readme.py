"""The README's test command is the one CI runs, and its flag table matches the CLI."""

from __future__ import annotations

import re
from pathlib import Path

from p2pcache.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [l for l in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in l and not l.startswith("#")]
    assert len(ci_lines) == 1
    assert f"\n{ci_lines[0]}\n" in (ROOT / "README.md").read_text()


def test_every_service_flag_is_in_the_configuration_table():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `(--[a-z0-9-]+)`", readme, re.M))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {opt for name in ("master", "worker") for action in sub.choices[name]._actions
             for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    assert flags == table
