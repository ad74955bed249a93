"""`p2pcache preload`, `unpin` and `status` as a user runs them, against a real cluster."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys

import aiohttp
from aiohttp import web
import pytest

from conftest import CHUNK, SECRET, cli_env, wait_for
from master.config import MasterConfig
from master.server import Master
from p2pcache.admin_client import AdminClient
from p2pcache.preload_cli import Follower, summary
from p2pcache.sizes import format_size

JOB = {"id": "abc", "state": "running", "urls": ["s3://b/m/"], "pin": False, "objects_total": 4,
       "objects_done": 1, "chunks_total": 8, "chunks_done": 2, "chunks_failed": 0, "bytes_total": 8 << 20,
       "bytes_done": 2 << 20, "bytes_from_s3": 2 << 20, "rate": 1 << 20, "elapsed": 2.0, "created": 0,
       "failures": []}


async def run(*args: str, secret: bytes | None = SECRET) -> tuple[int, str, str]:
    env = cli_env()
    if secret:
        env["P2PCACHE_CLUSTER_SECRET"] = secret.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def test_a_terminal_gets_a_bar_redrawn_in_place():
    out = io.StringIO()
    follow = Follower(out, tty=True)
    follow(JOB)
    follow(JOB | {"bytes_done": 8 << 20, "state": "done", "objects_done": 4})
    follow.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[######..................]  25% 2MiB/8MiB 1MiB/s ETA 6s objects 1/4 failed 0" in text
    assert "[########################] 100% 8MiB/8MiB" in text


def test_plain_lines_at_most_every_interval():
    out, now = io.StringIO(), [0.0]
    follow = Follower(out, tty=False, interval=5, clock=lambda: now[0])
    follow(JOB)
    now[0] = 1
    follow(JOB)  # too soon: nothing
    now[0] = 6
    follow(JOB | {"state": "done"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0] == ("preload abc running: 25%, 2MiB of 8MiB, objects 1/4, chunks 2/8, "
                        "2MiB from S3, 1MiB/s, 0 failed")
    assert lines[1].startswith("preload abc done: 25%")
    assert summary(JOB).startswith("preload abc running: 1/4 objects, 2MiB of 8MiB in 2.0s")


async def test_preload_status_and_unpin_commands(cluster, s3_client, bucket):
    for i in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"m/{i}.bin", Body=bytes([i]) * (CHUNK + 100 * i))
    s3_client.put_object(Bucket=bucket, Key="cold.bin", Body=b"z" * 10)
    master = ["--master", cluster.master.url]
    code, out, err = await run("preload", f"s3://{bucket}/m/", "--pin", *master)
    assert code == 0, err
    assert f"3 objects, {format_size(3 * CHUNK + 300)} in 5 chunks, pinned" in err
    assert "chunks 5/5" in err  # the last plain progress line
    assert out.startswith("preload ") and " done: 3/3 objects" in out and ", pinned" in out

    code, out, err = await run("status", f"s3://{bucket}/", *master)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["id", "url", "state", "epoch", "capacity", "used", "pinned", "hit", "ratio",
                                "served", "from", "peers", "from", "S3", "fills"]
    assert {line.split()[0] for line in lines[2:5]} == {"w0", "w1", "w2"}
    assert all(" up " in line for line in lines[2:5])
    assert f" 100%     100%" in out and f"s3://{bucket}/m/2.bin" in out
    assert f"   0%       0%" in out and f"s3://{bucket}/cold.bin" in out

    code, out, _ = await run("status", f"s3://{bucket}/m/", "--json", *master)
    status = json.loads(out)
    assert sum(w["pinned"] for w in status["workers"]) == 3 * CHUNK + 300
    assert [(o["key"], o["cached"], o["pinned"]) for o in status["objects"]] == \
        [(f"m/{i}.bin", 1.0, 1.0) for i in range(3)]

    # Read through w0: what it does not own comes from its peers, and `status` says so.
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.get(f"{cluster.workers[0].url}/{bucket}/m/{i}.bin") as resp:
                assert resp.status == 200 and len(await resp.read()) == CHUNK + 100 * i
    code, out, _ = await run("status", "--json", *master)
    w0 = next(w for w in json.loads(out)["workers"] if w["id"] == "w0")
    assert w0["bytes_from_peers"] == 3 * CHUNK + 300 - w0["pinned"] > 0
    assert w0["bytes_from_s3"] == w0["pinned"]  # its preload's fills, nothing more

    code, out, err = await run("unpin", f"s3://{bucket}/m/", *master)
    assert code == 0 and out.strip() == f"unpinned 5 chunks under s3://{bucket}/m/", err
    code, out, _ = await run("status", f"s3://{bucket}/m/", "--json", *master)
    assert [o["pinned"] for o in json.loads(out)["objects"]] == [0.0] * 3


async def test_unpin_with_a_worker_down_names_it_in_one_line_and_json_stays_json(cluster, s3_client, bucket):
    """A worker down but still in the ring: `unpin` printed the master's JSON body cut at 300
    characters, with aiohttp's exception repr, and `--json` printed that line too, not JSON."""
    for i in range(6):
        s3_client.put_object(Bucket=bucket, Key=f"m/{i}.bin", Body=bytes([i]) * CHUNK)
    master, url = ["--master", cluster.master.url], f"s3://{bucket}/m/"
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert (await admin.wait((await admin.preload([url], pin=True))["id"]))["state"] == "done"
    down = max(cluster.workers, key=lambda w: len(w.keeps))
    pinned_there = len(down.keeps)
    await down.stop(leave=False)  # in the ring until its heartbeats expire (10 s)
    failed = f"worker {down.id} at {down.url} unreachable: connection refused"

    code, out, err = await run("unpin", url, *master)
    assert (code, out) == (1, ""), err
    assert err == (f"p2pcache unpin: unpinned {6 - pinned_there} chunks under {url}; 1 of 3 workers failed (each "
                   f"is sent the unpin again with the answer to its next heartbeat): {failed}\n")
    code, out, err = await run("unpin", "--json", url, *master)
    assert code == 1 and err.startswith("p2pcache unpin: unpinned 0 chunks") and err.count("\n") == 1, err
    answer = json.loads(out)
    assert (answer["unpinned_chunks"], answer["failed"], answer["error"]) == (0, [failed], "UnpinIncomplete")
    back = await cluster.restart(down)  # as said: its next heartbeat brings the unpin
    assert pinned_there > 0 and len(back.keeps) == 0


async def test_preload_json_and_errors(cluster, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="x/a", Body=b"a" * 1000)
    master = ["--master", cluster.master.url]
    code, out, err = await run("preload", f"s3://{bucket}/x/", "--json", *master)
    job = json.loads(out)
    assert code == 0 and err == "" and job["state"] == "done" and job["bytes_done"] == 1000

    code, out, err = await run("preload", f"s3://{bucket}/nothing/", *master)
    assert (code, out) == (1, "") and err.strip() == f"p2pcache preload: no objects under s3://{bucket}/nothing/"
    code, out, err = await run("preload", "s3://no-such-bucket-p2p/x/", *master)
    assert code == 1 and "no-such-bucket-p2p" in err, err
    assert "Traceback" not in err
    code, _, err = await run("preload", f"s3://{bucket}/x/", *master, secret=None)
    assert code == 1 and "cluster secret" in err, err
    code, _, err = await run("preload", *master)
    assert code == 2 and "give s3:// URLs" in err


async def test_status_preload_unpin_get_and_sync_say_a_master_is_starting(cluster, s3_client, bucket, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="m/a", Body=b"a" * 100)
    port = int(cluster.master.url.rsplit(":", 1)[1])
    await cluster.master.stop()
    cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=120, cluster_secret=SECRET))
    await cluster.master.start()  # collecting heartbeats: its ring is partial, if it has one
    master = ["--master", cluster.master.url]
    for args in (["status"], ["preload", f"s3://{bucket}/m/"], ["unpin", f"s3://{bucket}/m/"],
                 ["get", f"s3://{bucket}/m/a", "-o", "/dev/null"], ["sync", f"s3://{bucket}/m/", str(tmp_path)]):
        code, out, err = await run(*args, *master)
        assert (code, out) == (1, ""), (args, out)
        assert err.startswith(f"p2pcache {args[0]}: ") and "master starting: collecting heartbeats" in err, err
        # One line of text: the master's answer decoded (it was a bytes repr: b'master starting: ...').
        assert err.count("\n") == 1 and "b'" not in err and 'b"' not in err, err


async def test_bad_arguments_exit_2_with_one_line(cluster, tmp_path):
    master = ["--master", cluster.master.url]
    for args, why in ((["preload", "models/x"], "'models/x' is not an s3://bucket/prefix URL"),
                      (["unpin", "models/x"], "'models/x' is not an s3://bucket/prefix URL"),
                      (["status", "s3:///x"], "'s3:///x' is not an s3://bucket/prefix URL"),
                      (["sync", "http://x/y", "d"], "'http://x/y' is not an s3://bucket/prefix URL"),
                      (["status", "--master", "notaurl"], "url 'notaurl' must be http:// or https://"),
                      (["status", "--master", cluster.master.url + "/status"],
                       f"url '{cluster.master.url}/status' must not have a path, query or fragment"),
                      (["unpin", "s3://b/m/", "--master", cluster.master.url + "?x=1"], "must not have a path"),
                      (["sync", "s3://b/m/", "d", "--master", "http://127.0.0.1:9/x"], "must not have a path"),
                      (["sync", "s3://b/m/", "d", "--files", "0"], "--files: must be a whole number of at least 1"),
                      (["sync", "s3://b/m/", "d", "--files", "-3"], "--files: must be a whole number of at least 1"),
                      (["sync", "s3://b/m/", "d", "--concurrency", "0"], "--concurrency: must be a whole number"),
                      (["preload", "s3://b/m/", "--interval", "-1"], "--interval: must be a number of at least 0"),
                      (["preload", "s3://b/m/", "--wait-ready", "-5"], "--wait-ready: must be a number of at least 0")):
        code, out, err = await run(*args, *([] if "--master" in args else master))
        assert (code, out) == (2, ""), (args, err)
        assert err.splitlines()[-1].startswith(f"p2pcache {args[0]}: error: argument ") and why in err, (args, err)
    for args in (["get", "s3://b/k"], ["sync", "s3://b/p/", str(tmp_path / "d")], ["status"]):
        code, out, err = await run(*args, *master, "--tls-ca", str(tmp_path / "missing"))
        assert (code, out, err) == (2, "", f"p2pcache {args[0]}: --tls-ca: cannot read {tmp_path / 'missing'}\n")
    code, _, err = await run("status", *master, "--cluster-secret-file", str(tmp_path / "missing"))
    assert code == 2 and err.strip() == f"p2pcache status: cannot read the cluster secret file {tmp_path / 'missing'}: " \
                                       f"No such file or directory", err


async def test_a_workers_url_as_master_is_named_as_such(cluster, bucket):
    worker = cluster.workers[0].url
    for args in (["status"], ["preload", f"s3://{bucket}/m/"], ["unpin", f"s3://{bucket}/m/"],
                 ["preload", "--follow", "abc"]):
        code, out, err = await run(*args, "--master", worker)
        assert (code, out) == (1, ""), (args, err)
        assert err.startswith(f"p2pcache {args[0]}: {worker} did not answer as a p2pcache master (it answered as a "
                              f"worker: ") and err.endswith("): is it the master's URL?\n"), err
        assert err.count("\n") == 1 and "<" not in err, err


async def test_a_secret_file_on_the_command_line_beats_the_environment(cluster, tmp_path):
    (tmp_path / "ok.sec").write_bytes(SECRET + b"\n")
    master = ["--master", cluster.master.url, "--cluster-secret-file", str(tmp_path / "ok.sec")]
    code, out, err = await run("status", *master, secret=b"a-wrong-secret-from-the-environment")
    assert code == 0 and out.startswith("ring epoch "), err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_preload_stopped_by_a_signal_says_the_job_goes_on(cluster_factory, fault_proxy, s3_client, bucket, sig):
    fault_proxy.script = ["stall"] * 100  # S3 stalls every body: the job cannot finish on its own
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    s3_client.put_object(Bucket=bucket, Key="m/a", Body=b"a" * (2 * CHUNK))
    env = cli_env(P2PCACHE_CLUSTER_SECRET=SECRET.decode())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "preload", f"s3://{bucket}/m/", "--master", cluster.master.url, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    header = await asyncio.wait_for(proc.stderr.readline(), 60)  # the job started
    job = header.decode().split()[1].rstrip(":")
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + sig and "Traceback" not in err.decode(), err
    assert f"job {job} goes on: `p2pcache preload --follow {job}`" in err.decode()
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert (await admin.job(job))["state"] == "running"


async def test_a_preload_whose_chunks_were_evicted_before_it_ended_fails_saying_how_much_is_cached(
        cluster_factory, fault_proxy, s3_client, bucket):
    """The set fits the worker, but a flood of reads while its last fill waits on S3 evicts its first
    three chunks (LRU): the job must not report them cached."""
    cluster = await cluster_factory(1, capacity=8 * (CHUNK + 512), eviction="lru", s3_endpoint=fault_proxy.url,
                                    origin_read_timeout=4.0)
    for prefix, n in (("m", 4), ("flood", 8)):
        for i in range(n):
            s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{i}.bin", Body=bytes([i]) * CHUNK)
    fault_proxy.script = [None, None, None, "stall"]  # the set's fourth fill waits on S3 for 4 s
    preloading = asyncio.ensure_future(run("preload", f"s3://{bucket}/m/", "--master", cluster.master.url))
    store = cluster.workers[0].store
    await wait_for(lambda: fault_proxy.stalling and len(store) == 3, what="three chunks filled, one stalled")
    async with aiohttp.ClientSession() as http:
        for i in range(8):
            async with http.get(f"{cluster.workers[0].url}/{bucket}/flood/{i}.bin") as resp:
                assert resp.status == 200 and len(await resp.read()) == CHUNK
    code, out, err = await preloading
    assert code == 1, err
    assert " failed: 4/4 objects, 1MiB of 1MiB in " in out and out.rstrip().endswith(
        "0 chunks failed, 256KiB of 1MiB cached"), out
    assert "failed: 3 of 4 chunks were not cached when the job ended" in err, err
    async with AdminClient(cluster.master.url, SECRET) as admin:
        job = (await admin.jobs())[0]
    assert (job["state"], job["chunks_done"], job["chunks_cached"], job["bytes_cached"]) == ("failed", 4, 1, CHUNK)


async def test_a_master_restart_ends_its_jobs_and_the_commands_say_so(cluster_factory, fault_proxy, s3_client, bucket):
    """A job lives in the master's memory. The command following it said "goes on" when the
    master restarted; `--follow` then found no such job, without a word on why."""
    fault_proxy.script = ["stall"] * 100  # S3 stalls every body: the job cannot finish on its own
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_read_timeout=60.0)
    s3_client.put_object(Bucket=bucket, Key="m/a", Body=b"a" * (2 * CHUNK))
    env = cli_env(P2PCACHE_CLUSTER_SECRET=SECRET.decode())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "preload", f"s3://{bucket}/m/", "--master", cluster.master.url,
        "--interval", "0.2", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    header = await asyncio.wait_for(proc.stderr.readline(), 60)  # the job started
    job = header.decode().split()[1].rstrip(":")
    port = int(cluster.master.url.rsplit(":", 1)[1])
    await cluster.master.stop()
    cluster.master = Master(MasterConfig(port=port, chunk_size=CHUNK, startup_grace=0, cluster_secret=SECRET))
    await cluster.master.start()
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and f"job {job} goes on if the master does" in err.decode(), err
    assert "if the master stopped or restarted, it is lost" in err.decode()
    code, out, err = await run("preload", "--follow", job, "--master", cluster.master.url)
    assert code == 1 and f"no preload job '{job}'" in err and "a restarted master has none" in err, err


async def test_status_and_unpin_fail_against_a_master_without_workers(s3_client, bucket):
    """Against a master the workers do not use (a wrong --master): "unpinned 0 chunks" and an
    empty table, both exit 0, passed for done."""
    master = Master(MasterConfig(port=0, chunk_size=CHUNK, startup_grace=0, cluster_secret=SECRET))
    await master.start()
    try:
        code, out, err = await run("unpin", f"s3://{bucket}/m/", "--master", master.url)
        assert (code, out) == (1, "") and "no workers in its ring: nothing could be unpinned" in err, err
        for json_flag in ([], ["--json"]):  # no table (it printed an empty one before its line), no JSON
            code, out, err = await run("status", "--master", master.url, *json_flag)
            assert (code, out) == (1, "") and err.startswith(
                f"p2pcache status: the master at {master.url} has no workers in its ring"), (out, err)
    finally:
        await master.stop()


async def test_a_url_that_is_not_utf8_or_names_an_invalid_bucket_is_a_bad_argument(cluster):
    """`status $'s3://models/\\xff'` ended in "'utf-8' codec can't encode ..."; `preload` of it or of
    `s3://models:80/m/` reached the master (500, and a 502 quoting botocore's regex)."""
    master = ["--master", cluster.master.url]
    cases = ((["preload", "s3://models/m/\udcff"], "is not UTF-8 text"),  # the argv of a byte 0xff
             (["status", "s3://models/\udcff"], "is not UTF-8 text"),
             (["unpin", "s3://models/\udcff"], "is not UTF-8 text"),
             (["preload", "s3://models:80/m/"], "invalid bucket name 'models:80'"))
    for (args, why), (code, out, err) in zip(cases, await asyncio.gather(*(run(*a, *master) for a, _ in cases))):
        assert (code, out) == (2, ""), (args, err)
        assert err.splitlines()[-1].startswith(f"p2pcache {args[0]}: error: argument ") and why in err, (args, err)
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert await admin.jobs() == []


async def test_a_job_id_that_is_a_path_is_no_job(cluster):
    """`--follow ../status` went to /status and failed on its answer with a traceback (KeyError: 'id');
    `x?y` was "access denied" and `a/b` "did not answer as a p2pcache master"."""
    master = ["--master", cluster.master.url]
    ids = ("../status", "../preload", "x?y", "a/b", "..")
    cases = [("--follow", i) for i in ids] + [("--cancel", "../preload")]
    for (flag, job), (code, out, err) in zip(cases, await asyncio.gather(*(run("preload", f, j, *master)
                                                                           for f, j in cases))):
        assert (code, out) == (1, ""), (flag, job, err)
        assert err.startswith(f"p2pcache preload: no preload job {job!r} (") and err.count("\n") == 1, err


async def test_a_json_answer_without_what_the_command_prints_is_not_a_masters():
    """A server that answers 200 with other JSON (another service at --master): the commands read
    the keys they print from it unchecked (KeyError tracebacks)."""
    async def other_json(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", other_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        cases = (["preload", "--follow", "abc"], ["preload", "--cancel", "abc"], ["preload", "s3://b/m/"],
                 ["status"], ["unpin", "s3://b/m/"])
        for args, (code, out, err) in zip(cases, await asyncio.gather(*(run(*a, "--master", other) for a in cases))):
            assert (code, out) == (1, ""), (args, err)
            assert err == (f"p2pcache {args[0]}: {other} did not answer as a p2pcache master (it answered 200 OK): "
                           f"is it the master's URL?\n"), (args, err)
    finally:
        await runner.cleanup()
