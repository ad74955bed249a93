"""Where `download` (and `p2pcache get -o`) writes: devices and FIFOs in place, symlinks followed, directories refused."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import stat
import sys
import threading

import pytest

from conftest import CHUNK, cli_env
from p2pcache import Client
from p2pcache.outputs import NAME_MAX, TEMP_NAME, Output, output_of, temp_path, temp_stem


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def null_device(path) -> None:
    """A character device as /dev/null is (1, 3), made in the test's own directory: never the real one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")


def test_what_a_path_is_decides_how_it_is_written(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"old")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-file").symlink_to("file")
    (tmp_path / "to-dir").symlink_to("dir")
    (tmp_path / "dangling").symlink_to("sub/new")
    assert output_of(str(tmp_path / "file")) == Output(str(tmp_path / "file"), False)
    assert output_of(str(tmp_path / "none")) == Output(str(tmp_path / "none"), False)
    assert output_of(str(tmp_path / "no-dir" / "x")) == Output(str(tmp_path / "no-dir" / "x"), False)
    assert output_of(str(tmp_path / "file" / "x")) == Output(str(tmp_path / "file" / "x"), False)
    assert output_of(str(tmp_path / "fifo")) == Output(str(tmp_path / "fifo"), True)
    assert output_of(str(tmp_path / "to-file")) == Output(str(tmp_path / "file"), False)  # the link stays
    assert output_of(str(tmp_path / "dangling")) == Output(str(tmp_path / "sub" / "new"), False)
    for path in (tmp_path / "dir", tmp_path / "to-dir"):
        with pytest.raises(IsADirectoryError) as refused:
            output_of(str(path))
        assert refused.value.filename == str(path)


def test_a_temp_name_fits_in_a_file_name_and_names_its_file():
    assert temp_stem("model.bin") == "model.bin"
    fits = NAME_MAX - len("..12345678.part")
    for name in ("a" * fits, "a" * (fits + 1), "b" * NAME_MAX, "é" * 127, "x" + "é" * 127):
        stem = temp_stem(name)
        temp = os.path.basename(temp_path(f"/d/{name}"))
        assert len(os.fsencode(temp)) <= NAME_MAX and TEMP_NAME.fullmatch(temp)["name"] == stem
        assert name.startswith(stem) and (stem == name) == (len(os.fsencode(name)) <= fits)
    assert temp_stem("a" * NAME_MAX) == temp_stem("a" * (NAME_MAX - 1))  # names alike may share a stem


async def test_download_writes_devices_and_fifos_in_place_and_follows_symlinks(cluster, s3_client, bucket, tmp_path):
    body = put(s3_client, bucket, "o.bin", 3 * CHUNK + 5, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    null_device(out / "null")
    os.mkfifo(out / "fifo")
    (out / "target").write_bytes(b"original")
    (out / "link").symlink_to("target")
    (out / "dangling").symlink_to("new")
    (out / "dir").mkdir()
    (out / "to-dir").symlink_to("dir")
    received = bytearray()

    def read_fifo() -> None:
        with open(out / "fifo", "rb") as f:
            while chunk := f.read(65536):
                received.extend(chunk)

    async with Client(cluster.master.url, concurrency=2) as client:
        info = await client.download(bucket, "o.bin", out / "null")
        assert info.size == len(body) and stat.S_ISCHR(os.lstat(out / "null").st_mode)
        reader = threading.Thread(target=read_fifo)
        reader.start()  # the download waits for it to open the FIFO
        seen = []
        await client.download(bucket, "o.bin", out / "fifo", lambda d, t: seen.append((d, t)))
        await asyncio.to_thread(reader.join)
        assert received == body and stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
        assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body))
        await client.download(bucket, "o.bin", out / "link", start=5, end=10)
        await client.download(bucket, "o.bin", out / "dangling", start=1, end=3)
        with pytest.raises(IsADirectoryError) as refused:
            await client.download(bucket, "o.bin", out / "to-dir")
        assert refused.value.filename == str(out / "to-dir")
    assert os.readlink(out / "link") == "target" and (out / "target").read_bytes() == body[5:10]
    assert os.readlink(out / "dangling") == "new" and (out / "new").read_bytes() == body[1:3]
    assert not list(out.glob(".*.part")) and not list((out / "dir").iterdir())


async def test_p2pcache_get_into_a_device_leaves_it_a_device(cluster, s3_client, bucket, tmp_path):
    put(s3_client, bucket, "g.bin", CHUNK + 1, seed=2)
    out = tmp_path / "out"
    out.mkdir()
    null_device(out / "null")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "get", f"s3://{bucket}/g.bin", "-o", str(out / "null"),
        "--master", cluster.master.url, env=cli_env(), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, err) == (0, b"")
    assert stat.S_ISCHR(os.lstat(out / "null").st_mode) and os.listdir(out) == ["null"]


async def test_p2pcache_get_past_the_file_size_limit_fails_naming_the_file(cluster, s3_client, bucket, tmp_path):
    put(s3_client, bucket, "big.bin", 3 * CHUNK, seed=3)
    out = tmp_path / "out"
    out.mkdir()

    def limited() -> None:  # `ulimit -f`: a write past CHUNK bytes fails with EFBIG (SIGXFSZ is ignored)
        resource.setrlimit(resource.RLIMIT_FSIZE, (CHUNK, CHUNK))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "get", f"s3://{bucket}/big.bin", "-o", str(out / "big.bin"),
        "--master", cluster.master.url, env=cli_env(), stderr=asyncio.subprocess.PIPE, preexec_fn=limited)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, err.decode()) == (1, f"p2pcache get: File too large: {out / 'big.bin'}\n")
    assert not list(out.iterdir())
