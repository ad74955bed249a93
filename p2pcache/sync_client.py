"""`SyncClient`: the loader client for synchronous code, its event loop in a thread of its own."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import CancelledError
from typing import Awaitable, Callable, TypeVar

from .client import Client
from .fileobj import ObjectFile
from .objects import ObjectInfo

__all__ = ["SyncClient", "CLOSE_WAIT"]

log = logging.getLogger("p2pcache.client")
T = TypeVar("T")
CLOSE_WAIT = 10.0  # seconds close() waits for the calls it cancelled to unwind (a write to disk ends first)
CLOSED = "the client is closed"  # what a call cut by close() or made after it fails with, as Client's


class SyncClient:
    """`Client`'s methods, blocking: the async client runs on an event loop in a thread of its own."""

    def __init__(self, master_url: str, **options) -> None:
        if "session" in options:
            raise TypeError("SyncClient makes its own session, on its own event loop")
        self._client = Client(master_url, **options)  # bad arguments: refused before a thread starts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="p2pcache-client", daemon=True)
        self._lock = threading.Lock()  # a call is handed to the loop before close() begins, or fails
        self._pid = os.getpid()  # the process the loop's thread runs in (a fork() child has no such thread)
        self.closed = False
        self._thread.start()
        try:
            self._call(self._client.start())
        except BaseException:
            self.close()
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
        """Cancel the calls in flight (each fails with ValueError once it has unwound: a download's
        temp file is gone by then), close the async client and end its loop. Returns once that is
        done, or after CLOSE_WAIT seconds (logged): what is still unwinding ends on its own thread."""
        self._refuse_own_loop()
        if self._forked:  # a fork() child's copy: its loop, thread (and lock) are the parent's
            self.closed = True
            return
        with self._lock:
            if self.closed:
                return
            self.closed = True
        shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        shutdown.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
        self._thread.join(CLOSE_WAIT)
        if self._thread.is_alive():
            log.warning("SyncClient.close: calls still unwinding after %g s; they end on the client's thread",
                        CLOSE_WAIT)
            return
        shutdown.result()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, coro: Awaitable[T]) -> T:
        try:
            self._refuse_fork_child()
            self._refuse_own_loop()
            with self._lock:  # once close() began, nothing new reaches the loop it stops
                if self.closed:
                    raise ValueError(CLOSED)
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except BaseException:
            coro.close()
            raise
        try:
            return future.result()
        except CancelledError:
            if self.closed:  # close() cancelled it
                raise ValueError(CLOSED) from None
            raise
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the read too
            raise

    def _refuse_own_loop(self) -> None:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("a SyncClient method was called from its own event loop: use the async Client")

    @property
    def _forked(self) -> bool:
        """Whether this is a fork() child's copy: the loop's thread is not in this process."""
        return os.getpid() != self._pid

    def _refuse_fork_child(self) -> None:
        if self._forked:  # the call would wait for a thread that is not in this process
            raise RuntimeError(f"this SyncClient was made in process {self._pid}, before a fork(): its event "
                               "loop's thread is not in this process; make a SyncClient in the child")

    def _run(self) -> None:
        """The loop's thread: it serves calls until close() stops it, then closes it."""
        try:
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        """On the loop: every task on it (calls, an ObjectFile's chunks, the ring follower) cancelled
        and awaited, then the client closed. No task is left pending when the loop closes, so every
        caller's future resolves."""
        self._client.closed = True  # a read starting now fails at once, with CLOSED
        me = asyncio.current_task()
        while others := [task for task in asyncio.all_tasks() if task is not me]:
            for task in others:
                task.cancel()
            await asyncio.wait(others)
        await self._client.close()
