"""The master's operator API: preload jobs, unpin, and the cluster's status (all signed routes).

The master has no S3 credentials: it lists a prefix through a worker's signed
`/_p2p/list` route, so the worker's `--allowed-buckets` and S3 settings apply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import Callable

from aiohttp import web

from p2pcache.control import KEEP_SHARE, WorkerControl
from p2pcache.errors import AccessDenied, BadRequest, NotFound, P2PError, PeerError, RequestTimeout, Unavailable
from p2pcache.httpserver import read_body
from p2pcache.config import split_s3_url
from p2pcache.objects import ObjectInfo, check_bucket
from p2pcache.ring import Placement, WorkerInfo

from .preload import CANCELLED, RUNNING, PreloadJob, RingChanged, holding, plan
from .unpins import UnpinLog

__all__ = ["Admin", "parse_s3_url"]

log = logging.getLogger("p2pcache.master.admin")
MAX_JOBS = 100  # finished jobs remembered
MAX_OBJECTS = 100_000  # per preload or status request
MAX_URLS = 1000  # distinct URLs per preload or unpin request: each costs a listing or an unpin on every worker
LOGGED_URLS = 5  # a log line names the first few


def parse_s3_url(url: object) -> tuple[str, str]:
    """`s3://bucket[/prefix]` -> (bucket, prefix); BadRequest otherwise: also for text that is not
    UTF-8 (no worker could list it, and no heartbeat answer could carry its unpin) and for a bucket
    name S3 refuses (InvalidBucketName)."""
    if not isinstance(url, str):
        raise BadRequest(f"{url!r} is not an s3://bucket/prefix URL")
    try:
        bucket, prefix = split_s3_url(url)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    try:
        check_bucket(bucket)
    except ValueError as exc:
        raise BadRequest(str(exc), code="InvalidBucketName") from None
    return bucket, prefix


class Admin:
    def __init__(self, control: WorkerControl, placement: Callable[[], Placement], ring_changed: RingChanged,
                 worker_ttl: float, unpins: UnpinLog) -> None:
        self._control = control
        self._unpins = unpins
        self._placement = placement
        self._ring_changed, self._worker_ttl = ring_changed, worker_ttl  # what a job waits on between rounds
        self.jobs: OrderedDict[str, PreloadJob] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/preload", self.start_preload),
            web.get("/preload", self.list_jobs),
            web.get("/preload/{job}", self.get_job),
            web.delete("/preload/{job}", self.cancel_job),
            web.post("/unpin", self.unpin),
            web.get("/status", self.status),
        ]

    async def stop(self) -> None:
        jobs = [j.task for j in self.jobs.values() if j.task is not None]
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    async def start_preload(self, request: web.Request) -> web.Response:
        """Checked before the job starts: the URLs, the buckets, the objects, and pinned room."""
        with _errors():
            urls, pin = _preload_body(await read_body(request))
            placement = self._placement()
            objects = await self.resolve(urls, placement)
            todo = plan(objects, placement)
            await self._check_room(todo, placement, pin)
            job = PreloadJob(urls, pin, objects, todo, self._control, self._placement, self._ring_changed,
                             self._worker_ttl)
        self._remember(job)
        job.start()
        log.info("preload %s started: %s (%d objects, %d chunks%s)", job.id, _named(urls), job.objects_total,
                 job.chunks_total, ", pinned" if pin else "")
        return _json(job.to_dict(), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        return _json({"jobs": [j.to_dict() for j in self.jobs.values()]})

    async def get_job(self, request: web.Request) -> web.Response:
        return _json(self._job(request).to_dict())

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        job.cancel()
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        if job.state == CANCELLED and job.bytes_cached is None:  # what the owners filled before it stays
            await job.count_cached()
        return _json(job.to_dict())

    async def unpin(self, request: web.Request) -> web.Response:
        """Every worker stops keeping the chunks of objects under the prefixes (keys by prefix).

        The unpins are remembered (master/unpins.py): a worker not in the ring now (down,
        restarting) or that did not answer gets them in the answer to a later heartbeat.
        """
        with _errors():
            urls = _urls(_json_body(await read_body(request)))
            targets = [parse_s3_url(u) for u in urls]
            members = list(self._placement().members.values())
            if not members:  # "unpinned 0 chunks" would pass for done
                raise Unavailable("the master has no workers in its ring: nothing could be unpinned "
                                  "(the workers register with the master they are given as --master)")
        unpinned, failed = 0, {}
        for bucket, prefix in targets:
            at = self._unpins.clock()  # pins made before it go, whenever a worker hears of it
            results = await asyncio.gather(*(self._control.unpin(w, bucket, prefix) for w in members),
                                           return_exceptions=True)
            self._unpins.add(bucket, prefix, at)
            for w, r in zip(members, results):
                if isinstance(r, BaseException):
                    failed.setdefault(w.id, _failure(w, r))
                else:
                    unpinned += r
        answer = {"unpinned_chunks": unpinned, "failed": list(failed.values())}
        if failed:
            answer |= {"error": "UnpinIncomplete", "message": (
                f"unpinned {unpinned} chunks under {' '.join(urls)}; {len(failed)} of {len(members)} workers failed "
                f"(each is sent the unpin again with the answer to its next heartbeat): {'; '.join(failed.values())}")}
        return _json(answer, status=200 if not failed else 502)

    async def status(self, request: web.Request) -> web.Response:
        """One row per worker; with `url`, per object under it the fraction cached and pinned."""
        with _errors():
            placement = self._placement()
            url = request.query.get("url")
            objects = await self.resolve([url], placement) if url else []
        members = list(placement.members.values())
        rows = await asyncio.gather(*(self._row(w) for w in members))
        body: dict = {"epoch": placement.ring.epoch, "chunk_size": placement.ring.chunk_size, "workers": rows}
        if url:
            body["objects"] = await self._objects(objects, placement)
        return _json(body)

    async def resolve(self, urls: list[str], placement: Placement) -> list[ObjectInfo]:
        """The objects the URLs name: a key itself if it exists, else every key under the prefix."""
        found: dict[tuple[str, str], ObjectInfo] = {}
        for url in urls:
            bucket, prefix = parse_s3_url(url)
            listed, token = [], None
            while True:
                page, token = await self._list(placement, bucket, prefix, token)
                listed += page
                if len(listed) > MAX_OBJECTS:
                    raise BadRequest(f"{url} holds more than {MAX_OBJECTS} objects: preload smaller prefixes")
                if not token:
                    break
            exact = [o for o in listed if o[0] == prefix]
            if not listed:
                raise NotFound(f"no objects under {url}", code="NoSuchKey")
            for key, etag, size in exact or listed:
                found[(bucket, key)] = ObjectInfo(bucket, key, etag, size)
        return list(found.values())

    async def _list(self, placement: Placement, bucket: str, prefix: str, token: str | None):
        reasons = []
        for worker in placement.near(f"{bucket}/{prefix}") or ():
            try:
                return await self._control.list(worker, bucket, prefix, token)
            except PeerError as exc:
                reasons.append(str(exc))
        raise PeerError(f"no worker could list s3://{bucket}/{prefix}: {'; '.join(reasons) or 'no workers'}")

    async def _check_room(self, todo: dict, placement: Placement, pin: bool) -> None:
        """Refuse a preload that an owner cannot hold: its chunks of the set and the chunks pins keep
        there over its capacity, or with `pin` over KEEP_SHARE of it.

        Per owner, as placed (replicas included): the cluster's total capacity says nothing of
        a worker that owns more of the set than it can hold. A chunk of the set already kept
        is counted once, with the pins.
        """
        async def check(wid: str, chunks: list) -> str | None:
            worker = placement.members[wid]
            try:
                row = await self._control.status(worker)
            except PeerError:
                if pin:
                    raise
                return None  # the job plans the chunks of a worker that does not answer again
            kept = [k for _, k in (await holding(self._control, placement, {wid: chunks}))[wid]] \
                if row["pinned"] else [False] * len(chunks)
            new = sum(c.length for c, k in zip(chunks, kept) if not k)
            if pin and row["pinned"] + new > (limit := int(row["capacity"] * KEEP_SHARE)):
                return (f"{wid} would keep {row['pinned'] + new} bytes ({row['pinned']} pinned already + "
                        f"{new} new), over its limit of {limit} ({KEEP_SHARE:.0%} of {row['capacity']} capacity)")
            if not pin and row["pinned"] + new > row["capacity"]:
                return (f"{wid} would hold {row['pinned'] + new} bytes ({row['pinned']} pinned already + "
                        f"{new} of the set), over its capacity of {row['capacity']}")
            return None

        refusals = [r for r in await asyncio.gather(*(check(w, cs) for w, cs in todo.items())) if r]
        if refusals and pin:
            raise BadRequest("the pinned set does not fit: " + "; ".join(refusals), code="PinnedSetTooLarge")
        if refusals:
            raise BadRequest("the set does not fit: " + "; ".join(refusals) + ": preload less, or give the "
                             "owners more --capacity (or more workers)", code="PreloadTooLarge")

    async def _row(self, worker: WorkerInfo) -> dict:
        try:
            row = await self._control.status(worker)
        except P2PError as exc:
            return {"id": worker.id, "url": worker.url, "state": "unreachable", "error": str(exc)}
        row["state"] = worker.state if row.get("state") == worker.state else f"{worker.state} ({row.get('state')})"
        return row

    async def _objects(self, objects: list[ObjectInfo], placement: Placement) -> list[dict]:
        todo = plan(objects, placement)
        held = await holding(self._control, placement, todo)
        index = {(o.bucket, o.key): i for i, o in enumerate(objects)}
        cached, pinned = [0] * len(objects), [0] * len(objects)
        for wid, chunks in todo.items():
            for c, (present, kept) in zip(chunks, held[wid]):
                i = index[(c.bucket, c.key)]
                cached[i] += c.length if present else 0
                pinned[i] += c.length if kept else 0
        replicas = max(1, placement.ring.replicas)
        return [{"bucket": o.bucket, "key": o.key, "size": o.size,
                 "cached": 1.0 if not o.size else min(1.0, cached[i] / replicas / o.size),
                 "pinned": 1.0 if not o.size else min(1.0, pinned[i] / replicas / o.size)}
                for i, o in enumerate(objects)]

    def _job(self, request: web.Request) -> PreloadJob:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            raise _http(404, "NoSuchJob", f"no preload job {request.match_info['job']!r} (jobs live in the "
                                          f"master's memory: a restarted master has none of the earlier ones; "
                                          f"run the preload again, what is cached is not read from S3 again)")
        return job

    def _remember(self, job: PreloadJob) -> None:
        self.jobs[job.id] = job
        done = [i for i, j in self.jobs.items() if j.state != RUNNING]
        for i in done[:max(0, len(self.jobs) - MAX_JOBS)]:
            del self.jobs[i]


def _failure(worker: WorkerInfo, exc: BaseException) -> str:
    """Why `worker` failed, naming it (and its URL) unless the error does."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return reason if worker.url in reason else f"worker {worker.id} at {worker.url}: {reason}"


def _preload_body(data: bytes) -> tuple[list[str], bool]:
    """The distinct URLs (in order) and `pin` of a preload's body; BadRequest for anything else."""
    body = _json_body(data)
    pin = body.get("pin", False)
    if not isinstance(pin, bool):
        raise BadRequest(f"\"pin\" must be true or false, not {pin!r}")
    return _urls(body), pin


def _urls(body: dict) -> list[str]:
    urls = body.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise BadRequest("\"urls\" must be a non-empty list of s3://bucket/prefix strings")
    urls = list(dict.fromkeys(urls))  # a URL given twice is listed (and unpinned) once
    if len(urls) > MAX_URLS:
        raise BadRequest(f"{len(urls)} URLs: at most {MAX_URLS} per request (give common prefixes, or "
                         f"send them in several requests)", code="TooManyURLs")
    for u in urls:
        parse_s3_url(u)
    return urls


def _json_body(data: bytes) -> dict:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object: {\"urls\": [\"s3://bucket/prefix\", ...], \"pin\": false}")
    return body


def _named(urls: list[str], first: int = LOGGED_URLS, width: int = 200) -> str:
    """`urls` for a log line: the first few (a long one cut short), and how many more."""
    shown = [u if len(u) <= width else u[:width] + "..." for u in urls[:first]]
    more = len(urls) - first
    return " ".join(shown) + (f" and {more} more" if more > 0 else "")


class _errors:
    """Named errors -> a JSON error answer: {"error": code, "message": ...}."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, P2PError):
            own = (BadRequest, NotFound, AccessDenied, RequestTimeout, Unavailable)  # others: 502
            status = exc.status if isinstance(exc, own) else 502
            raise _http(status, exc.code, str(exc)) from None
        return False


def _http(status: int, code: str, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound, 408: web.HTTPRequestTimeout,
           503: web.HTTPServiceUnavailable}.get(status, web.HTTPBadGateway)
    return cls(text=json.dumps({"error": code, "message": message}), content_type="application/json")


def _json(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, indent=1))
