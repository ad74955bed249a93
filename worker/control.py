"""The worker's control routes: list a prefix, fill (and keep) chunks for a preload, status, unpin
(and the unpins it missed, from the master's answers to its heartbeats).

Every one is signed with the cluster secret (the master calls them). A preload
fill goes through the normal single-flight fill (`Chunks.open_local`), so two
preloads and the readers of a chunk share one S3 read; at most
`--origin-concurrency` preload fills run at once, so a preload never makes
readers' fills wait in a longer queue than that.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiohttp import web

from p2pcache.control import KEEP_SHARE, MAX_BATCH, MSGPACK, chunk_from_wire, pack, ring_from_wire, unpack
from p2pcache.errors import BadRequest, NotOwner, ObjectChanged, P2PError, StoreError
from p2pcache.httpserver import read_body
from p2pcache.objects import ChunkId
from p2pcache.ring import Placement
from p2pcache.worker_client import parse_listing

from . import inputs
from .chunks import Chunks
from .routing import fill_source
from .keep import Keeps
from .metrics import WorkerMetrics
from .objects import ObjectCache
from .unpins import Missed

__all__ = ["Control"]

log = logging.getLogger("p2pcache.control")
# Seconds a preload's chunk waits for the ring it was planned on before it is refused as not ours.
# A ring reaches the workers as the answer to their long poll, in milliseconds; the master's
# job waits a round's SETTLE (master/preload.py) and plans again if it is still refused.
RING_WAIT = 2.0


class Control:
    def __init__(self, *, worker, chunks: Chunks, keeps: Keeps, objects: ObjectCache, metrics: WorkerMetrics,
                 placement: Callable[[], Placement], check_bucket: Callable[[str], None],
                 concurrency: int) -> None:
        self._worker = worker
        self._chunks, self._store, self._keeps = chunks, chunks.store, keeps
        self._objects, self._m = objects, metrics
        self._placement, self._check_bucket = placement, check_bucket
        self._slots = asyncio.Semaphore(concurrency)
        metrics.pinned_bytes.set_function(lambda: keeps.bytes)

    def routes(self) -> dict:
        return {"/_p2p/list": self.list, "/_p2p/preload": self.preload, "/_p2p/status": self.status,
                "/_p2p/has": self.has, "/_p2p/unpin": self.unpin}

    @property
    def keep_limit(self) -> int:
        return self._keeps.limit

    async def list(self, request: web.BaseRequest) -> web.Response:
        """One page of the objects under a prefix: [(key, etag, size)] and the next page's token."""
        q = request.query
        bucket, prefix, token = q.get("bucket", ""), q.get("prefix", ""), q.get("token")
        if not bucket:
            raise BadRequest("list: bucket is required")
        self._check_bucket(bucket)
        body = await self._worker.origin.list_objects(bucket, True, Prefix=prefix, ContinuationToken=token,
                                                      EncodingType="url")  # see parse_listing
        page = parse_listing(body)
        return _reply({"objects": [[o["Key"], o["ETag"], o["Size"]] for o in page.objects],
                       "next": page.next_token})

    async def preload(self, request: web.BaseRequest) -> web.Response:
        body = unpack(await read_body(request))
        if not isinstance(body, dict) or not isinstance(body.get("chunks"), list):
            raise BadRequest("preload: want a msgpack map with a list of chunks")
        if len(body["chunks"]) > MAX_BATCH:
            raise BadRequest(f"preload: at most {MAX_BATCH} chunks per request")
        chunks = [chunk_from_wire(f) for f in body["chunks"]]
        keep = body.get("keep") is True
        ring = ring_from_wire(body.get("ring"))
        checks: dict[tuple, asyncio.Future] = {}
        results = await asyncio.gather(*(self._one(c, keep, ring, checks) for c in chunks))
        return _reply({"results": results})

    async def _one(self, c: ChunkId, keep: bool, ring: tuple[str, int] | None, checks: dict) -> list[str]:
        try:
            placement = self._placement()
            inputs.check_chunk(c, placement.ring.chunk_size)
            self._check_bucket(c.bucket)
            if not placement.owns(self._worker.id, c) and ring and not placement.ring.reached(ring):
                # Planned on a ring we do not have yet: it is on its way (a long poll's answer).
                await self._worker.ring_until(lambda p: p is not None and p.ring.reached(ring), RING_WAIT)
                placement = self._placement()
            if not placement.owns(self._worker.id, c):
                raise NotOwner(f"{self._worker.id} does not own {c.ring_key} in ring epoch {placement.ring.epoch}")
            if not keep:
                return await self._fill(c, False, placement, checks)
            # No await from the check to the hold: checks made together count each other's chunks.
            if (kept := self._keeps.would_keep(c)) > self.keep_limit:
                raise BadRequest(f"keeping {c.ring_key} would make {kept} kept bytes, "
                                 f"over this worker's limit of {self.keep_limit} "
                                 f"({KEEP_SHARE:.0%} of {self._store.capacity})", code="KeepLimit")
            with self._keeps.holding(c):  # until it is kept, or its fill failed
                return await self._fill(c, True, placement, checks)
        except P2PError as exc:
            return ["error", f"{exc.code}: {exc}"]

    async def _fill(self, c: ChunkId, keep: bool, placement: Placement, checks: dict) -> list[str]:
        """Fill `c` (once per object and batch, its object checked first) and keep it if `keep`."""
        version = (c.bucket, c.key, c.etag, c.size)
        if version not in checks:  # one (cached) HEAD per object and batch
            checks[version] = asyncio.ensure_future(self._check(c))
        await asyncio.shield(checks[version])
        outcome = "cached"
        stream = self._chunks.local(c, 0, 0)
        if stream is None:
            async with self._slots:
                stream = self._chunks.local(c, 0, 0)  # filled while we waited for a slot?
                if stream is None:
                    # No await from here to the flight's start: "filled" means this call started it.
                    outcome = "joined" if self._chunks.filling(c) else "filled"
                    source = fill_source(placement.owners(c), placement.ring.replicas, self._worker.id, 0)
                    try:
                        stream = await self._chunks.open_local(c, 0, 0, source, 0)
                    except ObjectChanged:  # S3 has replaced this version: its pins are stale
                        self._objects.invalidate(c.bucket, c.key)  # the next check asks S3 for the new one
                        await self._keeps.replaced(c.bucket, c.key, c.etag)
                        raise
        try:
            if c.name not in self._store:  # streamed around the disk: failing, or no room
                why = self._chunks.disk.degraded or "the cache did not keep it"
                raise StoreError(f"{c.ring_key} was not stored: {why}")
            self._store.promote(c.name)  # else the set's next fills may evict it (worker/eviction.py)
            if keep:
                self._check_current(c)  # no await from here to `add`
                await self._keeps.add(c)  # while the stream holds the chunk: not evicted meanwhile
                self._worker.rebalancer.kept(c)  # handed over meanwhile (a drain): the keep goes too
        finally:
            stream.close()
        return [outcome, ""]

    async def _check(self, c: ChunkId) -> None:
        """`c` is of its object's current version (a HEAD's answer), so the pins of others go."""
        await inputs.check_chunk_object(self._objects, c)
        await self._keeps.supersede(c.bucket, c.key, c.etag)

    def _check_current(self, c: ChunkId) -> None:
        """ObjectChanged if a HEAD found another version of `c`'s object while `c` was filled: its
        pins were released then (`Keeps.supersede`), and this one would never be."""
        now = self._objects.peek(c.bucket, c.key)
        if now is not None and now.etag != c.etag:
            raise ObjectChanged(f"s3://{c.bucket}/{c.key} is at version {now.etag} now, not {c.etag}: "
                                f"{c.ring_key} is not kept")

    async def status(self, request: web.BaseRequest) -> web.Response:
        placement = self._worker.placement
        me = placement.members.get(self._worker.id) if placement else None
        sample = self._m.registry.get_sample_value
        hits, misses = sample("p2pcache_cache_hits_total") or 0, sample("p2pcache_cache_misses_total") or 0
        return _reply({
            "id": self._worker.id, "url": self._worker.url,
            "state": me.state if me else "not in the ring",
            "epoch": placement.ring.epoch if placement else None,
            "capacity": self._store.capacity, "used": self._store.used,
            "chunks": len(self._store), "pinned": self._keeps.bytes, "pinned_chunks": len(self._keeps),
            "hits": hits, "misses": misses, "hit_ratio": hits / (hits + misses) if hits + misses else None,
            "bytes_served": (sample("p2pcache_bytes_served_total") or 0)
                            + (sample("p2pcache_peer_bytes_served_total") or 0),
            "bytes_from_peers": sample("p2pcache_peer_bytes_total") or 0,
            "bytes_from_s3": sample("p2pcache_origin_bytes_total") or 0,
            "fills_in_flight": self._chunks.fills_in_flight,
        })

    async def has(self, request: web.BaseRequest) -> web.Response:
        body = unpack(await read_body(request))
        names = body.get("names") if isinstance(body, dict) else None
        if not isinstance(names, list) or len(names) > MAX_BATCH or not all(isinstance(n, str) for n in names):
            raise BadRequest(f"has: want a msgpack map with a list of at most {MAX_BATCH} chunk names")
        return _reply({"present": [n in self._store for n in names], "kept": [n in self._keeps for n in names]})

    async def unpin(self, request: web.BaseRequest) -> web.Response:
        body = unpack(await read_body(request))
        if not isinstance(body, dict) or not isinstance(body.get("bucket"), str) \
                or not isinstance(body.get("prefix"), str) or not body["bucket"]:
            raise BadRequest("unpin: want a msgpack map with a bucket and a prefix")
        n = await self._keeps.discard(self._keeps.matching(body["bucket"], body["prefix"]))
        if n:
            log.info("unpinned %d chunks under s3://%s/%s", n, body["bucket"], body["prefix"])
        return _reply({"unpinned": n})

    async def missed(self, unpins: list[Missed]) -> None:
        """Unpins made while this worker was away (or did not answer): each drops the keeps pinned before it."""
        for u in unpins:
            try:
                n = await self._keeps.release(u.bucket, u.prefix, u.at)
            except OSError as exc:
                log.error("cannot remove the keep records of s3://%s/%s (%s): they are kept again after a restart",
                          u.bucket, u.prefix, exc)
                continue
            if n:
                log.info("unpinned %d chunks under s3://%s/%s, pinned before an unpin made while this worker "
                         "was away", n, u.bucket, u.prefix)


def _reply(obj) -> web.Response:
    return web.Response(body=pack(obj), content_type=MSGPACK)
