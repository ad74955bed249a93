"""The master's HTTP server: every route in `routes()`, membership behind it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time

import aiohttp
import msgpack
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from p2pcache import tls
from p2pcache.auth import HEADER, AuthError, Signer, Verifier
from p2pcache.control import WorkerControl
from p2pcache.errors import RequestTimeout, Unavailable
from p2pcache.httplog import OncePer, QuietParseErrors
from p2pcache.httpserver import AppRunner, read_body
from p2pcache.master_client import MSGPACK, REPLACED_HEADER
from p2pcache.metrics import metrics_handler
from p2pcache.ring import Placement
from p2pcache.service import Fatal, listening

from .admin import Admin
from .config import MasterConfig
from .membership import Membership, Replaced
from .registration import InvalidRegistration, Takeover, check_takeover, parse_registration
from .unpins import UnpinLog

__all__ = ["Master", "OPEN_ROUTES"]

log = logging.getLogger("p2pcache.master")
MAX_WAIT = 60.0
# Readable without the cluster secret (loaders read the ring); every other route needs it.
OPEN_ROUTES = frozenset({"/health", "/ring", "/metrics"})


class Master:
    """Membership and placement; never on the data path."""

    def __init__(self, config: MasterConfig, clock=time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.membership = Membership(
            chunk_size=config.chunk_size, replicas=config.replicas,
            vnodes=config.vnodes, ttl=config.worker_ttl, clock=clock,
        )
        self.registry = CollectorRegistry()
        self._epoch = Gauge("p2pcache_ring_epoch", "Ring epoch", registry=self.registry)
        self._workers = Gauge("p2pcache_ring_workers", "Workers in the ring", registry=self.registry)
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()  # releases the long-polls waiting for the first ring
        self._logged: dict[str, str] = {}  # the workers (id: state) of the last ring logged
        self._runner: AppRunner | None = None
        self._expiry: asyncio.Task | None = None
        self._verifier = Verifier(config.cluster_secret, guard=True) if config.cluster_secret else None
        self._refusals = OncePer(60.0)
        self.url = ""
        self._session: aiohttp.ClientSession | None = None
        self._placement_now: Placement | None = None
        self.admin: Admin | None = None
        self.unpins = UnpinLog(clock)  # for workers away when they were made (master/unpins.py)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get("/ring", self.ring),
            web.post("/workers", self.heartbeat),
            web.delete("/workers/{worker_id}", self.leave),
            web.get("/metrics", metrics_handler(self.registry)),
        ] + self.admin.routes()

    async def start(self) -> None:
        if self._verifier is None:
            log.warning("no cluster secret (--cluster-secret, P2PCACHE_CLUSTER_SECRET or "
                        "--cluster-secret-file): the cluster is OPEN, anyone who can reach the master "
                        "can add a worker to the ring or remove one")
        ssl_context = await asyncio.to_thread(tls.server_context, self.config.tls_cert, self.config.tls_key)
        client_ssl = await asyncio.to_thread(tls.client_context, self.config.tls_ca)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
        self.admin = Admin(WorkerControl(self._session, Signer(self.config.cluster_secret)), self._published,
                           self.ring_changed, self.config.worker_ttl, self.unpins)
        app = web.Application(middlewares=[self._authenticate])
        app.add_routes(self.routes())
        self._runner = AppRunner(app, access_log=None, handle_signals=False,
                                 logger=QuietParseErrors(logging.getLogger("p2pcache.master.http")),
                                 head_timeout=self.config.head_timeout, idle_timeout=self.config.idle_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True,
                           ssl_context=ssl_context)
        with listening(self.config.host, self.config.port):
            await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}"
        self.membership.publish_at = self._clock() + self.config.startup_grace
        if 0 < self.config.startup_grace < self.config.worker_ttl / 3:
            log.warning("--startup-grace %g is shorter than a third of --worker-ttl (%.3g s), the longest a worker "
                        "may go between heartbeats: a worker whose --heartbeat-interval is longer than %g s may be "
                        "missing from the first ring, and its chunks read from S3 meanwhile",
                        self.config.startup_grace, self.config.worker_ttl / 3, self.config.startup_grace)
        self._expiry = asyncio.create_task(self._expire_loop())
        log.info("master %s listening on %s", self.membership.ring.master_id, self.url)

    async def stop(self) -> None:
        if self._expiry:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        self._changed.set()  # release long-polls
        self._stopped.set()
        if self.admin:
            await self.admin.stop()
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def fatal(self) -> Fatal:
        """Never: only a signal stops the master."""
        return await asyncio.get_running_loop().create_future()

    def placement(self) -> Placement:
        """Placement under the current ring (built again when the ring changes)."""
        ring = self.membership.ring
        if self._placement_now is None or self._placement_now.ring is not ring:
            self._placement_now = Placement(ring)
        return self._placement_now

    def starting(self) -> str | None:
        """Why the ring is not published yet, or None.

        A fresh master knows only the workers that heartbeat since it started; until all have had
        a chance to, readers keep the ring they have, and the operator API (status, preload, unpin)
        waits too rather than act on a partial ring.
        """
        if self.membership.starting():
            return f"master starting: collecting heartbeats ({len(self.membership.ring.workers)} workers so far)"
        return None

    def _published(self) -> Placement:
        """placement(), once the ring is published; Unavailable (503) while the master is starting."""
        if reason := self.starting():
            raise Unavailable(reason)
        return self.placement()

    async def published(self, timeout: float) -> None:
        """Return once the ring is published (the startup grace is over) or the master stops, or
        after `timeout` seconds."""
        deadline = self._clock() + timeout
        while self.starting() and not self._stopped.is_set():
            left = min(deadline, self.membership.publish_at) - self._clock()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), left + 0.001)

    async def ring_changed(self, known: tuple[str, int], timeout: float) -> None:
        """Return when the ring's version is no longer `known` (or the master stops), or after `timeout` seconds."""
        if self.membership.ring.version == known:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def ready_line(self) -> str:
        return f"p2pcache master ready url={self.url}"

    def _notify(self) -> None:
        ring = self.membership.ring
        self._epoch.set(ring.epoch)
        self._workers.set(len(ring.workers))
        now = {w.id: w.state for w in ring.workers}
        log.info("ring epoch %d: %s", ring.epoch, ring_change(self._logged, now))
        self._logged = now
        self._changed.set()
        self._changed = asyncio.Event()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.config.worker_ttl / 4))
            gone = self.membership.expire()
            if gone:
                log.warning("expired workers that stopped heartbeating: %s", ", ".join(gone))
                self._notify()

    @web.middleware
    async def _authenticate(self, request: web.Request, handler) -> web.StreamResponse:
        """Every route but OPEN_ROUTES needs a signature made with the cluster secret, used once."""
        if self._verifier is not None and not (request.method in ("GET", "HEAD") and request.path in OPEN_ROUTES):
            try:
                self._verifier.check(request.method, request.path, request.query.items(),
                                     request.headers.get(HEADER), await _body(request))
            except AuthError as exc:
                if self._refusals.due(str(request.remote)):
                    log.warning("refused %s %r from %s: %s (not logged again for this client for 60 s)",
                                request.method, request.path, request.remote, exc)
                error = web.HTTPUnauthorized if exc.status == 401 else web.HTTPForbidden
                raise error(text=exc.reason + "\n", headers={"WWW-Authenticate": "P2P1-HMAC-SHA256"}) from None
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        ring = self.membership.ring
        return web.json_response({"status": "ok", "epoch": ring.epoch, "workers": len(ring.workers)})

    async def ring(self, request: web.Request) -> web.Response:
        """The ring; with `master_id`, `epoch` and `wait`, a long-poll until it differs. A long-poll
        during the startup grace waits for the first ring, so the workers all have it at once: had
        each asked again after its heartbeat interval, one would own chunks for up to an interval
        before the others knew, and answer their takes and reads "no ring"."""
        q = request.query
        try:
            wait = min(float(q.get("wait", 0)), MAX_WAIT)
            known = (q.get("master_id"), int(q["epoch"])) if "epoch" in q else None
        except ValueError:
            raise web.HTTPBadRequest(text="epoch must be an integer and wait a number of seconds")
        if wait > 0:
            await self.published(wait)
        if reason := self.starting():
            raise web.HTTPServiceUnavailable(text=reason)
        if known and wait > 0:
            await self.ring_changed(known, wait)
        ring = self.membership.ring
        if q.get("format") == "json" or MSGPACK not in request.headers.get("Accept", MSGPACK):
            return web.json_response(ring.to_dict(), dumps=lambda o: json.dumps(o, indent=2))
        return web.Response(body=ring.encode(), content_type=MSGPACK)

    async def heartbeat(self, request: web.Request) -> web.Response:
        try:
            worker, instance, seen, report = parse_registration(await _body(request), request.content_type,
                                                                self.config.chunk_size)
            current = self.membership.worker(worker.id)
            check_takeover(current, worker, authenticated=self._verifier is not None)
        except InvalidRegistration as exc:
            raise web.HTTPBadRequest(text=f"invalid worker registration: {exc}\n") from None
        except Takeover as exc:
            if self._refusals.due(f"takeover {worker.id} {worker.url}"):
                log.warning("refused registration of %s at %s: %s", worker.id, worker.url, exc)
            raise web.HTTPConflict(text=f"{exc}\n") from None
        replaced, before = self.membership.at_url(worker), self.membership.instance(worker.id)
        try:
            changed = self.membership.heartbeat(worker, instance)
        except Replaced as exc:
            if self._refusals.due(f"replaced {instance}"):
                log.warning("refused a heartbeat of %s from %s, a replaced process: %s", worker.id, worker.url, exc)
            # The header tells the worker this 409 is for good (a Takeover's passes once the old one goes).
            raise web.HTTPConflict(text=f"{exc}\n", headers={REPLACED_HEADER: "1"}) from None
        if replaced is not None:
            log.warning("worker %s registered at %s, where %s was: dropped %s from the ring",
                        worker.id, worker.url, replaced, replaced)
        if before is not None and instance is not None and before != instance:
            log.info("worker %s restarted (a new process) at %s", worker.id, worker.url)
        if changed:
            self._notify()
        # Heard only now: from a worker that proved it is the cluster's (the signature) and holds its id.
        if report is not None and self.membership.reported(report):
            log.info("the ring before this master: epoch %d of master %s, %d owning workers (from %s, %.1f s old): "
                     "its owners are where a chunk's new owner looks first", report.epoch, report.master_id,
                     len(report.memberships[0]), worker.id, report.age)
        ring = self.membership.ring
        reply = {"master_id": ring.master_id, "epoch": ring.epoch, "ttl": self.config.worker_ttl}
        if seen is not None and (missed := self.unpins.since(ring.master_id, seen)):
            reply["unpins"] = self.unpins.to_wire(missed)
        return web.Response(body=msgpack.packb(reply), content_type=MSGPACK)

    async def leave(self, request: web.Request) -> web.Response:
        if self.membership.leave(request.match_info["worker_id"], request.query.get("instance")):
            self._notify()
        return web.Response(body=msgpack.packb({"epoch": self.membership.ring.epoch}),
                            content_type=MSGPACK)


async def _body(request: web.Request) -> bytes:
    """`request`'s body (p2pcache/httpserver.py `read_body`): 408 if it does not come whole in time."""
    try:
        return await read_body(request)
    except RequestTimeout as exc:
        raise web.HTTPRequestTimeout(text=f"{exc}\n") from None


def ring_change(before: dict[str, str], after: dict[str, str]) -> str:
    """A ring change in one line, as long as what changed (not the whole ring: a line per
    registration naming every worker made the log grow with the square of the cluster)."""
    counts = collections.Counter(after.values())
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    line = f"{len(after)} worker{'' if len(after) == 1 else 's'}" + (f" ({states})" if states else "")
    for what, ids in (("joined", [w for w in after if w not in before]),
                      ("left", [w for w in before if w not in after]),
                      ("now", [f"{w} {after[w]}" for w in after if w in before and before[w] != after[w]])):
        if ids:
            line += f"; {what}: {', '.join(sorted(ids))}"
    return line
