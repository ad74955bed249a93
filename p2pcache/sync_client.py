"""`SyncClient`: the loader client for synchronous code, its event loop in a thread of its own."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Awaitable, Callable, TypeVar

from .client import Client
from .fileobj import ObjectFile
from .objects import ObjectInfo

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """`Client`'s methods, blocking: the async client runs on an event loop in a thread of its own."""

    def __init__(self, master_url: str, **options) -> None:
        if "session" in options:
            raise TypeError("SyncClient makes its own session, on its own event loop")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="p2pcache-client", daemon=True)
        self._thread.start()
        self._client = Client(master_url, **options)
        self.closed = False
        try:
            self._call(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def client(self) -> Client:
        return self._client

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        return self._call(self._client.stat(bucket, key))

    def read(self, bucket: str, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self._call(self._client.read(bucket, key, start, end))

    def read_into(self, bucket: str, key: str, buffer, start: int = 0) -> int:
        return self._call(self._client.read_into(bucket, key, buffer, start))

    def download(self, bucket: str, key: str, path: str | os.PathLike,
                 progress: Callable[[int, int], None] | None = None, **kwargs) -> ObjectInfo:
        """As Client.download; `progress` is called on the client's thread."""
        return self._call(self._client.download(bucket, key, path, progress, **kwargs))

    def open(self, bucket: str, key: str) -> ObjectFile:
        return self._call(self._client.open(bucket, key))

    def list(self, bucket: str, prefix: str = "", delimiter: str = "") -> tuple[list[dict], list[str]]:
        return self._call(self._client.list(bucket, prefix, delimiter))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, coro: Awaitable[T]) -> T:
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a SyncClient method was called from its own event loop: use the async Client")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the read too
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
