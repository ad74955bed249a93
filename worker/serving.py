"""A serving process: answers reads of chunks on disk from their files and of chunks other
workers hold from those workers; passes the rest to the coordinator.

Started by the coordinator (worker/procs.py) with its settings as one JSON line
on stdin; it listens on the worker's port with SO_REUSEPORT, prints a ready
line, and serves until SIGTERM (or its coordinator's death). Every use of a
chunk and every request it answered is reported to the coordinator in batches
(`Reports`), so eviction still sees second uses and the worker's metrics add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncGenerator, AsyncIterator, Callable

import uvloop
from aiohttp import web

from p2pcache import conditions, tls
from p2pcache.auth import Verifier
from p2pcache.errors import CorruptChunk, P2PError, PeerError
from p2pcache.httplog import QuietParseErrors
from p2pcache.objects import ChunkId, ObjectInfo
from p2pcache.ranges import chunk_spans
from p2pcache.service import setup_logging
from p2pcache.singleflight import SingleFlight

from . import inputs
from .chunkfiles import ChunkFiles
from .fastpath import FastPath, Head, response_head
from .forward import LOCAL_PREFIX, OBJECT_PATH, REPORT_PATH, REST_PATH, TOKEN_HEADER, CoordinatorClient
from .http import REQUEST_ID, error_response, object_answer
from .limits import TokenBucket
from .peerfiles import PeerFiles
from .peer import PeerStream
from .peerreads import PeerReads
from .readers import ClientKey, Readers
from .store import read_now, read_pieces

__all__ = ["ServingProcess", "Read", "Reports", "main"]

log = logging.getLogger("p2pcache.worker.serving")
_BUCKET = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9.\-]*")
# Requests whose answer depends on more than the object's identity and bytes: the coordinator's.
_COORDINATOR_HEADERS = ("Cache-Control", "x-amz-checksum-mode")
SMALL = 512 << 10  # as worker/chunks.py: sent as one Response
MAX_CHUNKS = 64  # chunks a read may span and still be answered here (each is opened before the status line)
STREAM_BUDGET, MIN_PIECE, MAX_PIECE = 16 << 20, 64 << 10, 1 << 20
REPORT_INTERVAL = 0.2  # seconds between reports: how stale the worker's metrics may be
RING_CHECK = 5  # report intervals between reports sent with nothing to report (they learn the ring's version)
SWEEP_INTERVAL = 1.0  # seconds an evicted chunk's file may stay open here when nobody reads it
OBJECT_CACHE = 10_000


class ServingProcess:
    def __init__(self, settings: dict) -> None:
        self.s = settings
        self.index = settings["index"]
        self.files = ChunkFiles(Path(settings["cache_dir"]))
        self.coordinator = CoordinatorClient(settings["socket"], {TOKEN_HEADER: settings["token"]})
        keys = tuple(ClientKey(k, secret, frozenset(b)) for k, secret, b in settings.get("client_keys", ()))
        self.readers = Readers(keys, time.time) if keys else None
        self.allowed = frozenset(settings.get("allowed_buckets", ()))
        limit = settings.get("egress_limit", 0)
        self.egress = TokenBucket(limit) if limit else None
        self.ttl = settings.get("meta_ttl", 5.0) / 2  # the coordinator's copy is at most as old
        self._objects: dict[tuple[str, str], tuple[float, ObjectInfo, int]] = {}
        self._lookups = SingleFlight()
        self.reports = Reports()
        secret = bytes.fromhex(settings["secret"]) if settings.get("secret") else None
        self.peer_files = PeerFiles(self, Verifier(secret) if secret else None)
        self.peer_reads = PeerReads(self.coordinator, secret, settings.get("tls_ca", ""),
                                    settings.get("peer_read_timeout", 60.0), self.reports.corrupt_transfer)
        self._streams = 0
        self._rid_prefix, self._rids = uuid.uuid4().hex[:6].upper() + f"{self.index:02X}", itertools.count()
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._fast: set[FastPath] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        s = self.s
        ssl = await asyncio.to_thread(tls.server_context, s.get("tls_cert", ""), s.get("tls_key", ""))
        server = web.Server(self.handle, access_log=None, handler_cancellation=True,
                            logger=QuietParseErrors(logging.getLogger("p2pcache.worker.http")))
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=s.get("drain_timeout", 20))
        await self._runner.setup()
        await self.peer_reads.start()
        # Connections start on the fast path, and move to aiohttp's `server` at the first
        # request it does not answer (worker/fastpath.py).
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: FastPath(self.answer_now, self.answer_fast, server, self._fast), s["host"], s["port"], ssl=ssl,
            backlog=128, reuse_port=True)
        self._tasks = [asyncio.create_task(self._report_loop()), asyncio.create_task(self._sweep_loop())]

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + self.s.get("drain_timeout", 20)
        while any(conn.busy for conn in self._fast) and time.monotonic() < deadline:
            for conn in [c for c in self._fast if not c.busy]:
                conn.close()
            await asyncio.sleep(0.05)
        for conn in list(self._fast):
            conn.close()
        if self._runner:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(P2PError):
            await self._flush()
        await self._lookups.close()
        await self.peer_reads.close()
        await self.coordinator.close()
        self.files.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request[REQUEST_ID] = self._request_id()
        try:
            if request.path.startswith(LOCAL_PREFIX):
                raise web.HTTPNotFound()
            if request.path.startswith("/_p2p/"):
                resp = await self.peer_files.answer(request)
            else:
                resp = await self._from_files(request)
            if resp is None:
                return await self.coordinator.forward(request)
        except P2PError as exc:  # the coordinator is unreachable
            resp = error_response(request, exc)
        except web.HTTPException as exc:
            resp = web.Response(status=exc.status, reason=exc.reason, text=exc.text)
        except ConnectionError:
            resp = web.Response(status=499)
        except Exception:
            log.exception("bug: unhandled error for %s %r", request.method, request.path)
            resp = web.Response(status=500, text="internal error, see the worker's log\n")
        if not resp.prepared:
            resp.headers["x-amz-request-id"] = request[REQUEST_ID]
        self.reports.request(request.method, resp.status)
        return resp

    def answer_now(self, head: Head, used: int, conn: FastPath) -> bool:
        """Answer a small read of a cached object from a chunk file in the page cache at once:
        nothing to wait for, so no task. False (nothing sent): `answer_fast`'s to answer."""
        if self.egress is not None:
            return False
        target = self._target("GET", head.path, "", head.headers)
        entry = self._objects.get(target) if target else None
        if entry is None or entry[0] <= time.monotonic():
            return False
        if self.readers:
            try:
                self.readers.check(head, target[0])
            except P2PError:
                return False
        found = self._planned(entry[1:], head.headers)
        if found is None:
            return False
        status, out, info, chunk_size, start, stop = found
        index, offset = divmod(start, chunk_size)
        if (stop - 1) // chunk_size != index or stop - start > SMALL:
            return False
        with contextlib.ExitStack() as pins:
            file = self._pin(pins, info.chunk(index, chunk_size).name)
            try:
                data = read_now(file, offset, stop - start) if file is not None else None
            except (CorruptChunk, OSError):  # read again by answer_fast, which reports it
                return False
            if data is None or not self._send_whole(head, used, conn, status, out, data):
                return False
            self.reports.read(file.name, len(data))
            return True

    def _send_whole(self, head: Head, used: int, conn: FastPath, status: int, headers: dict, data) -> bool:
        top = response_head(status, headers, len(data), self._request_id(), head.close)
        if top is None:
            return False
        conn.take(used)
        self.reports.request("GET", status, fast=True)
        conn.writelines([top, data])
        return True

    def _request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rids):08X}"

    async def answer_fast(self, head: Head, used: int, conn: FastPath) -> bool:
        """Answer a fast-path GET on `conn`; False (nothing sent): aiohttp's to answer."""
        if head.path.startswith("/_p2p/"):
            return False
        found = await self.read("GET", head.path, "", head.headers, head)
        if found is None:
            return False
        if found.body is not None:
            return self._send_whole(head, used, conn, found.status, found.headers, found.body)
        top = response_head(found.status, found.headers, found.length, self._request_id(), head.close)
        if top is None:
            await found.aclose()
            return False
        conn.take(used)
        self.reports.request("GET", found.status, fast=True)
        try:
            conn.write(top)
            async for data in found.pieces:
                conn.write(data)
                await conn.drain()
        except ConnectionError:
            pass
        except P2PError as exc:  # the coordinator could not send the rest: cut the answer short
            log.warning("aborting GET %s after headers: %s", head.path, exc)
            conn.abort()
        finally:
            await found.aclose()
        return True

    async def _from_files(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """The answer from chunk files on disk or the workers that hold them, or None: the coordinator's."""
        found = await self.read(request.method, request.path, request.query_string, request.headers, request)
        if found is None:
            return None
        if found.body is not None:
            return web.Response(status=found.status, headers=found.headers, body=found.body)
        return await self._stream(request, found)

    async def read(self, method: str, path: str, query: str, headers, request) -> Read | None:
        """A read this process answers (its bytes checked), or None: the coordinator's to answer.
        `request` is what the reader keys check the signature of (method, raw_path, headers)."""
        if self.readers:
            try:
                self.readers.check(request, path[1:].partition("/")[0])
            except P2PError:  # the coordinator answers the error
                return None
        found = await self.plan(method, path, query, headers)
        if found is None:
            return None
        status, out, info, chunk_size, start, stop = found
        if (stop - 1) // chunk_size == start // chunk_size and stop - start <= SMALL:
            data = await self.read_small(info, chunk_size, start, stop)
            if data is None:
                return None
            if self.egress is not None:
                await self.egress.take(len(data))
            return Read(status, out, len(data), data)
        pins = contextlib.ExitStack()
        try:
            sources = []  # per chunk: its file here, or the workers to ask for it
            for span in chunk_spans(start, stop, chunk_size):
                c = info.chunk(span.index, chunk_size)
                file = self._pin(pins, c.name)
                peers = self.peer_reads.peers(c) if file is None else None
                if file is None and peers is None:
                    pins.close()
                    return None  # this worker's to fill: the coordinator's
                sources.append((span, c, file, peers))
            first = None
            if sources[0][2] is None:  # opened before the status line: if no owner answers, pass it on
                span, c, _, peers = sources[0]
                first = await self.peer_reads.open(c, span.offset, span.length, peers)
                if first is None:
                    pins.close()
                    return None
        except BaseException:
            pins.close()
            raise
        def release() -> None:
            pins.close()
            if first is not None:
                first.close()

        pieces = self._pieces(info, start, stop, sources, first, release)
        return Read(status, out, stop - start, None, pieces, release)

    async def plan(self, method: str, path: str, query: str, headers) -> tuple | None:
        """(status, headers, info, chunk size, start, stop) of a read this process may answer
        from chunk files, or None: the coordinator's to answer (not a plain GET, an error, ...)."""
        target = self._target(method, path, query, headers)
        found = await self._object(*target) if target else None
        return self._planned(found, headers) if found else None

    def _target(self, method: str, path: str, query: str, headers) -> tuple[str, str] | None:
        """(bucket, key) of a plain GET this process may answer, or None."""
        if method != "GET" or query or path.startswith("/_p2p/") or not self.ttl:
            return None  # --meta-ttl 0: one HEAD per read, the coordinator's
        bucket, _, key = path[1:].partition("/")
        if not key or not _BUCKET.fullmatch(bucket) or (self.allowed and bucket not in self.allowed):
            return None
        if any(h in headers for h in _COORDINATOR_HEADERS):
            return None
        try:
            inputs.check_key(key)
        except P2PError:
            return None
        return bucket, key

    def _planned(self, found: tuple[ObjectInfo, int], headers) -> tuple | None:
        info, chunk_size = found
        if conditions.evaluate(headers, info.etag, info.last_modified) is not None:
            return None  # 304, or 412 (the coordinator asks S3 for a newer version first)
        try:
            status, out, start, stop = object_answer(info, headers.get("Range"), None, {})
        except P2PError:
            return None
        if start >= stop or (stop - 1) // chunk_size - start // chunk_size >= MAX_CHUNKS:
            return None
        return status, out, info, chunk_size, start, stop

    async def read_small(self, info: ObjectInfo, chunk_size: int, start: int, stop: int) -> bytearray | None:
        """Bytes `[start, stop)` (inside one chunk) from its file, checked; None if it is not here or bad."""
        index, offset = divmod(start, chunk_size)
        c = info.chunk(index, chunk_size)
        with contextlib.ExitStack() as pins:
            file = self._pin(pins, c.name)
            if file is None:
                return await self._small_from_peer(c, offset, stop - start)
            try:
                async for data in read_pieces(file, offset, stop - start, SMALL + (64 << 10)):
                    pass
            except CorruptChunk as exc:
                self.reports.corrupt(exc.name)
                return None
            except OSError:  # the coordinator's read finds out what is wrong with the disk
                return None
            self.reports.read(file.name, len(data))
            return data

    async def _small_from_peer(self, c: ChunkId, offset: int, length: int) -> bytearray | None:
        """A small range of a chunk another worker holds, from that worker; None: the coordinator's."""
        peers = self.peer_reads.peers(c)
        stream = await self.peer_reads.open(c, offset, length, peers) if peers else None
        if stream is None:
            return None
        data = bytearray()
        try:
            async for piece in stream:
                data += piece
        except PeerError:
            self.peer_reads.failed(stream.peer)
            return None
        self.reports.miss()
        return data

    def _pin(self, pins: contextlib.ExitStack, name: str):
        """The chunk's open file, held until `pins` closes; None if it is not here or unreadable."""
        try:
            return pins.enter_context(self.files.pinned(name))
        except CorruptChunk as exc:
            self.reports.corrupt(exc.name)
        except OSError:  # the coordinator's read finds out what is wrong with the disk
            pass
        return None

    async def _stream(self, request, found: Read) -> web.StreamResponse:
        resp = web.StreamResponse(status=found.status, headers=found.headers)
        resp.content_length = found.length
        resp.headers["x-amz-request-id"] = request[REQUEST_ID]
        try:
            await resp.prepare(request)
            async for data in found.pieces:
                await resp.write(data)
            await resp.write_eof()
        except ConnectionError:
            pass
        except P2PError as exc:  # the coordinator could not send the rest: cut the answer short
            log.warning("aborting %s %s after headers: %s", request.method, request.path, exc)
            if request.transport is not None:
                request.transport.close()
        finally:
            await found.aclose()
        return resp

    async def _pieces(self, info: ObjectInfo, start: int, stop: int, sources, first: PeerStream | None,
                      release: Callable[[], None]) -> AsyncIterator[bytes | bytearray]:
        """The bytes `[start, stop)`, checked, from the chunks' `sources` (`release` closes their
        files and `first` at the end); what no source can give, the coordinator reads. P2PError
        if it cannot."""
        piece = min(MAX_PIECE, max(MIN_PIECE, STREAM_BUDGET // (self._streams + 1)))
        self._streams += 1
        pos = start
        ahead: asyncio.Task | None = None
        stream = None
        try:
            try:
                for i, (span, c, file, peers) in enumerate(sources):
                    if file is not None:
                        self.reports.read(file.name, 0)
                        pieces = read_pieces(file, span.offset, span.length, piece)
                    else:
                        if i == 0:
                            stream = first
                        elif ahead is not None:
                            stream, ahead = await ahead, None
                        else:
                            stream = await self.peer_reads.open(c, span.offset, span.length, peers)
                        if stream is None:  # no owner answered: the coordinator reads the rest
                            raise _Rest()
                        self.reports.miss()
                        pieces = stream.__aiter__()
                    ahead = self._open_next(sources, i + 1)  # the next peer chunk's first bytes meanwhile
                    async with contextlib.aclosing(pieces):
                        async for data in pieces:
                            yield await self._sent(data)
                            pos += len(data)
                            # The other answers' turn: a piece read from the page cache and sent
                            # into a roomy socket buffer never waits, so without this one large
                            # read would hold the process until its last byte (4 MiB, c=64, two
                            # processes: p99 270-330 ms without, 151-158 ms with).
                            await asyncio.sleep(0)
            except (CorruptChunk, OSError, PeerError, _Rest) as exc:  # nothing of a bad block went out:
                if isinstance(exc, ConnectionError):  # the coordinator reads the rest (and drops or
                    raise  # refills a corrupt chunk here; a peer that failed is asked last for a while)
                if isinstance(exc, CorruptChunk):
                    self.reports.corrupt(exc.name)
                if isinstance(exc, PeerError) and stream is not None:
                    self.peer_reads.failed(stream.peer)
                async for data in self.coordinator.rest(info, pos, stop):
                    yield await self._sent(data)
        finally:
            self._streams -= 1
            release()
            if ahead is not None:
                ahead.cancel()
                ahead.add_done_callback(_close_opened)

    def _open_next(self, sources, i: int) -> asyncio.Task | None:
        """Open the next chunk's stream if a peer holds it (a task, awaited when it is reached)."""
        if i >= len(sources) or sources[i][2] is not None:
            return None
        span, c, _, peers = sources[i]
        return asyncio.ensure_future(self.peer_reads.open(c, span.offset, span.length, peers))

    async def _sent(self, data):
        """`data`, once the egress limit lets it go (counted as sent: the caller sends it)."""
        if self.egress is not None:
            await self.egress.take(len(data))
        self.reports.sent(len(data))
        return data

    async def _object(self, bucket: str, key: str) -> tuple[ObjectInfo, int] | None:
        """The object's identity and the ring's chunk size, cached for half the --meta-ttl."""
        entry = self._objects.get((bucket, key))
        if entry is not None and entry[0] > time.monotonic():
            return entry[1], entry[2]
        return await self._lookups.do((bucket, key), lambda: self._lookup(bucket, key))

    async def _lookup(self, bucket: str, key: str) -> tuple[ObjectInfo, int] | None:
        got = await self.coordinator.get_json(OBJECT_PATH, {"bucket": bucket, "key": key,
                                                             "max_age": str(self.ttl)})
        if got is None:  # not found, no ring yet, S3 failing: the coordinator says which
            return None
        info = ObjectInfo(bucket, key, got["etag"], got["size"], got["last_modified"], got["content_type"],
                          tuple(map(tuple, got["headers"])))
        if len(self._objects) >= OBJECT_CACHE:
            del self._objects[next(iter(self._objects))]
        self._objects[(bucket, key)] = (time.monotonic() + self.ttl, info, got["chunk_size"])
        await self.peer_reads.seen(got.get("ring"))
        return info, got["chunk_size"]

    async def _report_loop(self) -> None:
        for n in itertools.count(1):
            await asyncio.sleep(REPORT_INTERVAL)
            try:
                await self._flush(force=n % RING_CHECK == 0)
            except P2PError as exc:
                log.warning("report to the coordinator lost: %s", exc)

    async def _flush(self, force: bool = False) -> None:
        batch = self.reports.take(self.index, force)
        if batch is not None:
            answer = await self.coordinator.post_json(REPORT_PATH, batch)
            if answer:
                await self.peer_reads.seen(answer.get("ring"))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.files.sweep(await asyncio.to_thread(self.files.stale, self.files.snapshot()))


class Reports:
    """What a serving process tells its coordinator: chunk uses, corrupt chunks, requests, bytes."""

    def __init__(self) -> None:
        self._touched: Counter[str] = Counter()
        self._corrupt: set[str] = set()
        self._requests: Counter[str] = Counter()
        self._bytes = 0
        self._peer_bytes = 0
        self._hits = 0
        self._misses = 0
        self._corrupt_transfers = 0
        self._fast = 0

    def read(self, name: str, sent: int) -> None:
        self._touched[name] += 1
        self._hits += 1
        self._bytes += sent

    def sent_to_peer(self, n: int) -> None:
        self._peer_bytes += n

    def sent(self, n: int) -> None:
        self._bytes += n

    def corrupt(self, name: str) -> None:
        self._corrupt.add(name)

    def miss(self) -> None:
        """A chunk read from the worker that holds it."""
        self._misses += 1

    def corrupt_transfer(self) -> None:
        self._corrupt_transfers += 1

    def request(self, method: str, status: int, fast: bool = False) -> None:
        self._requests[f"{method} {status}"] += 1
        self._fast += fast

    def take(self, index: int, force: bool = False) -> dict | None:
        """The batch since the last one (None if there is nothing to say, unless `force`), and a fresh start."""
        if not (self._touched or self._corrupt or self._requests or force):
            return None
        batch = {"process": index, "touched": dict(self._touched), "corrupt": sorted(self._corrupt),
                 "requests": dict(self._requests), "bytes": self._bytes, "hits": self._hits,
                 "peer_bytes": self._peer_bytes, "misses": self._misses,
                 "corrupt_transfers": self._corrupt_transfers, "fast": self._fast}
        self.__init__()
        return batch


@dataclass
class Read:
    """A read a serving process answers: whole (`body`, small) or in `pieces` (an async
    generator holding the chunks' files open; close it, whether or not it was iterated)."""

    status: int
    headers: dict[str, str]
    length: int
    body: bytes | bytearray | None
    pieces: AsyncGenerator[bytes | bytearray, None] | None = None
    release: Callable[[], None] = lambda: None  # what `pieces` closes when it ends, if it never started

    async def aclose(self) -> None:
        if self.pieces is not None:
            await self.pieces.aclose()
        self.release()


class _Rest(Exception):
    """No owner answered for a chunk mid-read: the coordinator reads the rest."""


def _close_opened(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None and task.result() is not None:
        task.result().close()


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the coordinator dies (Linux), so a serving process never outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(0)


def main() -> int:
    settings = json.loads(sys.stdin.readline())
    setup_logging(settings.get("log_level", "INFO"))
    _die_with_parent(settings["parent"])

    async def run() -> None:
        process = ServingProcess(settings)
        await process.start()
        print(f"serving ready pid={os.getpid()}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await process.stop()

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
