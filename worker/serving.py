"""A serving process: answers reads of chunks on disk from their files and of chunks other
workers hold from those workers; passes the rest to the coordinator.

Started by the coordinator (worker/procs.py) with its settings as one JSON line
on stdin; it listens on the worker's port with SO_REUSEPORT, prints a ready
line, and serves until SIGTERM (or its coordinator's death). Every use of a
chunk and every request it answered is reported to the coordinator in batches
(`Reports`), so eviction still sees second uses and the worker's metrics add up.
What it reads and how is worker/reads.py; the HTTP it speaks for plain reads, worker/fastpath.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import uvloop
from aiohttp import web

from p2pcache import tls
from p2pcache.auth import Verifier
from p2pcache.errors import P2PError
from p2pcache.httplog import QuietParseErrors
from p2pcache.httpserver import HEAD_TIMEOUT, IDLE_TIMEOUT, Server
from p2pcache.service import die_with_parent, few_malloc_arenas, setup_logging, std_fds_open

from . import inputs
from .budget import SERVING_PIECES, PieceBudget
from .chunkfiles import ChunkFiles
from .fastpath import FastPath, Head, response_head
from .forward import ID_PATH, LOCAL_PREFIX, REPORT_PATH, TOKEN_HEADER, CoordinatorClient
from .generation import Generation
from .http import REQUEST_ID, RequestLine, answered, body_response, error_answer, log_error, send_body
from .limits import TokenBucket
from .peerfiles import PeerFiles
from .peerreads import PeerReads
from .readers import ClientKey, Readers
from .reads import Read, Reads
from .reports import Reports
from .turns import Turn, Turns

__all__ = ["ServingProcess", "main"]

log = logging.getLogger("p2pcache.worker.serving")
REPORT_INTERVAL = 0.2  # seconds between reports: how stale the worker's metrics may be
RING_CHECK = 5  # report intervals between reports sent with nothing to report (they learn the ring's version)
SWEEP_INTERVAL = 1.0  # seconds an evicted chunk's file may stay open here when nobody reads it
_FORWARDED = web.RequestKey("forwarded", bool)  # answered by the coordinator, which counts it


class ServingProcess:
    def __init__(self, settings: dict) -> None:
        self.s = settings
        self.index = settings["index"]
        self.files = ChunkFiles(Path(settings["cache_dir"]))
        self.coordinator = CoordinatorClient(settings["socket"], {TOKEN_HEADER: settings["token"]})
        keys = tuple(ClientKey(k, secret, frozenset(b)) for k, secret, b in settings.get("client_keys", ()))
        limit = settings.get("egress_limit", 0)
        self.reports = Reports()
        secret = bytes.fromhex(settings["secret"]) if settings.get("secret") else None
        budget = PieceBudget(SERVING_PIECES)
        self.generation = Generation(settings["generation"])  # the coordinator's, read-only
        self.turns = Turns(settings.get("max_reads") or budget.floor_streams, settings.get("read_wait", 15.0),
                           settings.get("send_timeout", 60.0), self.reports.stalled)
        self.peer_reads = PeerReads(self.coordinator, secret, settings.get("tls_ca", ""),
                                    settings.get("peer_read_timeout", 60.0), self.reports.corrupt_transfer,
                                    piece=budget.piece, on_bytes=self.reports.from_peer)
        self.reads = Reads(self.files, self.coordinator, self.peer_reads, self.reports, budget,
                           Readers(keys, time.time) if keys else None,
                           frozenset(settings.get("allowed_buckets", ())),
                           TokenBucket(limit) if limit else None,
                           settings.get("meta_ttl", 5.0) / 2,  # the coordinator's copy is at most as old
                           self.generation)
        self.worker_id = ""  # the coordinator's (`start`): peers' requests are signed for it
        self.peer_files = PeerFiles(self.reads, Verifier(secret, me=lambda: self.worker_id) if secret else None)
        self._rid_prefix, self._rids = uuid.uuid4().hex[:6].upper() + f"{self.index:02X}", itertools.count()
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._fast: set[FastPath] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        s = self.s
        ssl = await asyncio.to_thread(tls.server_context, s.get("tls_cert", ""), s.get("tls_key", ""))
        head, idle = s.get("head_timeout", HEAD_TIMEOUT), s.get("idle_timeout", IDLE_TIMEOUT)
        server = Server(self.handle, access_log=None, handler_cancellation=True,
                        logger=QuietParseErrors(logging.getLogger("p2pcache.worker.http")),
                        head_timeout=head, idle_timeout=idle)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=s.get("drain_timeout", 20))
        await self._runner.setup()
        self.worker_id = (await self.coordinator.get_json(ID_PATH, {}))["id"]
        await self.peer_reads.start()
        # Connections start on the fast path, and move to aiohttp's `server` at the first
        # request it does not answer (worker/fastpath.py).
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: FastPath(self.answer_now, self.answer_fast, server, self._fast, head, idle), s["host"], s["port"],
            ssl=ssl, backlog=128, reuse_port=True)
        self._tasks = [asyncio.create_task(self._report_loop()), asyncio.create_task(self._sweep_loop())]

    async def stop(self) -> None:
        """Stop accepting, then let in-flight reads finish, on both paths, for `drain_timeout` in all."""
        if self._listener is not None:
            self._listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.get("drain_timeout", 20)
        while any(conn.busy for conn in self._fast) and loop.time() < deadline:
            for conn in [c for c in self._fast if not c.busy]:
                conn.close()
            await asyncio.sleep(0.05)
        for conn in list(self._fast):
            conn.close()
        if self._runner:
            self._runner.server.finish_by(deadline)  # what the fast path's reads took is not given again
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(P2PError):
            await self._flush()
        await self.reads.close()
        await self.turns.close()
        await self.peer_reads.close()
        await self.coordinator.close()
        self.files.close()
        self.generation.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request[REQUEST_ID] = self._request_id()
        resp = await answered(request, self._route)
        if not request.get(_FORWARDED):  # the coordinator counts what it answers
            self.reports.request(request.method, resp.status)
        return resp

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        """The answer from this process, else the coordinator's (a P2PError if it is unreachable)."""
        if request.path.startswith(LOCAL_PREFIX):
            raise web.HTTPNotFound()
        if request.path.startswith("/_p2p/"):
            resp = await self.peer_files.answer(request)
        else:
            inputs.request_path(request)  # before the coordinator's URL drops a "#" and what follows
            resp = await self._from_files(request)
        if resp is None:
            resp = await self.coordinator.forward(request)
            request[_FORWARDED] = True
        return resp

    def answer_now(self, head: Head, used: int, conn: FastPath) -> bool:
        """Answer a small read on `conn` at once if nothing has to wait (no task); False (nothing
        sent): `answer_fast`'s to answer."""
        found = self.reads.read_now(head)
        if found is None or not self.turns.free():  # `answer_fast` waits for a turn
            return False
        sent = self._send_whole(head, used, conn, found)
        if conn.paused:  # its bytes wait in this process, not only in the kernel: a turn until they drain
            turn = self.turns.now(conn)
            conn.after_drained(lambda: self.turns.give_back(turn))
        return sent

    def _send_whole(self, head: Head, used: int, conn: FastPath, found: Read) -> bool:
        top = self._begin(head, used, conn, found)
        if top is not None:
            conn.writelines([top, found.body])
        return top is not None

    def _begin(self, head: Head, used: int, conn: FastPath, found: Read) -> bytes | None:
        """The answer's status line and headers, its request taken off `conn` and counted; None
        (nothing taken) if a header cannot be sent as is: aiohttp's to answer."""
        top = response_head(found.status, found.headers, found.length, self._request_id(), head.close)
        if top is not None:
            conn.take(used)
            self.reports.request("GET", found.status, fast=True)
        return top

    def _send_error(self, head: Head, used: int, conn: FastPath, exc: P2PError) -> bool:
        """Answer `exc` on `conn` as `answered` would; False (nothing sent) if a header cannot be sent as is."""
        request_id = self._request_id()
        headers, body = error_answer(exc, head.path, request_id)
        top = response_head(exc.status, headers, len(body), request_id, head.close)
        if top is None:
            return False
        log_error("GET", head.path, exc)
        conn.take(used)
        self.reports.request("GET", exc.status, fast=True)
        conn.writelines([top, body])
        return True

    def _request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rids):08X}"

    async def answer_fast(self, head: Head, used: int, conn: FastPath) -> bool:
        """Answer a fast-path GET on `conn`; False (nothing sent): aiohttp's to answer."""
        if head.path.startswith("/_p2p/"):
            return False
        try:
            turn = await self.turns.take(conn)
        except P2PError as exc:  # no turn came: 503 SlowDown
            return self._send_error(head, used, conn, exc)
        try:
            return await self._answer_fast(head, used, conn, turn)
        finally:
            self.turns.give_back(turn)

    async def _answer_fast(self, head: Head, used: int, conn: FastPath, turn: Turn) -> bool:
        try:
            found = await self.reads.read("GET", head.path, "", head.headers, head)
        except P2PError as exc:  # the coordinator's or the owner's answer: aiohttp's path would ask again
            return self._send_error(head, used, conn, exc)
        if found is None:
            return False
        if found.body is not None:
            if self._send_whole(head, used, conn, found):
                with contextlib.suppress(ConnectionError):
                    await conn.drain()  # its turn is held until the reader has taken most of it
                return True
            return False
        top = self._begin(head, used, conn, found)
        if top is None:
            await found.aclose()
            return False
        sent = 0
        try:
            conn.write(top)
            async for data in found.pieces:
                conn.write(data)
                sent += len(data)
                await conn.drain()
                turn.moved()
            if sent != found.length:  # as http.send_body: cut at once, not when the client gives up
                raise P2PError(f"the body ended after {sent} of its {found.length} bytes")
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
        if request.method != "GET":
            return None
        async with self.turns.turn(RequestLine(request)) as turn:
            found = await self.reads.read(request.method, request.rel_url.raw_path, request.query_string,
                                          request.headers, request)
            if found is None:
                return None
            resp = body_response(request, found.status, found.headers, found.length)
            if found.body is not None:  # sent within its turn: held until the reader has taken most of it
                await resp.prepare(request)
                await resp.write_eof(found.body)
                return resp
            try:
                await resp.prepare(request)
                await send_body(request, resp, found.pieces, lambda n: turn.moved(), length=found.length)
            finally:
                await found.aclose()
            return resp

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


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the coordinator dies (Linux), so a serving process never outlives it."""
    die_with_parent()
    if os.getppid() != parent:
        raise SystemExit(0)


def main() -> int:
    std_fds_open()
    few_malloc_arenas()
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
