"""Benchmark objects in the embedded S3: model shards and datasets of any size, seeded without holding them in memory."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

__all__ = ["File", "seed", "model_files", "dataset_files"]

_BLOCK = 4 << 20  # the seeded bytes repeat a random block of this size, each copy stamped with its offset


@dataclass(frozen=True)
class File:
    bucket: str
    key: str
    size: int

    @property
    def path(self) -> str:
        return f"/{self.bucket}/{self.key}"


def model_files(bucket: str, prefix: str, total: int, shard: int) -> list[File]:
    """A safetensors-style checkpoint: `config.json`, the index, full shards and a smaller last one."""
    sizes = [shard] * (total // shard) + ([total % shard] if total % shard else [])
    n = len(sizes)
    shards = [File(bucket, f"{prefix}/model-{i + 1:05d}-of-{n:05d}.safetensors", size)
              for i, size in enumerate(sizes)]
    return [File(bucket, f"{prefix}/config.json", 700),
            File(bucket, f"{prefix}/model.safetensors.index.json", 24 << 10), *shards]


def dataset_files(bucket: str, prefix: str, count: int, size: int) -> list[File]:
    return [File(bucket, f"{prefix}/part-{i:05d}.bin", size) for i in range(count)]


def seed(client, files: list[File]) -> None:
    """Create the buckets and upload every file (multipart for large ones, streamed)."""
    from boto3.s3.transfer import TransferConfig

    for bucket in sorted({f.bucket for f in files}):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)
    for n, f in enumerate(files):
        client.upload_fileobj(_Pattern(f.size, seed=n), f.bucket, f.key, Config=config)


class _Pattern(io.RawIOBase):
    """`size` bytes of a repeated random block, each copy stamped with its offset (so no two
    ranges of an object are equal and a misplaced range cannot go unnoticed)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.pos = size, 0
        self.block = random.Random(seed).randbytes(_BLOCK)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        view, done = memoryview(buf), 0
        while done < n:
            start = self.pos % _BLOCK
            take = min(n - done, _BLOCK - start)
            view[done:done + take] = self.block[start:start + take]
            if start == 0 and take >= 8:
                view[done:done + 8] = self.pos.to_bytes(8, "little")
            done += take
            self.pos += take
        return n
