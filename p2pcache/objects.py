"""An object's identity at the origin and the chunk ids derived from it."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import astuple, dataclass

import msgpack

from .ranges import chunk_count, chunk_length

__all__ = ["ObjectInfo", "ChunkId", "BUCKET_NAME", "MAX_OBJECT_SIZE", "check_bucket", "may_move"]

# S3 stops at 5 TiB, MinIO at 50 TiB: a larger claimed size is not an object anywhere.
MAX_OBJECT_SIZE = 50 << 40

# What a worker serves as a bucket (S3's rule, with the legacy upper case); never "_p2p", its own routes.
BUCKET_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9.\-]{0,254}")


def check_bucket(bucket: str) -> None:
    """A ValueError unless `bucket` could be an S3 bucket's name."""
    if not BUCKET_NAME.fullmatch(bucket):
        shown = repr(bucket) if len(bucket) <= 64 else f"{bucket[:60]!r}... ({len(bucket)} characters)"
        raise ValueError(f"invalid bucket name {shown}: a bucket's name is 1 to 255 letters, digits, '.' and '-'")


def may_move(pinned: ObjectInfo, successor: ObjectInfo, returned: bool) -> bool:
    """Whether a file opened on version `pinned`, now gone, may read `successor` instead: only if it
    has `returned` no byte yet (its caller holds nothing of `pinned`) and the size is the same (every
    offset the caller took from the file's size still means the same)."""
    return not returned and successor.size == pinned.size


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD on S3 said: the version (ETag) pins every chunk of a read.

    `headers` are the object's other stored headers (user metadata,
    Cache-Control, ...), sent back with it; they are no part of a chunk's id.
    """

    bucket: str
    key: str
    etag: str  # as S3 sends it, quotes included
    size: int
    last_modified: str = ""  # an HTTP date
    content_type: str = "binary/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()

    def chunk(self, index: int, chunk_size: int) -> "ChunkId":
        return ChunkId(self.bucket, self.key, self.etag, self.size, chunk_size, index)

    def chunk_name(self, index: int, chunk_size: int) -> str:
        """`self.chunk(index, chunk_size).name`, without making the id (a serving process's hot path)."""
        return _name(self.bucket, self.key, self.etag, chunk_size, index,
                     chunk_length(index, self.size, chunk_size))


@dataclass(frozen=True)
class ChunkId:
    """Chunk `index` of one version of one object, cut at `chunk_size`.

    The chunk size is part of the id: after a cluster-wide chunk size change,
    index 3 names different bytes, so it must be a different file and ring key.
    """

    bucket: str
    key: str
    etag: str
    size: int
    chunk_size: int
    index: int

    @property
    def start(self) -> int:
        return self.index * self.chunk_size

    @property
    def length(self) -> int:
        return chunk_length(self.index, self.size, self.chunk_size)

    def pack(self) -> bytes:
        """What the store keeps with the chunk's bytes."""
        return msgpack.packb(astuple(self))

    @classmethod
    def unpack(cls, data: bytes) -> "ChunkId":
        """Raises ValueError (or a msgpack error, one) on anything that is not `pack`'s output."""
        fields = msgpack.unpackb(data)
        if not (isinstance(fields, list) and len(fields) == 6 and all(isinstance(f, str) for f in fields[:3])
                and all(isinstance(f, int) for f in fields[3:])):
            raise ValueError(f"not a chunk id: {fields!r:.100}")
        return cls(*fields)

    @property
    def count(self) -> int:
        """Chunks in the object."""
        return max(1, chunk_count(self.size, self.chunk_size))

    @property
    def object_key(self) -> str:
        """What placement hashes: one version of one object, cut at one chunk size."""
        return f"{self.bucket}/{self.key}@{self.etag}#{self.chunk_size}"

    @property
    def ring_key(self) -> str:
        return f"{self.object_key}:{self.index}"

    @property
    def name(self) -> str:
        """The store's file name: `<version digest>-<index>-<length>`.

        The length is in the name so that a restart can drop a file whose size
        is wrong without knowing anything else about the object.
        """
        return _name(self.bucket, self.key, self.etag, self.chunk_size, self.index, self.length)


def _name(bucket: str, key: str, etag: str, chunk_size: int, index: int, length: int) -> str:
    return f"{_version_digest(bucket, key, etag, chunk_size)}-{index}-{length}"


@functools.lru_cache(maxsize=4096)
def _version_digest(bucket: str, key: str, etag: str, chunk_size: int) -> str:
    return hashlib.sha256(f"{bucket}\0{key}\0{etag}\0{chunk_size}".encode()).hexdigest()[:40]
