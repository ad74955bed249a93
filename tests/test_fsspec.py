"""fsspec: `p2pcache://bucket/key` through the client, and fsspec's own HTTP filesystem on a worker."""

from __future__ import annotations

import asyncio
import inspect
import io
import random

import fsspec
import pytest
from fsspec.asyn import AsyncFileSystem
from fsspec.callbacks import Callback
from fsspec.dircache import DirCache

from conftest import CHUNK
from p2pcache.fs import P2PCacheFile, P2PCacheFileSystem, _when

pytestmark = pytest.mark.usefixtures("fsspec_instances")


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def random_reads(f, body: bytes, seed: int, count: int = 40) -> None:
    rnd = random.Random(seed)
    for _ in range(count):
        a, n = rnd.randrange(len(body)), rnd.randrange(2 * CHUNK)
        f.seek(a)
        assert f.read(n) == body[a:a + n], (a, n)
    f.seek(len(body) - 3)
    assert f.read(10) == body[-3:] and f.read(10) == b""


async def test_fsspec_open_reads_through_the_cache(cluster, s3_client, bucket):
    body = put(s3_client, bucket, "dir/m.bin", 4 * CHUNK + 5, seed=1)
    url = f"p2pcache://{bucket}/dir/m.bin"

    def scenario() -> None:
        with fsspec.open(url, "rb", master=cluster.master.url) as f:
            assert isinstance(f, P2PCacheFile) and f.size == len(body)
            random_reads(f, body, seed=2)
        with fsspec.open(url, "rb", master=cluster.master.url, block_size=CHUNK // 3) as f:
            assert f.read() == body

    await asyncio.to_thread(scenario)


async def test_fsspec_filesystem_info_cat_file_and_random_seeks(cluster, s3_client, bucket):
    body = put(s3_client, bucket, "m.bin", 3 * CHUNK + 17, seed=3)
    path = f"{bucket}/m.bin"

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        assert isinstance(fs, P2PCacheFileSystem)
        info = fs.info(f"p2pcache://{path}")
        assert info["size"] == fs.size(path) == len(body) and info["type"] == "file" and info["ETag"]
        assert fs.cat_file(path, start=CHUNK - 3, end=CHUNK + 3) == body[CHUNK - 3:CHUNK + 3]
        assert fs.cat_file(path, start=-10) == body[-10:]
        assert fs.cat_file(path, start=5, end=-5) == body[5:-5]
        assert fs.cat_file(path, start=2 * CHUNK) == body[2 * CHUNK:]
        assert fs.cat(path) == body
        assert fs.cat_ranges([path, path], [0, 3 * CHUNK], [7, 3 * CHUNK + 10]) == [body[:7], body[3 * CHUNK:][:10]]
        with fs.open(path, block_size=CHUNK // 2) as f:
            random_reads(f, body, seed=4)
        assert fs.exists(path) and fs.isfile(path) and not fs.exists(f"{bucket}/nope")
        with pytest.raises(FileNotFoundError):
            fs.info(f"{bucket}/nope")
        with pytest.raises(FileNotFoundError):
            fs.cat_file(f"{bucket}/nope")
        with pytest.raises(NotImplementedError, match="read-only"):
            fs.open(path, "wb")

    await asyncio.to_thread(scenario)


async def test_the_master_can_come_from_the_environment(cluster, s3_client, bucket, monkeypatch):
    body = put(s3_client, bucket, "e.bin", 1000, seed=5)
    monkeypatch.setenv("P2PCACHE_MASTER", cluster.master.url)

    def scenario() -> bytes:
        with fsspec.open(f"p2pcache://{bucket}/e.bin", "rb") as f:
            return f.read()

    assert await asyncio.to_thread(scenario) == body
    monkeypatch.delenv("P2PCACHE_MASTER")
    with pytest.raises(ValueError, match="P2PCACHE_MASTER"):
        P2PCacheFileSystem(skip_instance_cache=True)


def test_an_unknown_option_is_a_type_error_naming_it():
    """A misspelled option (or one this filesystem lacks) used to be taken and ignored."""
    with pytest.raises(TypeError, match="unknown option 'acess_key'"):
        fsspec.filesystem("p2pcache", master="http://127.0.0.1:1", acess_key="typo")
    with pytest.raises(TypeError, match="unknown option 'tls_cafile'"):
        fsspec.open("p2pcache://models/m.bin", master="http://127.0.0.1:1", tls_cafile="ca.pem")
    # The options of fsspec's base classes (batch_size; the listings cache's) still work.
    base = {name: param.default for init in (AsyncFileSystem.__init__, DirCache.__init__)
            for name, param in inspect.signature(init).parameters.items() if param.kind is param.KEYWORD_ONLY
            or (param.kind is param.POSITIONAL_OR_KEYWORD and name != "self")}
    assert {"asynchronous", "loop", "batch_size", "use_listings_cache", "max_paths"} <= set(base)
    base |= {"batch_size": 4, "use_listings_cache": False}
    fs = fsspec.filesystem("p2pcache", master="http://127.0.0.1:1", skip_instance_cache=True, tls_ca="", **base)
    assert fs.batch_size == 4 and not fs.dircache.use_listings_cache


async def test_fsspec_http_filesystem_reads_a_worker_with_random_seeks(cluster, s3_client, bucket):
    body = put(s3_client, bucket, "h.bin", 3 * CHUNK + 1234, seed=6)
    url = f"{cluster.workers[2].url}/{bucket}/h.bin"

    def scenario() -> None:
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        assert fs.info(url)["size"] == len(body)
        assert fs.cat_file(url, start=CHUNK - 1, end=2 * CHUNK + 1) == body[CHUNK - 1:2 * CHUNK + 1]
        with fs.open(url, "rb", block_size=CHUNK // 2) as f:
            assert f.size == len(body)
            random_reads(f, body, seed=7)

    await asyncio.to_thread(scenario)


async def test_ls_find_and_isdir_list_through_the_workers(cluster, s3_client, bucket):
    for i, key in enumerate(["top.bin", "a/1.bin", "a/2.bin", "a/b/3.bin"]):
        put(s3_client, bucket, key, 10 + i, seed=10 + i)

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        top = fs.ls(bucket, detail=True)
        assert [(e["name"], e["type"]) for e in top] == [
            (f"{bucket}/a", "directory"), (f"{bucket}/top.bin", "file")]
        assert fs.ls(f"{bucket}/a", detail=False) == [f"{bucket}/a/1.bin", f"{bucket}/a/2.bin", f"{bucket}/a/b"]
        [entry] = fs.ls(f"p2pcache://{bucket}/a/b/")
        assert (entry["name"], entry["size"], entry["type"]) == (f"{bucket}/a/b/3.bin", 13, "file")
        assert entry["ETag"] == fs.info(f"{bucket}/a/b/3.bin")["ETag"]
        assert fs.find(bucket) == sorted(f"{bucket}/{k}" for k in ["top.bin", "a/1.bin", "a/2.bin", "a/b/3.bin"])
        assert fs.find(f"{bucket}/a", maxdepth=1) == [f"{bucket}/a/1.bin", f"{bucket}/a/2.bin"]
        assert fs.glob(f"{bucket}/a/*.bin") == [f"{bucket}/a/1.bin", f"{bucket}/a/2.bin"]
        assert fs.isdir(f"{bucket}/a") and fs.isdir(f"{bucket}/a/b") and not fs.isdir(f"{bucket}/top.bin")
        assert fs.info(f"{bucket}/a")["type"] == "directory"
        assert fs.ls(f"{bucket}/top.bin", detail=False) == [f"{bucket}/top.bin"]
        with pytest.raises(FileNotFoundError):
            fs.ls(f"{bucket}/nothing-here")

    await asyncio.to_thread(scenario)


async def test_a_bucket_is_a_directory_not_a_file_to_read(cluster, s3_client, bucket, caplog):
    put(s3_client, bucket, "d/f.bin", 10, seed=8)

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        for read in (lambda: fs.cat(f"{bucket}/"), lambda: fs.cat_file(bucket), lambda: fs.open(f"p2pcache://{bucket}"),
                     lambda: fs.cat_file(bucket, start=-2)):
            with pytest.raises(IsADirectoryError, match=bucket):
                read()
        with pytest.raises(FileNotFoundError):  # a prefix is no object either, as s3fs has it
            fs.cat_file(f"{bucket}/d")

    await asyncio.to_thread(scenario)
    assert "trying the next worker" not in caplog.text


async def test_get_file_get_simplecache_and_open_local_copy_whole_objects(cluster, s3_client, bucket, tmp_path):
    body = put(s3_client, bucket, "dir/g.bin", 3 * CHUNK + 7, seed=9)
    small = put(s3_client, bucket, "dir/sub/h.bin", 10, seed=10)
    path, master = f"{bucket}/dir/g.bin", cluster.master.url

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=master)
        progress = Callback()
        fs.get_file(path, str(tmp_path / "g.bin"), callback=progress)
        assert (tmp_path / "g.bin").read_bytes() == body and (progress.size, progress.value) == (len(body), len(body))
        into = io.BytesIO()
        fs.get_file(path, into)  # an open file: written in order
        assert into.getvalue() == body
        fs.get(f"{bucket}/dir/", str(tmp_path / "tree"), recursive=True)
        assert (tmp_path / "tree/g.bin").read_bytes() == body and (tmp_path / "tree/sub/h.bin").read_bytes() == small
        with pytest.raises(FileNotFoundError):
            fs.get_file(f"{bucket}/dir/missing", str(tmp_path / "missing"))
        assert not (tmp_path / "missing").exists()
        for cache in ("simplecache", "filecache"):
            options = {"p2pcache": {"master": master}, cache: {"cache_storage": str(tmp_path / cache)}}
            with fsspec.open(f"{cache}::p2pcache://{path}", "rb", **options) as f:
                assert f.read() == body
        local = fsspec.open_local(f"simplecache::p2pcache://{path}", p2pcache={"master": master},
                                  simplecache={"cache_storage": str(tmp_path / "local")})
        with open(local, "rb") as f:
            assert f.read() == body

    await asyncio.to_thread(scenario)


async def test_exists_and_isdir_of_a_bucket_say_whether_it_is_there(cluster, s3_client, bucket):
    put(s3_client, bucket, "k", 10, seed=11)

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        assert fs.exists(bucket) and fs.isdir(bucket) and fs.exists(f"{bucket}/k")
        for path in ("no-such-bucket-p2p", "no-such-bucket-p2p/k", "Bad_Bucket/k", "_p2p/health", "_p2p"):
            assert not fs.exists(path) and not fs.isdir(path), path
        with pytest.raises(FileNotFoundError):
            fs.info("no-such-bucket-p2p")

    await asyncio.to_thread(scenario)


async def test_a_leading_slash_names_the_bucket_as_s3fs_has_it(cluster, s3_client, bucket, tmp_path):
    """`/bucket/key` and `p2pcache:///bucket/key` were the root: `exists` of any such path was
    True, `get` of a directory wrote nothing, and `get_file` of a missing object made a directory."""
    body = put(s3_client, bucket, "d/k.bin", 2 * CHUNK + 3, seed=20)

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        assert not fs.exists("/no-such-bucket/no/such/key")
        assert fs.info(f"/{bucket}/d/k.bin")["size"] == len(body)
        assert fs.cat_file(f"p2pcache:///{bucket}/d/k.bin") == body
        fs.get(f"/{bucket}/d/", str(tmp_path / "tree"), recursive=True)
        assert (tmp_path / "tree/k.bin").read_bytes() == body
        with pytest.raises(FileNotFoundError):
            fs.get_file(f"/{bucket}/d/missing", str(tmp_path / "missing"))
        assert not (tmp_path / "missing").exists()

    await asyncio.to_thread(scenario)


async def test_a_recursive_get_copies_keys_holding_double_slashes(cluster, s3_client, bucket, tmp_path):
    """A listing names `x//` a prefix; it was taken for `x`, the directory itself, and a walk
    never saw `x//y.txt`: `get` left it out, with no error."""
    inner = put(s3_client, bucket, "dbl/x//y.txt", 10, seed=21)
    plain = put(s3_client, bucket, "dbl/z.txt", 11, seed=22)

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        found = fs.find(f"{bucket}/dbl/", withdirs=True)
        assert f"{bucket}/dbl/x//y.txt" in found and f"{bucket}/dbl/z.txt" in found
        assert fs.find(f"{bucket}/dbl") == [f"{bucket}/dbl/x//y.txt", f"{bucket}/dbl/z.txt"]
        fs.get(f"{bucket}/dbl/", str(tmp_path / "out"), recursive=True)
        assert (tmp_path / "out/x/y.txt").read_bytes() == inner and (tmp_path / "out/z.txt").read_bytes() == plain

    await asyncio.to_thread(scenario)


async def test_a_block_size_that_is_not_a_positive_number_of_bytes_is_refused(cluster, s3_client, bucket):
    """-1 cut every read one byte short, and a string failed only at the first read."""
    put(s3_client, bucket, "k", 100, seed=23)
    master = cluster.master.url

    def scenario() -> None:
        for bad, error in ((-1, ValueError), (0, ValueError), ("x", TypeError), (1.5, TypeError)):
            with pytest.raises(error, match="block_size"):
                fsspec.filesystem("p2pcache", master=master, block_size=bad, skip_instance_cache=True)
        fs = fsspec.filesystem("p2pcache", master=master)
        with pytest.raises(ValueError, match="block_size"):
            fs.open(f"{bucket}/k", block_size=-5)

    await asyncio.to_thread(scenario)


async def test_modified_is_when_s3_last_wrote_the_object(cluster, s3_client, bucket):
    """fsspec's `modified` was NotImplementedError, though `info` carries LastModified."""
    put(s3_client, bucket, "d/k", 10, seed=24)
    written = s3_client.head_object(Bucket=bucket, Key="d/k")["LastModified"]

    def scenario() -> None:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url)
        assert fs.modified(f"{bucket}/d/k") == written
        listed = fs.find(f"{bucket}/d", detail=True)[f"{bucket}/d/k"]["LastModified"]  # ISO 8601
        assert _when(listed, "listed") == written
        with pytest.raises(IsADirectoryError):
            fs.modified(f"{bucket}/d")

    await asyncio.to_thread(scenario)
