"""Flags and their `P2PCACHE_*` variables: the command line wins; bad values stop the parse (exit 2)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from p2pcache.cli import build_parser, command_named

COMMANDS = ("get", "sync", "preload", "status", "unpin")


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_the_log_level_comes_from_the_flag_or_the_environment_and_is_checked(monkeypatch):
    assert parse("status", "--master", "http://m").log_level == "INFO"
    monkeypatch.setenv("P2PCACHE_LOG_LEVEL", "warning")
    assert parse("status", "--master", "http://m").log_level == "WARNING"
    assert parse("--log-level", "debug", "status", "--master", "http://m").log_level == "DEBUG"
    for argv in (["--log-level", "NOPE"], []):
        monkeypatch.setenv("P2PCACHE_LOG_LEVEL", "NOPE")
        with pytest.raises(SystemExit) as stop:
            parse(*argv, "status", "--master", "http://m")
        assert stop.value.code == 2


@pytest.mark.parametrize("command", ["master", "status"])
def test_a_secret_flag_beats_the_other_ones_variable_and_two_alike_conflict(monkeypatch, command):
    extra = ["--master", "http://m"] if command == "status" else []
    monkeypatch.setenv("P2PCACHE_CLUSTER_SECRET", "from-the-environment")
    args = parse(command, *extra, "--cluster-secret-file", "f")
    assert (args.cluster_secret, args.cluster_secret_file) == (None, "f")
    args = parse(command, *extra, "--cluster-secret-file", "f", "--cluster-secret", "s")  # both given: both kept
    assert (args.cluster_secret, args.cluster_secret_file) == ("s", "f")
    monkeypatch.setenv("P2PCACHE_CLUSTER_SECRET_FILE", "g")
    args = parse(command, *extra)  # both from the environment: both kept, and load_secret refuses them
    assert (args.cluster_secret, args.cluster_secret_file) == ("from-the-environment", "g")
    args = parse(command, *extra, "--cluster-secret", "s")
    assert (args.cluster_secret, args.cluster_secret_file) == ("s", None)


def test_the_readme_names_the_command_flags_that_have_no_variable():
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    sentence = readme.split("What one run of a command does has no variable:")[1].split("Sizes")[0]
    named = set(re.findall(r"`(-[a-z-]+)`", sentence))
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    plain = {a.option_strings[0] for name in COMMANDS for a in sub.choices[name]._actions
             if a.option_strings and "[env P2PCACHE_" not in (a.help or "") and a.option_strings[0] != "-h"}
    assert named == plain



@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_a_master_url_by_the_workers_rule(command, capsys):
    url = [] if command in ("status", "preload") else ["s3://b/k"] + (["d"] if command == "sync" else [])
    assert parse(command, *url, "--master", "http://m:7070/").master == "http://m:7070"  # a trailing / is no path
    for master, why in (("http://m:7070/ring", "must not have a path, query or fragment"),
                        ("http://m:7070?x", "must not have a path, query or fragment"),
                        ("m:7070", "must be http:// or https://"),
                        ("http://u@m:7070", "must name a host (and a port from 1 to 65535), no user")):
        with pytest.raises(SystemExit) as stop:
            parse(command, *url, "--master", master)
        assert stop.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"p2pcache {command}: error: argument --master: url " \
                                                          f"{master!r} {why}"



@pytest.mark.parametrize(("argv", "why"), [
    (["get", "s3://b/k", "--concurrency", "0"], "--concurrency: must be a whole number of at least 1, not '0'"),
    (["get", "s3://b/k", "--concurrency", "1.5"], "--concurrency: must be a whole number of at least 1, not '1.5'"),
    (["sync", "s3://b/p/", "d", "--files", "-3"], "--files: must be a whole number of at least 1, not '-3'"),
    (["preload", "s3://b/p/", "--interval", "nan"], "--interval: must be a number of at least 0, not 'nan'"),
    (["preload", "s3://b/p/", "--wait-ready", "inf"], "--wait-ready: must be a number of at least 0, not 'inf'"),
    (["get", "s3://b/k", "--range", "5-2"],
     "--range: range '5-2' selects no byte: use A-B with A <= B, or -N with N > 0"),
    (["get", "s3://b/k", "--range", "10-" + "9" * 5000], None),  # digits of any length, compared, not converted
])
def test_numbers_out_of_their_range_stop_the_parse(argv, why, capsys):
    command = argv[0]
    if why is None:
        assert parse(*argv, "--master", "http://m").byte_range
        return
    with pytest.raises(SystemExit) as stop:
        parse(*argv, "--master", "http://m")
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"p2pcache {command}: error: argument {why}"


def test_a_number_from_the_environment_is_checked_too(monkeypatch, capsys):
    monkeypatch.setenv("P2PCACHE_CONCURRENCY", "0")
    with pytest.raises(SystemExit):
        parse("sync", "s3://b/p/", "d", "--master", "http://m")
    assert capsys.readouterr().err.endswith("argument --concurrency: must be a whole number of at least 1, not '0'\n")
    assert parse("sync", "s3://b/p/", "d", "--master", "http://m", "--concurrency", "3").concurrency == 3


def test_a_command_line_imports_only_the_command_it_runs():
    assert [command_named(a) for a in (["get", "s3://b/k"], ["--log-level", "DEBUG", "sync"], ["--log-level=INFO", "x"],
                                       ["-h"], ["--log", "DEBUG", "get"], [])] == ["get", "sync", "x", None, None, None]
    probe = ("import sys; from p2pcache.cli import main\n"
             "try: main(['status', '--master', 'notaurl'])\n"
             "except SystemExit as stop: print(stop.code, 'worker.server' in sys.modules, 'master.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
    sub = next(a for a in build_parser("get")._actions if a.dest == "command")
    assert len(sub.choices) == len(build_parser()._actions[-1].choices)  # every command is listed, one is built


def test_a_variables_value_outside_a_flags_choices_is_refused_as_the_flags_would_be(monkeypatch, capsys):
    monkeypatch.setenv("P2PCACHE_EVICTION", "slru")
    worker = ["worker", "--master", "http://m", "--cache-dir", "d"]
    assert parse(*worker).eviction == "slru"
    monkeypatch.setenv("P2PCACHE_EVICTION", "mru")
    assert parse(*worker, "--eviction", "lru").eviction == "lru"  # the command line wins
    with pytest.raises(SystemExit) as stop:
        parse(*worker)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "p2pcache worker: error: argument --eviction: invalid choice: " \
                                                       "'mru' from P2PCACHE_EVICTION (choose from 'lru', 's3fifo', 'slru')"
