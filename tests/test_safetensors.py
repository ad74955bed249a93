"""A real safetensors file loaded through the cache: header length, JSON header, then each tensor's bytes."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import fsspec
import numpy as np
import safetensors.numpy

from conftest import CHUNK
from p2pcache import Client, SyncClient

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def originals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((512, 300), dtype=np.float32),
        "layers.0.w": rng.standard_normal((256, 256)).astype(np.float16),
        "layers.0.b": rng.standard_normal(333),
        "ids": rng.integers(-2**40, 2**40, size=(70, 1000), dtype=np.int64),
        "mask": rng.integers(0, 2, size=(3, 5, 7)).astype(bool),
        "raw": rng.integers(0, 256, size=100_000, dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }


def tensor(raw: bytes, meta: dict) -> np.ndarray:
    return np.frombuffer(raw, dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])


def assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def put_model(s3_client, bucket: str, key: str) -> tuple[dict[str, np.ndarray], bytes]:
    expected = originals()
    data = safetensors.numpy.save(expected, metadata={"format": "np"})
    assert len(data) > 1 << 20
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    return expected, data


async def test_tensors_load_range_by_range_through_the_client(cluster, s3_client, bucket):
    expected, _ = put_model(s3_client, bucket, "model.safetensors")
    async with Client(cluster.master.url) as client:
        (n,) = struct.unpack("<Q", await client.read(bucket, "model.safetensors", 0, 8))
        header = json.loads(await client.read(bucket, "model.safetensors", 8, 8 + n))
        assert header.pop("__metadata__") == {"format": "np"}
        spans = {name: (8 + n + m["data_offsets"][0], 8 + n + m["data_offsets"][1]) for name, m in header.items()}
        assert any(a // CHUNK != (b - 1) // CHUNK for a, b in spans.values())  # some cross chunks
        raws = await asyncio.gather(*(client.read(bucket, "model.safetensors", a, b) for a, b in spans.values()))
    assert_same({name: tensor(raw, header[name]) for name, raw in zip(spans, raws)}, expected)


async def test_tensors_load_with_seeks_on_a_file_object(cluster, s3_client, bucket):
    expected, _ = put_model(s3_client, bucket, "model.safetensors")

    def load() -> dict[str, np.ndarray]:  # as a synchronous loader would
        with SyncClient(cluster.master.url) as client:
            with io.BufferedReader(client.open(bucket, "model.safetensors")) as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                header.pop("__metadata__")
                loaded = {}
                for name, meta in sorted(header.items(), key=lambda kv: -kv[1]["data_offsets"][0]):
                    a, b = meta["data_offsets"]
                    f.seek(8 + n + a)
                    loaded[name] = tensor(f.read(b - a), meta)
                return loaded

    assert_same(await asyncio.to_thread(load), expected)


async def test_safetensors_loads_the_bytes_read_through_fsspec(cluster, s3_client, bucket):
    expected, _ = put_model(s3_client, bucket, "m/model.safetensors")

    def load() -> tuple[dict, dict]:
        fs = fsspec.filesystem("p2pcache", master=cluster.master.url, skip_instance_cache=True)
        try:
            whole = safetensors.numpy.load(fs.cat_file(f"{bucket}/m/model.safetensors"))
            with fs.open(f"{bucket}/m/model.safetensors", block_size=CHUNK) as f:
                opened = safetensors.numpy.load(f.read())
            return whole, opened
        finally:
            fs.close()

    whole, opened = await asyncio.to_thread(load)
    assert_same(whole, expected)
    assert_same(opened, expected)
