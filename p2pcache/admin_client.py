"""The master's operator API from Python: start, follow and cancel preloads, unpin, status (signed)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Callable

import aiohttp
from yarl import URL

from .auth import SCHEME, Signer
from .config import split_s3_url
from .errors import AccessDenied, BadRequest, NotFound, P2PError, Unavailable
from .master_client import not_master, unreachable

__all__ = ["AdminClient", "preload", "FINISHED"]

FINISHED = ("done", "failed", "cancelled")
# A job's id goes into the path: one plain segment (the master's are 12 hex digits), never `..`,
# `/` or `?`, which would name another route.
JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
# What a job's progress has (the commands print them); a 2xx answer without them is not a master's.
JOB_KEYS = ("id", "state", "pin", "objects_total", "objects_done", "chunks_total", "chunks_done", "chunks_failed",
            "bytes_total", "bytes_done", "bytes_from_s3", "rate", "elapsed", "failures")


class AdminClient:
    """An async context manager. Requests are signed with the cluster secret (`secret`), as the
    master requires for everything but the ring; errors are the named ones (NotFound, ...)."""

    def __init__(self, master_url: str, secret: bytes | None, *, session: aiohttp.ClientSession | None = None,
                 ssl: Any = None, timeout: float = 300.0) -> None:
        self.url = master_url.rstrip("/")
        self._signer = Signer(secret)
        self._session, self._own = session, session is None
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=5.0)

    async def __aenter__(self) -> "AdminClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own and self._session is not None:
            await self._session.close()

    async def preload(self, urls: list[str], pin: bool = False) -> dict:
        """Start a preload job; its progress (`id`, `state`, ...). Bad URLs, a missing bucket or
        objects, a refused bucket or a pinned set that does not fit raise at once."""
        return await self._call("POST", "/preload", {"urls": list(urls), "pin": pin}, keys=JOB_KEYS)

    async def job(self, job_id: str) -> dict:
        """The job's progress; NotFound for an unknown id (or one no job could have)."""
        return await self._call("GET", _job_path(job_id), keys=JOB_KEYS)

    async def jobs(self) -> list[dict]:
        return (await self._call("GET", "/preload", keys=("jobs",)))["jobs"]

    async def cancel(self, job_id: str) -> dict:
        return await self._call("DELETE", _job_path(job_id), keys=JOB_KEYS)

    async def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None,
                   interval: float = 0.5) -> dict:
        """Poll the job until it is finished; its last progress."""
        while True:
            job = await self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["state"] in FINISHED:
                return job
            await asyncio.sleep(interval)

    async def unpin(self, urls: list[str]) -> dict:
        """`{"unpinned_chunks": n, "failed": [...]}`; when `failed` names workers that could not unpin
        (they will, at their next heartbeat), also `message`: what happened, in one line."""
        return await self._call("POST", "/unpin", {"urls": list(urls)}, partial=True,
                                keys=("unpinned_chunks", "failed"))

    async def status(self, url: str | None = None) -> dict:
        if url:
            try:
                split_s3_url(url)  # a query cannot carry text that is not UTF-8
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        return await self._call("GET", "/status", params={"url": url} if url else None,
                                keys=("epoch", "chunk_size", "workers"))

    async def _call(self, method: str, path: str, body: dict | None = None,
                    params: dict[str, str] | None = None, partial: bool = False, keys: tuple[str, ...] = ()) -> Any:
        """The master's JSON answer, a map with `keys`; with `partial`, also its 502 that says which
        workers `failed`."""
        data = json.dumps(body).encode() if body is not None else b""
        url = URL(self.url + path)
        headers = {"Content-Type": "application/json"} | self._signer.headers(method, url.path, params, data)
        try:
            async with self._session.request(method, url, params=params, data=data or None, headers=headers,
                                             timeout=self._timeout) as resp:
                text = await resp.text()
                if resp.status in (200, 201):
                    return _answer(self.url, resp, json.loads(text), keys)
                if partial and resp.status == 502 and (answer := _partial(text)) is not None:
                    return _answer(self.url, resp, answer, keys)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise unreachable(self.url, exc) from exc
        except ValueError as exc:  # not JSON, or not text
            raise _not_master(self.url, resp) from exc
        raise _error(self.url, resp, text)


def _job_path(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"no preload job {job_id!r} (a job's id is what `p2pcache preload --detach` printed: "
                       f"letters and digits)", code="NoSuchJob")
    return f"/preload/{job_id}"


def _answer(url: str, resp: aiohttp.ClientResponse, answer: Any, keys: tuple[str, ...]) -> Any:
    """`answer` if it is a map with `keys`; a server that says otherwise is not the master."""
    if keys and not (isinstance(answer, dict) and all(k in answer for k in keys)):
        raise _not_master(url, resp)
    return answer


def _partial(text: str) -> dict | None:
    """The master's answer done in part (`failed` workers), or None (a proxy's 502: the master is down)."""
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and answer.get("failed") else None


def _error(url: str, resp: aiohttp.ClientResponse, text: str) -> P2PError:
    status = resp.status
    try:
        body = json.loads(text)
        code, message = body["error"], body["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "", " ".join(text.split())[:300]
        refused = status in (401, 403) and resp.headers.get("WWW-Authenticate") == SCHEME  # the master's, too
        if not refused and status not in (502, 503, 504):  # 50x: a proxy's, in front of a master that is down
            return _not_master(url, resp)
    if status == 404:
        return NotFound(message, code=code or "NoSuchKey")
    if status in (401, 403):
        return AccessDenied(message if status == 403 or not message else
                            f"{message} (give the cluster secret: P2PCACHE_CLUSTER_SECRET or --cluster-secret-file)")
    if 400 <= status < 500:
        return BadRequest(message, code=code or "InvalidRequest")
    return Unavailable(f"master answered {status}: {message}")


def _not_master(url: str, resp: aiohttp.ClientResponse) -> BadRequest:
    """An answer the master never gives: `url` is another server's (a worker's, as often as not)."""
    return BadRequest(not_master(url, resp), code="NotAMaster")


async def preload(master_url: str, urls: list[str], *, pin: bool = False, secret: bytes | None = None,
                  on_progress: Callable[[dict], None] | None = None) -> dict:
    """Preload (and with `pin`, keep) `urls` and wait until the job is finished; its final progress."""
    async with AdminClient(master_url, secret) as admin:
        job = await admin.preload(urls, pin)
        return await admin.wait(job["id"], on_progress)
