"""The master's HTTP API as seen by workers and loaders."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict
from urllib.parse import quote

import aiohttp
import msgpack
from yarl import URL

from .auth import Signer
from .errors import BadRequest, Refused, Unauthorized, Unavailable, said
from .ring import NewerRing, NotARing, RingSnapshot, WorkerInfo
from .ringreport import RingReport
from .worker_client import ERROR_HEADER

__all__ = ["MasterClient", "MSGPACK", "REPLACED_HEADER", "TIMEOUT", "unreachable", "not_master", "said"]

MSGPACK = "application/msgpack"
TIMEOUT = 10.0  # seconds a heartbeat or a leave waits for the master, unless told less
# On the master's 409 to a heartbeat from a process a newer one replaced (the id or the URL is
# another live process's now): refused for good, unlike the 409 to an unsigned move, which passes.
REPLACED_HEADER = "X-P2P-Replaced"


class MasterClient:
    """With `signer`, every request carries the cluster signature (loaders need none to read the ring).

    `instance` names this process to the master in its heartbeats and its leave (a worker makes one
    client per start, so a fresh name each time): the newest process of an id holds it, and one that
    was replaced while still running is refused rather than taking the id back on every beat.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, signer: Signer | None = None,
                 instance: str | None = None) -> None:
        self._session = session
        self.url = url.rstrip("/")
        self._signer = signer or Signer(None)
        self.instance = instance or uuid.uuid4().hex

    async def heartbeat(self, worker: WorkerInfo, timeout: float = TIMEOUT, unpins: list | None = None,
                        ring: RingReport | None = None) -> dict:
        """Register or refresh `worker`; the master's answer: `master_id` and `epoch` of the ring it
        is now in, and (since masters tell it) `ttl`, the seconds of silence after which it is dropped.
        With `unpins`, the master's unpins this worker has had (`[master_id, seq]` of the last, `[]` for
        none), the answer has the later ones, if any: `unpins`, `[[seq, bucket, prefix, age], ...]`
        (master/unpins.py). With `ring`, the ring this worker holds, for a master that has not given it one
        (master/earlier.py).
        BadRequest if the master refuses the registration (400), or this process (409: another one has
        the id or the URL since), Unauthorized if it refuses the cluster signature (another secret,
        none, or a clock too far from its own): it will refuse them again. Refused (an Unavailable)
        if it refuses it until another registration of the id leaves or expires (an unsigned move to
        another URL: 409 without REPLACED_HEADER). Unavailable if it does not answer within `timeout` seconds,
        or answers with what is not a map (a proxy's page)."""
        body = msgpack.packb(asdict(worker) | {"instance": self.instance}
                             | ({"unpins": unpins} if unpins is not None else {})
                             | ({"ring": ring.to_wire()} if ring is not None else {}))
        data = await self._call("POST", "/workers", data=body, timeout=timeout, refusable=True)
        try:
            reply = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException):
            reply = None
        if not isinstance(reply, dict):  # a proxy's page: as an unreachable master, tried again
            raise Unavailable(f"{self.url} did not answer as a p2pcache master (it answered a heartbeat with 200 "
                              f"and {said(data, 80)!r}): is it the master's URL?")
        return reply

    async def leave(self, worker_id: str, timeout: float = TIMEOUT) -> None:
        """Out of the ring, unless another process holds `worker_id` now (the master keeps that one)."""
        await self._call("DELETE", f"/workers/{_segment(worker_id)}", params={"instance": self.instance},
                         timeout=timeout)

    async def ring(self, known: tuple[str, int] | None = None, wait: float = 0) -> RingSnapshot:
        """The current ring; with `known` and `wait`, long-poll until it differs. Unavailable if the
        master cannot be asked, or if what answered sent no ring (a proxy's page, a worker's listing
        of a bucket named "ring") or one of a newer version: a ring may come later, as from a master
        that comes back."""
        params = {"wait": str(wait)} if wait else {}
        if known:
            params |= {"master_id": known[0], "epoch": str(known[1])}
        data = await self._call("GET", "/ring", params=params, timeout=wait + 10)
        try:
            return RingSnapshot.decode(data)
        except NotARing as exc:
            raise Unavailable(_no_ring(self.url, exc)) from None

    async def _call(self, method: str, path: str, timeout: float, params: dict[str, str] | None = None,
                    data: bytes = b"", refusable: bool = False) -> bytes:
        """The answer's body; with `refusable`, a 400 (or a 409 with REPLACED_HEADER) is BadRequest, a
        401 or 403 Unauthorized and another 409 Refused, with the master's reason."""
        url = URL(self.url + path, encoded=True)  # as escaped here: never resolved into another path
        headers = {"Accept": MSGPACK} | self._signer.headers(method, url.path, params, data)
        try:
            async with self._session.request(
                method, url, params=params, data=data or None, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                data = await resp.read()
                replaced = resp.status == 409 and REPLACED_HEADER in resp.headers
                if (resp.status in (400, 401, 403) or replaced) and refusable:
                    reason = said(data, 500)
                    error = BadRequest if resp.status in (400, 409) else Unauthorized
                    raise error(f"the master at {self.url} refused this worker: {reason}")
                if resp.status == 409 and refusable and ERROR_HEADER not in resp.headers:  # passes once the other registration leaves or expires
                    raise Refused(f"the master at {self.url} refuses this worker for now: {said(data, 500)}")
                if resp.status != 200 and (resp.status == 404 or ERROR_HEADER in resp.headers):
                    raise Unavailable(not_master(self.url, resp))  # the master has every route it is asked
                if resp.status != 200:
                    raise Unavailable(f"master {method} {path}: HTTP {resp.status} {said(data, 200)}".rstrip())
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise unreachable(self.url, exc) from exc


def _segment(text: str) -> str:
    """`text` as one path segment, matched as is by the master: everything but letters, digits,
    "_" and "-" escaped, dots too ("/workers/x/../w0" or "/workers/.." would resolve to
    another path)."""
    return quote(text, safe="").replace(".", "%2E")


def _no_ring(url: str, exc: NotARing) -> str:
    if isinstance(exc, NewerRing):
        return f"the master at {url} sent a ring this p2pcache cannot read ({exc}): is the master a newer version?"
    return f"{url} did not answer as a p2pcache master (it answered 200 with no ring: {exc}): is it the master's URL?"


def unreachable(url: str, exc: BaseException) -> Unavailable:
    """The master at `url` could not be asked; a server that hung up on plain HTTP is most often
    an https:// one (it drops the connection: no answer to read), so the message says so."""
    hint = ""
    if url.startswith("http://") and isinstance(exc, aiohttp.ServerDisconnectedError):
        hint = " (an https:// server hangs up on plain HTTP: is the URL https://?)"
    return Unavailable(f"master at {url} unreachable: {str(exc) or type(exc).__name__}{hint}")


def not_master(url: str, resp: aiohttp.ClientResponse) -> str:
    """Why an answer the master never gives came from `url`: another server's (a worker's, or S3's)."""
    worker = resp.headers.get(ERROR_HEADER)
    sent = f"it answered as a worker: {resp.status} {worker}" if worker else f"it answered {resp.status} {resp.reason}"
    return f"{url} did not answer as a p2pcache master ({sent}): is it the master's URL?"
