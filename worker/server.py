"""The worker: every route in `_route()`, errors mapped to HTTP in one place (`_handle`).

It runs on aiohttp's low-level `web.Server`, not an `Application`: the S3 paths
need no router, and skipping it (and middleware) is a third more requests per
second for small ranges (loadtests/serve_bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from p2pcache import conditions, tls
from p2pcache.auth import HEADER, AuthError, Signer, Verifier
from p2pcache.breaker import CLOSED, OPEN
from p2pcache.errors import (
    AccessDenied, NoRing, NotFound, ObjectChanged, PreconditionFailed, ReadOnly, StoreError, Unauthorized,
)
from p2pcache.httplog import OncePer, QuietParseErrors
from p2pcache.httpserver import Server, read_body
from p2pcache.master_client import MasterClient
from p2pcache.metrics import metrics_handler
from p2pcache.objects import ObjectInfo
from p2pcache.origin import OriginHooks, S3Origin
from p2pcache.ring import DRAINING, Placement, WorkerInfo
from p2pcache.s3headers import response_overrides
from p2pcache.service import Fatal, listening

from . import cachedir, inputs
from .advertise import check_advertised, reachable
from .budget import COORDINATOR_PIECES, PieceBudget
from .chunks import Chunks
from .turns import Turn, Turns
from .config import WorkerConfig
from .eviction import POLICIES
from .control import Control
from .coordinator import coordinator_handler
from .drainreport import drain_line
from .keep import Keeps
from .http import (
    REQUEST_ID, RequestLine, answered, body_response, client_address, object_answer, prepend, send_body,
)
from .limits import TokenBucket
from .listing import Listings
from .membership import MembershipAgent
from .metrics import WorkerMetrics
from .objects import ObjectCache
from .parts import Parts, parse_part_number
from .procs import ServingProcesses, egress_shares, probe_port
from .peer import PeerClient
from .peerroutes import peer_routes
from .readers import ClientKey, Readers
from .rebalance import Rebalancer
from .store import ChunkStore

__all__ = ["Worker", "OPEN_ROUTES", "STATE_ROUTES"]

log = logging.getLogger("p2pcache.worker")
# Internal routes open to anyone who reaches the worker (probes, Prometheus); the others need
# the cluster secret's signature.
OPEN_ROUTES = frozenset({"/_p2p/health", "/_p2p/ready", "/_p2p/metrics"})
POST_ROUTES = frozenset({"/_p2p/preload", "/_p2p/has", "/_p2p/unpin"})  # the others are GET/HEAD
# Routes that change what the worker holds or keeps: a signature is accepted there once (a replay
# is 403). The others read; a read signed for this worker may come again within the window.
STATE_ROUTES = frozenset({"/_p2p/take", "/_p2p/preload", "/_p2p/unpin"})
PEER_CONNECTIONS = 64  # pooled connections to each peer


class Worker:
    def __init__(self, config: WorkerConfig, clock=time.monotonic, wall_clock=time.time) -> None:
        self.config = config
        self.clock, self.wall_clock = clock, wall_clock
        self.readers = Readers(config.client_keys, wall_clock) if config.client_keys else None
        self.metrics = WorkerMetrics()
        self.placement: Placement | None = None
        self.id = config.worker_id or ""
        self.url = ""
        self._stack = contextlib.AsyncExitStack()
        self._runner: web.ServerRunner | None = None
        self.agent: MembershipAgent | None = None
        self.running = False
        self._lock: cachedir.DirLock | None = None  # the cache dir's (worker/cachedir.py)
        self._began = False  # past the lock: stop() has things to release
        self._ring_changed = asyncio.Event()
        self.egress = TokenBucket(config.egress_limit / egress_shares(config)) if config.egress_limit else None
        self._rid_prefix, self._rids = uuid.uuid4().hex[:8].upper(), itertools.count()
        secret = config.cluster_secret
        self._signer = Signer(secret)
        self._verifier = Verifier(secret, guard=STATE_ROUTES, me=lambda: self.id) if secret else None
        self._refusals = OncePer(60.0)
        self.procs: ServingProcesses | None = None

    def internal_routes(self) -> dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]]:
        """Every route under /_p2p/ (bucket names cannot contain "_", so no bucket collides)."""
        return {
            "/_p2p/health": self.health,
            "/_p2p/ready": self.ready,
            "/_p2p/metrics": metrics_handler(self.metrics.registry),
        } | peer_routes(self) | self.control.routes()

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        """/_p2p/... internal routes; everything else is the S3 read API, path-style."""
        path, method = request.path, request.method
        if path.startswith("/_p2p/"):
            handler = self._internal.get(path)
            if handler is None:
                raise web.HTTPNotFound()
            if path not in OPEN_ROUTES:
                await self._authenticate(request)
            allowed = ["POST"] if path in POST_ROUTES else ["GET", "HEAD"]
            if method not in allowed:
                raise web.HTTPMethodNotAllowed(method, allowed)
            return await handler(request)
        bucket, key = inputs.object_path(inputs.request_path(request))
        reader = self.readers.check(request, bucket) if self.readers else None
        if method not in ("GET", "HEAD"):
            raise ReadOnly(f"p2pcache is a read-only cache: {method} is not supported")
        if not bucket:
            return await self.list_buckets(request, reader)
        self._check_bucket(bucket)
        if not key:
            return await self.bucket(request, bucket)
        inputs.check_object_query(request.query)
        return await self.get_object(request, bucket, key)

    async def start(self) -> None:
        cfg = self.config
        if self._verifier is None:
            log.warning("no cluster secret (--cluster-secret, P2PCACHE_CLUSTER_SECRET or "
                        "--cluster-secret-file): the cluster is OPEN, anyone who can reach this worker "
                        "can ask it for chunks of any allowed bucket")
        try:
            fd = await asyncio.to_thread(cachedir.lock, cfg.cache_dir)
        except OSError as exc:  # another worker runs on this cache dir
            raise Fatal(exc.strerror) from exc
        try:
            self.id = self.id or await asyncio.to_thread(cachedir.worker_id, cfg.cache_dir)
        except cachedir.BadWorkerId as exc:
            cachedir.unlock(fd)
            raise Fatal(str(exc)) from exc
        self._lock = cachedir.DirLock(cfg.cache_dir, fd, self.id)
        self._began = True
        server_ssl = await asyncio.to_thread(tls.server_context, cfg.tls_cert, cfg.tls_key)
        client_ssl = await asyncio.to_thread(tls.client_context, cfg.tls_ca)
        self.keeps = Keeps(Path(cfg.cache_dir) / "kept", cfg.capacity, self.wall_clock,
                           on_superseded=self.metrics.superseded_pins.inc)
        self.store = ChunkStore(cfg.cache_dir, cfg.capacity, cfg.min_free, kept=self.keeps.__contains__,
                                policy=POLICIES[cfg.eviction], before_late_load=self._load_keeps_again,
                                guard=self._lock.check)
        await self.keeps.load()  # unreadable keeps are said, not a reason to forget the chunks
        try:
            await self.store.load()
        except OSError as exc:  # serve anyway: reads go around the disk (chunks.disk), whose
            # next try loads the store first (ChunkStore.writing)
            store_error = StoreError(f"cache dir {cfg.cache_dir} unusable: {exc}")
        else:
            store_error = None
        m = self.metrics
        hooks = OriginHooks(request=m.origin_requests.inc,
                            retry=lambda cause: m.origin_retries.labels(cause).inc(),
                            breaker=lambda state: m.origin_breaker_open.set(state == OPEN))
        self.origin = await self._stack.enter_async_context(S3Origin.connect(
            cfg.s3_endpoint, max_connections=cfg.origin_concurrency + 8,
            read_timeout=cfg.origin_read_timeout, deadline=cfg.origin_deadline,
            breaker_threshold=cfg.origin_breaker, hooks=hooks))
        session = await self._stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=PEER_CONNECTIONS, force_close=False,
                                           ssl=client_ssl),
            auto_decompress=False))
        self.objects = ObjectCache(self.origin, cfg.meta_ttl, self.clock, on_change=self._object_changed,
                                   on_version=self._object_version)
        self.listings = Listings(self.origin, cfg.meta_ttl, cfg.listing_cache_bytes, self.clock)
        budget = PieceBudget(COORDINATOR_PIECES)
        self.turns = Turns(cfg.max_reads or budget.floor_streams, cfg.read_wait, cfg.send_timeout,
                           self.metrics.stalled.inc)
        peers = PeerClient(session, read_timeout=cfg.peer_timeout(), holder_timeout=cfg.holder_timeout(),
                           primary_timeout=cfg.primary_timeout(), signer=self._signer,
                           on_corrupt=self.metrics.corrupt_transfers.inc, piece=budget.piece,
                           on_bytes=self.metrics.peer_bytes.inc)
        self.rebalancer = Rebalancer(me=self.id, store=self.store, peers=peers, metrics=self.metrics,
                                     placement=self._placement, rate=cfg.handoff_rate(), keeps=self.keeps)
        self.parts = Parts(self.origin)
        self.chunks = Chunks(
            me=self.id, store=self.store, origin=self.origin, peers=peers,
            metrics=self.metrics, placement=self._placement, budget=budget,
            origin_concurrency=cfg.origin_concurrency, readahead=cfg.readahead, clock=self.clock,
            on_fill=self.rebalancer.filled)
        if store_error is not None:
            self.chunks.disk.failed(store_error)
        self.control = Control(worker=self, chunks=self.chunks, keeps=self.keeps, objects=self.objects,
                               metrics=self.metrics, placement=self._placement, check_bucket=self._check_bucket,
                               concurrency=cfg.origin_concurrency)
        self.metrics.store_bytes.set_function(lambda: self.store.used)
        self.metrics.listing_cache_bytes.set_function(lambda: self.listings.cached_bytes)
        self.metrics.store_capacity.set(cfg.capacity)

        self._internal = self.internal_routes()
        # A reader that hangs up cancels its handler, so fills it was waiting for
        # know nobody wants them any more (they are not retried against a failing S3).
        server = Server(self._handle, access_log=None, handler_cancellation=True,
                        logger=QuietParseErrors(logging.getLogger("p2pcache.worker.http")),
                        head_timeout=cfg.head_timeout, idle_timeout=cfg.idle_timeout)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=cfg.drain_timeout)
        await self._runner.setup()
        if cfg.serve_processes > 1:  # they listen on the port; this process on their unix socket
            self.procs = ServingProcesses(cfg, lambda token: coordinator_handler(self, token), self.metrics)
            host, port = await self.procs.start()
        else:
            site = web.TCPSite(self._runner, cfg.host, cfg.port, reuse_address=True, reuse_port=True,
                               ssl_context=server_ssl)
            with listening(cfg.host, cfg.port):
                probe_port(cfg.host, cfg.port)  # SO_REUSEPORT must not share another worker's port
                await site.start()
            host, port = site._server.sockets[0].getsockname()[:2]
        scheme = "https" if server_ssl else "http"
        self.address = (host, port)  # where it listens (its URL may be --advertise's)
        self.url = cfg.advertise or f"{scheme}://{reachable(host)}:{port}"
        if cfg.advertise:
            await check_advertised(session, self.url, self.id)
        me = WorkerInfo(self.id, self.url, cfg.capacity, cfg.weight)
        self.agent = MembershipAgent(MasterClient(session, cfg.master_url, self._signer), me,
                                     cfg.heartbeat_interval, self._on_ring, self.control.missed, self.wall_clock,
                                     self.clock)
        try:
            await self.agent.start()
        except Fatal as exc:  # refused at registration: it would refuse a leave too, or take another's
            if not self.agent.refused.done():
                self.agent.refused.set_result(exc)
            raise
        self.rebalancer.start()
        self.running = True
        log.info("worker %s serving on %s, master %s", self.id, self.url, cfg.master_url)
        if self.readers:
            log.info("%d reader keys: every S3 request must be signed (SigV4) by one", len(self.readers.keys))

    async def stop(self, leave: bool = True) -> None:
        """Leave the ring, stop accepting, drain in-flight reads, then release everything.

        `leave=False` stops like a crash would, without telling the master.
        """
        self.running = False
        if not self._began:  # it could not take its cache dir: it took nothing
            return
        if self.agent and self.agent.refused.done():
            leave = False  # the master refuses this worker: it would refuse a drain and a leave too
        deadline = self.clock() + self.config.drain_timeout  # of the drain, and of the master's answers
        if leave and self.agent and self.placement is not None:
            await self._drain(deadline)
        if self.agent:
            await self.agent.stop(leave=leave, left=deadline - self.clock())
        await self.rebalancer.stop()
        if self.procs:
            await self.procs.stop()
        if self._runner:
            await self._runner.cleanup()
        await self.chunks.close()
        await self.objects.close()
        await self.listings.close()
        await self.parts.close()
        await self.turns.close()
        self.store.close()
        await self._stack.aclose()
        if self._lock is not None:
            self._lock.release()

    def ready_line(self) -> str:
        return f"p2pcache worker ready url={self.url} id={self.id}"

    async def fatal(self) -> Fatal:
        """When the master refuses this worker's registration: it would refuse every heartbeat."""
        return await asyncio.shield(self.agent.refused)

    async def _drain(self, deadline: float) -> None:
        """Own nothing, stay a source, and hand every chunk to its owner, until `deadline`. Reads
        are served throughout, also while the master cannot be told (it is asked again meanwhile)."""
        self.rebalancer.drain()
        if not await self.agent.drain(lambda: deadline - self.clock()):
            return  # logged
        if not await self.ring_until(self._draining_in, deadline - self.clock()):
            log.warning("no ring with this worker draining within --drain-timeout: leaving")
            return
        start = self.clock()
        while True:  # fills running here land, and are handed over too (Rebalancer.filled)
            await self.chunks.quiet(max(0.0, deadline - self.clock()))
            done = await self.rebalancer.wait_idle(max(0.0, deadline - self.clock()))
            if (done and not self.chunks.fills_in_flight) or self.clock() >= deadline:
                break
        tally = self.rebalancer.tally
        log.info("%s", drain_line(tally.counts(), tally.failed_takes, self.clock() - start, done,
                                  self.rebalancer.backlog))

    async def ring_until(self, ok: Callable[[Placement | None], bool], seconds: float) -> bool:
        """Wait until the ring in hand is `ok`, for up to `seconds`; whether it is."""
        deadline = self.clock() + seconds
        while True:
            self._ring_changed.clear()  # before the check: a ring arriving after it sets it again
            if ok(self.placement):
                return True
            if self.clock() >= deadline:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ring_changed.wait(), deadline - self.clock())

    def _draining_in(self, placement: Placement | None) -> bool:
        me = placement.members.get(self.id) if placement else None
        return me is not None and me.state == DRAINING

    async def _load_keeps_again(self) -> None:
        """The keeps that could not be read at start, once the cache dir is back: they have had none of
        the master's unpins (worker/unpins.py), so the next heartbeat asks for all it remembers."""
        if self.keeps.unreadable is not None:
            await self.keeps.load_again()
            if self.agent is not None:
                self.agent.unpins_seen = []

    def _on_ring(self, placement: Placement) -> None:
        self.placement, ring = placement, placement.ring
        self.metrics.ring_epoch.set(ring.epoch)
        log.info("ring epoch %d from master %s: %d owning workers, %d draining%s", ring.epoch,
                 ring.master_id, len(placement.workers), len(placement.members) - len(placement.workers),
                 "" if self.id in placement.members else " (not us)")
        self.rebalancer.changed()
        self._ring_changed.set()

    def _object_changed(self, bucket: str, key: str) -> None:
        """A HEAD found another version of s3://bucket/key (or none, or one where none was): the
        serving processes stop using the identities they cached before any answer with it goes
        out, so no read after that answer, on any connection, sees the older version."""
        self.metrics.object_changes.inc()
        if self.procs is not None:
            self.procs.identity_changed()

    async def _object_version(self, info: ObjectInfo) -> None:
        """S3 has `info`'s version of its object: the pins of other versions are stale."""
        await self.keeps.supersede(info.bucket, info.key, info.etag)

    def _placement(self) -> Placement:
        if self.placement is None:
            raise NoRing("no ring from the master yet")
        return self.placement

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request[REQUEST_ID] = f"{self._rid_prefix}{next(self._rids):08X}"
        resp = await answered(request, self._route)
        self.metrics.count_request(request.method, resp.status)
        return resp

    async def _authenticate(self, request: web.BaseRequest) -> None:
        """An internal route's request must be signed with the cluster secret (if there is one)."""
        if self._verifier is None:
            return
        body = await read_body(request) if request.can_read_body else b""
        try:
            self._verifier.check(request.method, request.path, request.query.items(),
                                 request.headers.get(HEADER), body, request.headers)
        except AuthError as exc:
            client = client_address(request)
            if self._refusals.due(client):
                log.warning("refused %s %r from %s: %s (not logged again for this client for 60 s)",
                            request.method, request.path, client, exc)
            raise (Unauthorized if exc.status == 401 else AccessDenied)(exc.reason) from None

    async def health(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "id": self.id})

    async def ready(self, request: web.BaseRequest) -> web.Response:
        joined = self.placement is not None and self.id in self.placement
        epoch = self.placement.ring.epoch if self.placement else None
        body = {"ready": joined, "id": self.id, "epoch": epoch}
        degraded = [r for r in (self.chunks.disk.degraded, self._origin_degraded()) if r]
        if degraded:  # still serving (ready): reads go around the disk, or get prompt 503s
            body["degraded"] = "; ".join(degraded)
        return web.json_response(body, status=200 if joined else 503)

    def _origin_degraded(self) -> str | None:
        breaker = self.origin.breaker
        return None if breaker.state == CLOSED else f"origin breaker {breaker.state}: {breaker.cause}"

    def _check_bucket(self, bucket: str) -> None:
        if self.config.allowed_buckets and bucket not in self.config.allowed_buckets:
            raise AccessDenied(f"bucket {bucket!r} is not served by this cache")

    async def list_buckets(self, request: web.BaseRequest, reader: ClientKey | None = None) -> web.Response:
        allowed = self.config.allowed_buckets
        return await self.listings.list_buckets(
            request, lambda b: (not allowed or b in allowed) and (reader is None or reader.may_read(b)))

    async def bucket(self, request: web.BaseRequest, bucket: str) -> web.Response:
        """ListObjects(V2) on GET, HeadBucket on HEAD."""
        if request.method == "HEAD":
            region = await self.listings.head_bucket(request, bucket)
            return web.Response(headers={"x-amz-bucket-region": region} if region else None)
        return await self.listings.list_objects(request, bucket)

    async def get_object(self, request: web.BaseRequest, bucket: str, key: str) -> web.StreamResponse:
        """GetObject and HeadObject; an answer with bytes takes a turn (worker/turns.py)."""
        async with self.turns.held(RequestLine(request)) as need:
            return await self._get_object(request, bucket, key, need)

    async def _get_object(self, request: web.BaseRequest, bucket: str, key: str,
                          need: Callable[[], Awaitable[Turn]]) -> web.StreamResponse:
        part = parse_part_number(request.query, "Range" in request.headers)
        overrides = response_overrides(request.query, request.rel_url.raw_query_string, request.headers)
        max_age = conditions.max_age(request.headers)  # no-cache: the version S3 has now
        for attempt in (1, 2):
            try:
                info = await self.objects.get(bucket, key, max_age)
            except NotFound:  # remembered missing; a client naming a version may know better
                if attempt == 2 or max_age == 0 or "If-Match" not in request.headers:
                    raise
                max_age = 0
                continue
            verdict = conditions.evaluate(request.headers, info.etag, info.last_modified)
            if verdict == 412 and attempt == 1:  # the client may know a newer version than our cache
                max_age = 0
                continue
            if verdict == 412:
                raise PreconditionFailed(info.etag)
            if verdict == 304:
                return web.Response(status=304, headers={"ETag": info.etag, "Last-Modified": info.last_modified})
            try:
                span = None if part is None else await self.parts.span(info, part)
            except ObjectChanged:
                if attempt == 2:
                    raise
                max_age = 0
                continue
            status, headers, start, stop = object_answer(info, request.headers.get("Range"), span, overrides)
            resp = body_response(request, status, headers, stop - start)
            if request.method != "HEAD" and start < stop:
                turn = await need()
                small = await self.chunks.read_small(info, start, stop)
                if small is not None:  # the common case for small reads: no stream, no tasks
                    if self.egress is not None:
                        await self.egress.take(len(small))
                    self.metrics.bytes_served.inc(len(small))
                    await resp.prepare(request)
                    await resp.write_eof(small)  # in its turn: until the reader has taken most of it
                    return resp
            if request.method == "HEAD" or start == stop:
                await resp.prepare(request)
                return resp
            pieces = self.chunks.read(info, start, stop)
            try:
                first = await anext(pieces)  # errors before the status line get a status
            except ObjectChanged:
                await pieces.aclose()
                if attempt == 2:
                    raise
                max_age = 0
                continue
            except BaseException:
                await pieces.aclose()
                raise
            break

        def sent(n: int) -> None:
            self.metrics.bytes_served.inc(n)
            turn.moved()

        await resp.prepare(request)
        try:
            error = await send_body(request, resp, prepend(first, pieces), sent, self.egress,
                                    length=stop - start)
        finally:
            await pieces.aclose()
        if error is not None:
            self.metrics.aborted.inc()
        if isinstance(error, ObjectChanged):
            self.objects.invalidate(bucket, key)
        return resp
