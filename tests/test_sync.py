"""`p2pcache sync`: a prefix copied through the cache into a directory, byte for byte, complete files skipped."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import os
import random
import signal
import sys

import pytest

from conftest import CHUNK, cli_env, wait_for
from p2pcache import Client
from p2pcache.errors import NotFound
from p2pcache.get import Progress
from p2pcache.sync import LOCK, MANIFEST, _trusted, sync


def put(s3_client, bucket: str) -> dict[str, bytes]:
    rnd = random.Random(7)
    data = {"model/config.json": b'{"layers": 2}', "model/weights/a.safetensors": rnd.randbytes(3 * CHUNK + 11),
            "model/weights/b.safetensors": rnd.randbytes(CHUNK), "model/empty": b""}
    for key, body in data.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    s3_client.put_object(Bucket=bucket, Key="modelx/not-this", Body=b"outside the prefix")
    return data


def files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, LOCK)}


async def test_sync_is_byte_identical_and_skips_complete_files(cluster_factory, s3, s3_client, bucket, tmp_path):
    cluster = await cluster_factory(3, meta_ttl=0)  # listings as S3 has them now (the default caches them)
    data = put(s3_client, bucket)
    out = tmp_path / "out"
    async with Client(cluster.master.url) as client:
        first = await sync(client, bucket, "model/", out)
        assert sorted(first["copied"]) == sorted(data) and not first["failed"]
        assert files(out) == {k.removeprefix("model/"): v for k, v in data.items()}
        before = s3.get_bytes
        second = await sync(client, bucket, "model/", out)
        assert (second["copied"], sorted(second["skipped"])) == ([], sorted(data))
        assert s3.get_bytes == before
        # A truncated file and a changed object are copied again; the others are not.
        (out / "weights/b.safetensors").write_bytes(b"short")
        s3_client.put_object(Bucket=bucket, Key="model/config.json", Body=b'{"layers": 3}')
        third = await sync(client, bucket, "model/", out)
        assert sorted(third["copied"]) == ["model/config.json", "model/weights/b.safetensors"]
    assert (out / "config.json").read_bytes() == b'{"layers": 3}'
    assert (out / "weights/b.safetensors").read_bytes() == data["model/weights/b.safetensors"]
    assert not [p for p in out.rglob("*.part")]  # temp files renamed in, none left


async def test_sync_command(cluster, s3_client, bucket, tmp_path):
    data = put(s3_client, bucket)
    env = cli_env()
    args = [sys.executable, "-m", "p2pcache", "sync", f"s3://{bucket}/model/", str(tmp_path / "d"),
            "--master", cluster.master.url]
    for expected, progress_lines in (("4 files copied", 1),
                                     ("0 files copied (0B), 4 already complete, 0 failed", 0)):
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0 and expected in out.decode(), err
        assert err.decode().count("(100%)") == progress_lines, err  # not a terminal: the last line once
    assert files(tmp_path / "d") == {k.removeprefix("model/"): v for k, v in data.items()}
    assert json.loads((tmp_path / "d" / MANIFEST).read_text())["model/empty"]["size"] == 0
    proc = await asyncio.create_subprocess_exec(*args[:4], f"s3://{bucket}/nothing/", str(tmp_path / "e"),
                                                *args[6:], env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1 and err.decode().strip() == f"p2pcache sync: no objects under s3://{bucket}/nothing/"
    proc = await asyncio.create_subprocess_exec(*args[:6], "--master", "http://127.0.0.1:9", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1 and err.decode() == ("p2pcache sync: master at http://127.0.0.1:9 unreachable: Cannot "
                                                     "connect to host 127.0.0.1:9 ssl:default [Connect call failed "
                                                     "('127.0.0.1', 9)]\n")


def test_progress_ends_once_and_empty_files_are_done():
    out, now = io.StringIO(), [0.0]
    progress = Progress(out, interval=5, clock=lambda: now[0], lines=True)  # stderr not a terminal
    progress(0, 0)
    progress(0, 0)
    assert out.getvalue() == "0B / 0B (100%) 0B/s\n"
    out, now[0] = io.StringIO(), 0.0
    progress = Progress(out, interval=5, clock=lambda: now[0], lines=True)
    now[0] = 1
    progress(10, 30)  # too soon: nothing
    now[0] = 6
    for done in (20, 30, 30):
        progress(done, 30)
    progress.finish()
    assert out.getvalue() == "20B / 30B (66%) 3B/s\n30B / 30B (100%) 5B/s\n"


async def test_a_file_that_cannot_be_written_fails_alone_and_leaves_no_temp_file(cluster, s3_client, bucket, tmp_path):
    data = put(s3_client, bucket)
    out = tmp_path / "out"
    (out / "config.json").mkdir(parents=True)  # in the way of model/config.json
    async with Client(cluster.master.url) as client:
        for _ in range(2):
            result = await sync(client, bucket, "model/", out)
            assert list(result["failed"]) == ["model/config.json"]
            assert f"Is a directory: '{out / 'config.json'}'" in result["failed"]["model/config.json"]
    assert files(out) == {k.removeprefix("model/"): v for k, v in data.items() if k != "model/config.json"}
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sync_stopped_by_a_signal_removes_its_temp_files(
        cluster_factory, fault_proxy, s3_client, bucket, tmp_path, sig):
    fault_proxy.script = ["stall"] * 100  # S3 stalls every body: the copies stay under way
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    put(s3_client, bucket)
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "sync", f"s3://{bucket}/model/", str(out), "--master", cluster.master.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await wait_for(lambda: fault_proxy.stalling and list(out.rglob(".*.part")), what="the copies to start")
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + sig and b"Traceback" not in err, err
    assert not list(out.rglob("*.part"))


async def test_a_prefix_is_a_directory_as_in_aws_s3_sync(cluster, s3_client, bucket, tmp_path):
    for key in ("ds/a.bin", "ds/a/x.bin", "ds/ab/y.bin", "ds/empty.txt"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "ds/a", tmp_path / "a")  # ds/a/, not ds/a.bin nor ds/ab/
        assert (result["copied"], files(tmp_path / "a")) == (["ds/a/x.bin"], {"x.bin": b"ds/a/x.bin"})
        result = await sync(client, bucket, "ds/a.bin", tmp_path / "key")  # a key names that object alone
        assert (result["copied"], files(tmp_path / "key")) == (["ds/a.bin"], {"a.bin": b"ds/a.bin"})
        with pytest.raises(NotFound, match=f"no objects under s3://{bucket}/ds/e"):
            await sync(client, bucket, "ds/e", tmp_path / "e")  # never `mpty.txt`


async def test_a_key_that_would_land_outside_the_directory_fails_alone(cluster, s3_client, bucket, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="m/good.bin", Body=b"good")
    s3_client.put_object(Bucket=bucket, Key="m/../../escape.bin", Body=b"evil")
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "m/", tmp_path / "out")
    assert result["copied"] == ["m/good.bin"] and list(result["failed"]) == ["m/../../escape.bin"]
    assert "cannot be a file under" in result["failed"]["m/../../escape.bin"]
    assert files(tmp_path / "out") == {"good.bin": b"good"} and not (tmp_path / "escape.bin").exists()


async def test_temp_files_of_a_killed_sync_are_removed_and_nothing_else(cluster, s3_client, bucket, tmp_path):
    data = put(s3_client, bucket)
    out = tmp_path / "out"
    (out / "weights").mkdir(parents=True)
    stale = [out / ".config.json.0123abcd.part", out / "weights" / ".a.safetensors.deadbeef.part"]
    kept = [out / ".config.json.part", out / ".other.0123abcd.part", out / ".config.json.0123ABCD.part",
            out / "weights" / ".config.json.0123abcd.part"]  # not a temp file of a file this sync writes
    for path in stale + kept:
        path.write_bytes(b"x" * 100)
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "model/", out)
    assert sorted(result["copied"]) == sorted(data)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


async def test_a_second_sync_into_a_directory_waits_for_the_first(cluster, s3_client, bucket, tmp_path, caplog):
    data = put(s3_client, bucket)
    out = tmp_path / "out"
    out.mkdir()
    other = out / ".config.json.0123abcd.part"  # the running sync's temp file: not to be touched
    other.write_bytes(b"x")
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the running sync holds it
    async with Client(cluster.master.url) as client:
        with caplog.at_level(logging.INFO, logger="p2pcache.sync"):
            second = asyncio.create_task(sync(client, bucket, "model/", out))
            await wait_for(lambda: "waiting for another p2pcache sync" in caplog.text, what="the wait")
        assert other.exists() and not (out / "config.json").exists()
        os.close(fd)  # the first sync ends
        result = await second
    assert sorted(result["copied"]) == sorted(data) and not other.exists()


CLASHING = {"coll/a//b": b"DOUBLE-SLASH", "coll/a/b": b"SINGLE", "coll/x/./y": b"DOT-Y", "coll/x/y": b"PLAIN-Y",
            "coll//lead": b"LEAD2", "coll/lead": b"LEAD1", "coll/d": b"FILE-D", "coll/d/e": b"IN-D",
            "coll/z/../z": b"DOTDOT"}
ONE_TO_ONE = {"a/b": b"SINGLE", "x/y": b"PLAIN-Y", "lead": b"LEAD1", "d/e": b"IN-D"}


async def test_keys_whose_paths_are_not_one_file_each_fail_and_are_never_recorded(cluster, s3_client, bucket, tmp_path):
    for key, body in CLASHING.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "p2pcache", "sync", f"s3://{bucket}/coll/", str(out), "--json",
            "--master", cluster.master.url]
    for run in (1, 2):  # the second run copies nothing again, and fails the same keys
        proc = await asyncio.create_subprocess_exec(*args, env=cli_env(), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        result = json.loads(stdout)
        assert proc.returncode == 1, stderr
        assert sorted(result["copied" if run == 1 else "skipped"]) == sorted(f"coll/{k}" for k in ONE_TO_ONE)
        assert sorted(result["failed"]) == sorted(set(CLASHING) - {f"coll/{k}" for k in ONE_TO_ONE})
        failed = [line for line in stderr.decode().splitlines() if line.startswith("  failed: ")]
        assert len(failed) == 5 and all("cannot be a file under" in line for line in failed), stderr
        assert "'d' is the directory of key 'coll/d/e'" in result["failed"]["coll/d"]
        assert "empty part" in result["failed"]["coll//lead"] and "'..'" in result["failed"]["coll/z/../z"]
        assert files(out) == ONE_TO_ONE
        assert sorted(json.loads((out / MANIFEST).read_text())) == sorted(f"coll/{k}" for k in ONE_TO_ONE)


async def test_a_manifest_that_records_a_refused_key_is_not_trusted(cluster, s3_client, bucket, tmp_path):
    """Earlier versions wrote `coll//lead` over `coll/lead`'s file and recorded both: copy every file again."""
    for key, body in CLASHING.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    out = tmp_path / "out"
    async with Client(cluster.master.url) as client:
        listed = {o["Key"]: o for o in (await client.list(bucket, "coll/"))[0]}
        for key in ONE_TO_ONE:
            (out / key).parent.mkdir(parents=True, exist_ok=True)
            (out / key).write_bytes(b"X" * len(ONE_TO_ONE[key]))  # another key's bytes, of the same size
        (out / MANIFEST).write_text(json.dumps({k: {"size": o["Size"], "etag": o["ETag"]} for k, o in listed.items()}))
        first = await sync(client, bucket, "coll/", out)
        second = await sync(client, bucket, "coll/", out)
    assert sorted(first["copied"]) == sorted(second["skipped"]) == sorted(f"coll/{k}" for k in ONE_TO_ONE)
    assert files(out) == ONE_TO_ONE
    assert sorted(json.loads((out / MANIFEST).read_text())) == sorted(f"coll/{k}" for k in ONE_TO_ONE)


async def test_a_file_where_a_keys_directory_goes_fails_that_key_alone(cluster, s3_client, bucket, tmp_path):
    keys = {"p/d/x": b"IN-D", "p/e": b"E", **{f"p/f{i}": b"F%d" % i for i in range(3)}}
    for key, body in keys.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    out = tmp_path / "out"
    out.mkdir()
    (out / "d").write_bytes(b"a file, not the directory of p/d/x")
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "p/", out)
    assert list(result["failed"]) == ["p/d/x"] and str(out / "d") in result["failed"]["p/d/x"]
    assert sorted(result["copied"]) == sorted(set(keys) - {"p/d/x"})
    assert files(out) == {"d": b"a file, not the directory of p/d/x"} | {
        k.removeprefix("p/"): v for k, v in keys.items() if k != "p/d/x"}


async def test_a_key_whose_name_is_nearly_too_long_is_copied_and_its_stale_temp_file_removed(
        cluster, s3_client, bucket, tmp_path):
    long = "n" * 250 + ".bin"  # 254 bytes: a file name, but `.NAME.<8 hex>.part` would be 268
    s3_client.put_object(Bucket=bucket, Key=f"m/{long}", Body=b"long")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".{'n' * 240}.0123abcd.part"  # a killed sync's temp file of it
    stale.write_bytes(b"x")
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "m/", out)
    assert (result["copied"], result["failed"]) == ([f"m/{long}"], {})
    assert files(out) == {long: b"long"} and not stale.exists()


async def test_a_key_ending_in_a_slash_with_bytes_fails_alone_and_an_empty_one_is_a_directory_marker(
        cluster, s3_client, bucket, tmp_path):
    for key, body in {"p/a.bin": b"A", "p/t/": b"T" * 777, "p/u/": b"", "p/u/x": b"X"}.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    async with Client(cluster.master.url) as client:
        result = await sync(client, bucket, "p/", tmp_path / "out")
    assert sorted(result["copied"]) == ["p/a.bin", "p/u/x"] and list(result["failed"]) == ["p/t/"]
    assert "cannot be a file under" in result["failed"]["p/t/"] and "empty part" in result["failed"]["p/t/"]
    assert files(tmp_path / "out") == {"a.bin": b"A", "u/x": b"X"}


async def test_a_key_under_a_synced_key_fails_with_it_and_the_other_files_are_still_skipped(
        cluster_factory, s3_client, bucket, tmp_path, caplog):
    cluster = await cluster_factory(2, meta_ttl=0)  # listings as S3 has them now
    keys = {"p/d": b"D", "p/e": b"E", "p/f": b"F"}
    for key, body in keys.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    out = tmp_path / "out"
    async with Client(cluster.master.url) as client:
        assert sorted((await sync(client, bucket, "p/", out))["copied"]) == sorted(keys)
        s3_client.put_object(Bucket=bucket, Key="p/d/x", Body=b"IN-D")  # `d` is its directory now
        with caplog.at_level(logging.WARNING, logger="p2pcache.sync"):
            for _ in range(2):
                result = await sync(client, bucket, "p/", out)
                assert (result["copied"], sorted(result["skipped"])) == ([], ["p/e", "p/f"])
                assert sorted(result["failed"]) == ["p/d", "p/d/x"]
                assert "'d' is the directory of key 'p/d/x'" in result["failed"]["p/d"]
    assert "copying every file again" not in caplog.text
    assert sorted(json.loads((out / MANIFEST).read_text())) == ["p/e", "p/f"]


def test_only_a_manifest_recording_a_key_refused_for_its_own_path_is_distrusted():
    manifest = {"p/d": {"size": 1}, "p/e": {"size": 2}, "p//e": {"size": 2}}
    assert _trusted(manifest, {"p/d", "p//e"}, {"p//e"}) == ({}, False)  # `p//e` was copied onto `p/e`
    del manifest["p//e"]
    assert _trusted(manifest, {"p/d", "p/d/"}, {"p/d/"}) == ({"p/e": {"size": 2}}, True)  # `p/d` had its own file


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_sync_stopped_by_a_signal_records_the_files_that_landed(
        cluster_factory, fault_proxy, s3_client, bucket, tmp_path, sig):
    # Every S3 body of the last file stalls: it is under way, the two before it landed.
    fault_proxy.by_request = lambda method, target: "stall" if method == "GET" and "/m/c.bin" in target else None
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    keys = {"m/a.bin": b"A" * 100, "m/b.bin": b"B" * 100, "m/c.bin": random.Random(3).randbytes(CHUNK)}
    for key, body in keys.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "p2pcache", "sync", f"s3://{bucket}/m/", str(out), "--files", "1", "--json",
            "--master", cluster.master.url]
    proc = await asyncio.create_subprocess_exec(*args, env=cli_env(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    # One file at a time, in order: c's copy starts once a and b are recorded.
    await wait_for(lambda: fault_proxy.stalling, what="the copy of m/c.bin to start")
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + sig and b"Traceback" not in err, err
    assert sorted(json.loads((out / MANIFEST).read_text())) == ["m/a.bin", "m/b.bin"]
    assert not (out / "c.bin").exists() and not list(out.rglob("*.part"))
    fresh = await cluster_factory(1)  # reading S3 directly: the first cluster's fill of m/c.bin waits on S3 still
    proc = await asyncio.create_subprocess_exec(*args[:-1], fresh.master.url, env=cli_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, err = await asyncio.wait_for(proc.communicate(), 120)
    result = json.loads(stdout)
    assert proc.returncode == 0, err
    assert (result["copied"], sorted(result["skipped"])) == (["m/c.bin"], ["m/a.bin", "m/b.bin"])
    assert files(out) == {k.removeprefix("m/"): v for k, v in keys.items()}
