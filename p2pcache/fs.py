"""The fsspec filesystem `p2pcache://bucket/key`, reading through `p2pcache.Client`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import errno
import os
import threading
import weakref

from fsspec.asyn import AsyncFileSystem, sync
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractBufferedFile
from fsspec.utils import isfilelike

from .bounds import bounded
from .client import Client
from .errors import NotFound, ObjectChanged, P2PError, RangeNotSatisfiable
from .objects import BUCKET_NAME, ObjectInfo, may_move
from .signer import signer_from

__all__ = ["P2PCacheFileSystem", "P2PCacheFile", "FileExpired"]


class FileExpired(ObjectChanged, OSError):
    """The version a read was on is gone from S3: an OSError for fsspec's callers (errno EBUSY and
    the name of s3fs's error for the same case), still an ObjectChanged."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.EBUSY, message)

    def __reduce__(self):  # pickled with its message, not OSError's (errno, message)
        return type(self), (self.strerror,)


# Options fsspec's own base classes take (AsyncFileSystem; AbstractFileSystem's listings cache and
# instance cache): any other option than these and ours is a TypeError, not silently ignored.
_FSSPEC_OPTIONS = frozenset({"batch_size", "skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                             "max_paths"})
_OPTIONS = ("master", "concurrency", "block_size", "access_key", "secret_key", "region", "credentials", "tls_ca")


def _check_options(options: dict) -> None:
    """Raises TypeError naming the options neither this filesystem nor fsspec's base classes take."""
    unknown = sorted(set(options) - _FSSPEC_OPTIONS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise TypeError(f"p2pcache:// filesystem: unknown option {names}; it takes {', '.join(_OPTIONS)}"
                        f" (and fsspec's {', '.join(sorted(_FSSPEC_OPTIONS))}, asynchronous, loop)")


class P2PCacheFileSystem(AsyncFileSystem):
    """Read-only; `master=` (or env P2PCACHE_MASTER) is the master's URL.

    `access_key=`, `secret_key=`, `region=` or `credentials="env"` sign the reads
    with a reader key, and `tls_ca=` (a PEM bundle) is trusted on top of the system's CAs
    for an https:// cluster, as `Client` does. An unknown option is a TypeError.

    Paths are `bucket/key`. Objects are files; key prefixes ending in `/` are
    directories, listed with the workers' ListObjectsV2.
    """

    protocol = "p2pcache"
    root_marker = ""

    def __init__(self, master: str | None = None, *, concurrency: int = 16, block_size: int | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 credentials: str | None = None, tls_ca: str = "", asynchronous: bool = False, loop=None,
                 **fsspec_options) -> None:
        _check_options(fsspec_options)
        super().__init__(asynchronous=asynchronous, loop=loop, **fsspec_options)
        self.master = master or os.environ.get("P2PCACHE_MASTER", "")
        if not self.master:
            raise ValueError("p2pcache: give master='http://...' or set P2PCACHE_MASTER")
        self.block_size = _block_size(block_size)  # default: the ring's chunk size
        signer_from(access_key, secret_key, region, credentials)  # a bad option fails here, not at a read
        self._options = {"concurrency": concurrency, "access_key": access_key, "secret_key": secret_key,
                         "region": region, "credentials": credentials, "tls_ca": tls_ca}
        self._client: Client | None = None
        self._starting: asyncio.Future | None = None

    async def _get_client(self) -> Client:
        if self._client is None:
            if self._starting is None:  # one start however many first callers
                self._starting = asyncio.ensure_future(Client(self.master, **self._options).start())
            try:
                client = await asyncio.shield(self._starting)
            except BaseException:
                self._starting = None
                raise
            if self._client is None:
                self._client = client
                if not self.asynchronous:
                    weakref.finalize(self, _close_client, self.loop, client)
        return self._client

    async def _close(self) -> None:
        """Stop the client (its ring long-poll, its connections); it starts again on next use."""
        client, self._client, self._starting = self._client, None, None
        if client is not None:
            await client.close()

    def close(self) -> None:
        sync(self.loop, self._close)

    @classmethod
    def _strip_protocol(cls, path):
        """fsspec's, and a path's leading slashes, as s3fs drops them: `/bucket/key` and
        `p2pcache:///bucket/key` are `bucket/key`, not the root."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return super()._strip_protocol(path).lstrip("/")

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = self._strip_protocol(path).partition("/")
        return bucket, key

    def _split_file(self, path: str) -> tuple[str, str]:
        """`_split` of a path to read: a bucket (no key) is a directory, as `_info` says."""
        bucket, key = self._split(path)
        if not key:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return bucket, key

    async def _info(self, path: str, **kwargs) -> dict:
        bucket, key = self._split(path)
        if not bucket:
            return {"name": "", "size": 0, "type": "directory"}  # the root
        if not BUCKET_NAME.fullmatch(bucket):  # no bucket has that name: nothing is there
            raise FileNotFoundError(path)
        client = await self._get_client()
        if not key:  # a bucket is a directory, if it is there (NoSuchBucket: FileNotFoundError)
            await self._list(client, bucket, "", "/", max_pages=1)
            return {"name": bucket, "size": 0, "type": "directory"}
        try:
            info = await client.stat(bucket, key)
        except NotFound as exc:
            if await self._is_prefix(client, bucket, key):
                return {"name": f"{bucket}/{key.rstrip('/')}", "size": 0, "type": "directory"}
            raise FileNotFoundError(path) from exc
        return _file_entry(info)

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs) -> bytes:
        bucket, key = self._split_file(path)
        client = await self._get_client()
        try:  # negative offsets count from the end of the version read (the client resolves them)
            return await client.read(bucket, key, start or 0, end)
        except NotFound as exc:
            raise FileNotFoundError(path) from exc
        except ObjectChanged as exc:
            raise FileExpired(str(exc)) from exc
        except RangeNotSatisfiable as exc:  # it started over on a version that ends before `start`
            raise OSError(errno.EINVAL, f"{path}: {exc}") from exc

    async def _get_file(self, rpath: str, lpath, callback=DEFAULT_CALLBACK, **kwargs) -> None:
        """One version of the object, whole, to `lpath`: a path (by `Client.download`: chunks in
        parallel into a temp file renamed in) or an open file; a directory's `lpath` is made."""
        bucket, key = self._split(rpath)
        client = await self._get_client()
        try:
            entry = await self._info(rpath)  # the client keeps its version for the read that follows
            if entry["type"] == "directory":  # as fsspec's get_file: the directory is made
                if not isfilelike(lpath):
                    await asyncio.to_thread(os.makedirs, lpath, exist_ok=True)
                return
            if isfilelike(lpath):
                callback.set_size(entry["size"])
                async with contextlib.aclosing(client.stream(bucket, key)) as pieces:
                    async for piece in pieces:
                        await asyncio.to_thread(lpath.write, piece)
                        callback.relative_update(len(piece))
                return
            await client.download(bucket, key, lpath, lambda done, total: _progress(callback, done, total))
        except NotFound as exc:
            raise FileNotFoundError(rpath) from exc

    async def _ls(self, path: str, detail: bool = True, **kwargs):
        bucket, key = self._split(path)
        if not bucket:
            raise ValueError("p2pcache cannot list buckets: ls a bucket or a prefix")
        client = await self._get_client()
        prefix = key.rstrip("/") + "/" if key else ""
        objects, prefixes = await self._list(client, bucket, prefix, "/")
        entries = [_listed(bucket, o) for o in objects]
        entries += [{"name": f"{bucket}/{p.rstrip('/')}", "size": 0, "type": "directory"} for p in prefixes]
        if not entries and key:
            entries = [await self._info(path)]  # a file lists as itself; a missing path raises
            if entries[0]["type"] == "directory":
                entries = []
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    async def _find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, **kwargs):
        """Every object under `path` from one listing without a delimiter (with `withdirs`, the
        directories their keys name, and `path` itself), as s3fs does: a walk would miss keys
        holding `//` (a listing names `a//` a prefix, as it names `a/`)."""
        if maxdepth is not None:
            return await super()._find(path, maxdepth=maxdepth, withdirs=withdirs, **kwargs)
        bucket, key = self._split(path)
        client = await self._get_client()
        prefix = key.rstrip("/") + "/" if key else ""
        objects, _ = await self._list(client, bucket, prefix, "")
        entries = {e["name"]: e for e in (_listed(bucket, o) for o in objects)}
        if not entries and key and await self._isfile(path):
            entries = {f"{bucket}/{key}": await self._info(path)}
        elif withdirs and entries:
            top = f"{bucket}/{prefix}".rstrip("/")
            for name in list(entries):
                parent = name.rsplit("/", 1)[0]
                while len(parent) >= len(top) and parent not in entries:
                    entries[parent] = {"name": parent, "size": 0, "type": "directory"}
                    parent = parent.rsplit("/", 1)[0]
        names = sorted(entries)
        return {n: entries[n] for n in names} if kwargs.get("detail") else names

    def modified(self, path: str) -> datetime.datetime:
        """When the object was last written in S3 (an aware datetime, in UTC), as s3fs gives it."""
        entry = self.info(path)
        if entry["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return _when(entry.get("LastModified") or "", path)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, cache_type: str = "readahead", **kwargs) -> "P2PCacheFile":
        if mode != "rb":
            raise NotImplementedError(f"p2pcache is read-only: cannot open {path} with mode {mode!r}")
        info, chunk_size = sync(self.loop, self._pin, path)
        return P2PCacheFile(self, path, info, block_size=_block_size(block_size) or self.block_size or chunk_size,
                            cache_type=cache_type, cache_options=cache_options)

    async def _pin(self, path: str) -> tuple[ObjectInfo, int]:
        bucket, key = self._split_file(path)
        client = await self._get_client()
        try:  # nothing is read yet: the version the workers have now, not the client's remembered one
            return await client.stat(bucket, key, fresh=True), client.chunk_size
        except NotFound as exc:
            raise FileNotFoundError(path) from exc

    async def _read_pinned(self, info: ObjectInfo, start: int, end: int,
                           returned: bool) -> tuple[bytes, ObjectInfo]:
        """Bytes `[start, end)` of version `info`, and `info`; else, if the file may move to the
        version that replaced it (`objects.may_move`: it has `returned` nothing yet, and the size
        is the same), of that version, and that version. Any other change is a FileExpired; the
        object gone, a FileNotFoundError (both OSErrors, as s3fs raises)."""
        try:
            return await self._read_version(info, start, end, returned)
        except NotFound as exc:
            raise FileNotFoundError(f"{info.bucket}/{info.key}") from exc

    async def _read_version(self, info: ObjectInfo, start: int, end: int,
                            returned: bool) -> tuple[bytes, ObjectInfo]:
        client = await self._get_client()
        try:
            return await client.read_range(info, min(start, info.size), min(end, info.size)), info
        except ObjectChanged as exc:
            changed = exc
        if not returned:  # else no successor would do: not worth a HEAD
            new = await client.reresolve(info.bucket, info.key, changed)
            if may_move(info, new, returned):
                try:
                    return await client.read_range(new, min(start, new.size), min(end, new.size)), new
                except ObjectChanged as exc:
                    changed = exc
        raise FileExpired(f"{changed} (the file was opened on ETag {info.etag}, {info.size} bytes)") from changed

    async def _is_prefix(self, client: Client, bucket: str, key: str) -> bool:
        try:
            objects, prefixes = await client.list(bucket, key.rstrip("/") + "/", "/", max_pages=1)
        except P2PError:
            return False
        return bool(objects or prefixes)

    async def _list(self, client: Client, bucket: str, prefix: str, delimiter: str, max_pages: int | None = None):
        try:
            return await client.list(bucket, prefix, delimiter, max_pages)
        except NotFound as exc:
            raise FileNotFoundError(f"{bucket}/{prefix}") from exc


class P2PCacheFile(AbstractBufferedFile):
    """An fsspec file of one version of an object: every range is read with its ETag pinned.

    Opened on the version the workers have (not one the client remembers); if that one is gone
    before the file returned a byte, the file moves to its successor of the same size. A change
    after that, or to another size, fails the read with FileExpired (an OSError); a delete, with
    FileNotFoundError.
    """

    def __init__(self, fs: P2PCacheFileSystem, path: str, info: ObjectInfo, **kwargs) -> None:
        self.object_info = info
        self._returned = False  # a fetch succeeded: the caller may hold bytes of `object_info`
        self._lock = threading.Lock()  # fsspec's "background" cache fetches from another thread too
        super().__init__(fs, path, mode="rb", size=info.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with self._lock:
            pinned, returned = self.object_info, self._returned
        data, read = sync(self.fs.loop, self.fs._read_pinned, pinned, start, end, returned)
        with self._lock:  # a fetch that moved, racing one that returned the old version: never both
            if self._returned and read.etag != self.object_info.etag:
                raise FileExpired(f"s3://{read.bucket}/{read.key} changed while the file was read "
                                  f"(ETag {self.object_info.etag}, now {read.etag})")
            self.object_info, self._returned = read, True
        return data


def _block_size(value: int | None) -> int | None:
    """`block_size` if it is None or a whole number of bytes from 1 (a negative one cut reads short)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"p2pcache:// filesystem: block_size is a number of bytes, not {value!r}")
    return bounded("block_size", value, 1)


def _when(text: str, path: str) -> datetime.datetime:
    """A LastModified: an HTTP date (a HEAD's) or ISO 8601 (a listing's)."""
    try:
        when = email.utils.parsedate_to_datetime(text) if "," in text else datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise OSError(errno.EIO, f"{path}: S3 gave no modification time it could read: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def _file_entry(info: ObjectInfo) -> dict:
    return {"name": f"{info.bucket}/{info.key}", "size": info.size, "type": "file", "ETag": info.etag,
            "LastModified": info.last_modified, "ContentType": info.content_type}


def _listed(bucket: str, o: dict) -> dict:
    return {"name": f"{bucket}/{o['Key']}", "size": o["Size"], "type": "file", "ETag": o["ETag"],
            "LastModified": o["LastModified"]}


def _progress(callback, done: int, total: int) -> None:
    callback.set_size(total)
    callback.absolute_update(done)


def _close_client(loop, client: Client) -> None:
    if loop is not None and loop.is_running():
        with contextlib.suppress(Exception):
            sync(loop, client.close, timeout=1)
