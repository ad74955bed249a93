"""The benchmarks refuse a flag outside its range up front, naming it (exit 2), instead of a
traceback or a run that measures nothing."""

from __future__ import annotations

import argparse

import pytest

from loadtests import bench, client_bench, drain_bench, fill_profile, nonowner_bench, pagecache, serve_bench, \
    sigv4_bench, simulate

TOO_BIG = "must be from 1B to 5GiB, not 6GiB"


@pytest.mark.parametrize(("argv", "why"), [
    (["--serving-size", "abc"], "argument --serving-size: invalid size 'abc'"),
    (["--s3-throttle", "abc"], "argument --s3-throttle: invalid size 'abc'"),
    (["--egress-limit", "abc"], "argument --egress-limit: invalid size 'abc'"),
    (["--serving-size", "6GiB"], f"argument --serving-size: {TOO_BIG}"),
    (["--chunk-size", "1KiB"], "argument --chunk-size: must be from 64KiB to 1GiB, not 1KiB"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (["--scaling-workers", "1,0"], "argument --scaling-workers: must be from 1 to 100, not 0"),
    (["--serving-ranges", "0"], "argument --serving-ranges: must be from 1B to 5GiB, not 0B"),
    (["--seconds", "-1"], "argument --seconds: must be at least 1, not -1"),
    (["--sim-workers", "1"], "argument --sim-workers: must be at least 2, not 1"),
    (["--routing", "nearest"], "argument --routing: invalid choice: 'nearest'"),
    (["--json", "/nonexistent/dir/x.json"], "argument --json: no directory /nonexistent/dir to write x.json in"),
])
def test_bench_refuses_a_flag_before_it_runs(argv, why, capsys):
    parser = argparse.ArgumentParser(prog="p2pcache bench")
    bench.add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--smoke", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"p2pcache bench: error: {why}")


def test_bench_refuses_a_serving_range_larger_than_the_object(capsys):
    parser = argparse.ArgumentParser(prog="p2pcache bench")
    bench.add_arguments(parser)
    args = parser.parse_args(["--smoke", "--scenarios", "serving", "--serving-size", "16MiB",
                              "--serving-ranges", "64KiB,32MiB"])
    assert bench.main(args) == 2
    assert capsys.readouterr().err == "p2pcache bench: --serving-ranges 32MiB is larger than --serving-size 16MiB\n"


@pytest.mark.parametrize(("main", "argv", "why"), [
    (serve_bench.main, ["--size", "16MiB", "--ranges", "32MiB"], "--ranges 32MiB is larger than --size 16MiB"),
    (serve_bench.main, ["--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (serve_bench.main, ["--seconds", "-1"], "argument --seconds: must be at least 1, not -1"),
    (serve_bench.main, ["--connections", "1", "--threads", "2"],
     "--connections must each be at least --threads 2, not 1"),
    (client_bench.main, ["--size", "0"], "argument --size: must be from 1B to 5GiB, not 0B"),
    (client_bench.main, ["--modes", "raw,fast"], "argument --modes: 'fast' is not one of raw, aiohttp, default"),
    (client_bench.main, ["--json", "/nonexistent/dir/x.json"], "argument --json: no directory /nonexistent/dir"),
    (drain_bench.main, ["--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (drain_bench.main, ["--workers", "1"], "argument --workers: must be from 2 to 100, not 1"),
    (sigv4_bench.main, ["--size", "1MiB", "--range", "2MiB"], "--range 2MiB is larger than --size 1MiB"),
    (sigv4_bench.main, ["--connections", "1"], "argument --connections: must be at least 2, not 1"),
    (nonowner_bench.main, ["--serve-processes", "1,0"], "argument --serve-processes: must be from 1 to 256, not 0"),
    (fill_profile.main, ["--size", "abc"], "argument --size: invalid size 'abc'"),
    (pagecache.main, ["--size", "0"], "argument --size: must be from 8MiB to 1TiB, not 0B"),
    (simulate.main, ["--workers", "1"], "argument --workers: must be at least 2, not 1"),
])
def test_each_benchmark_refuses_a_flag_before_it_runs(main, argv, why, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert why in capsys.readouterr().err.splitlines()[-1]
