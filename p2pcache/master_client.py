"""The master's HTTP API as seen by workers and loaders."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import aiohttp
import msgpack
from yarl import URL

from .auth import Signer
from .errors import BadRequest, Unauthorized, Unavailable
from .ring import RingSnapshot, WorkerInfo
from .worker_client import ERROR_HEADER

__all__ = ["MasterClient", "MSGPACK", "unreachable", "not_master"]

MSGPACK = "application/msgpack"


class MasterClient:
    """With `signer`, every request carries the cluster signature (loaders need none to read the ring)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, signer: Signer | None = None) -> None:
        self._session = session
        self.url = url.rstrip("/")
        self._signer = signer or Signer(None)

    async def heartbeat(self, worker: WorkerInfo) -> dict:
        """Register or refresh `worker`; the master's answer: `master_id` and `epoch` of the ring it
        is now in, and (since masters tell it) `ttl`, the seconds of silence after which it is dropped.
        BadRequest if the master refuses the registration, Unauthorized if it refuses the cluster
        signature (another secret, none, or a clock too far from its own): it will refuse them again."""
        body = msgpack.packb(asdict(worker))
        data = await self._call("POST", "/workers", data=body, timeout=10, refusable=True)
        return msgpack.unpackb(data)

    async def leave(self, worker_id: str) -> None:
        await self._call("DELETE", f"/workers/{worker_id}", timeout=10)

    async def ring(self, known: tuple[str, int] | None = None, wait: float = 0) -> RingSnapshot:
        """The current ring; with `known` and `wait`, long-poll until it differs."""
        params = {"wait": str(wait)} if wait else {}
        if known:
            params |= {"master_id": known[0], "epoch": str(known[1])}
        data = await self._call("GET", "/ring", params=params, timeout=wait + 10)
        return RingSnapshot.decode(data)

    async def _call(self, method: str, path: str, timeout: float, params: dict[str, str] | None = None,
                    data: bytes = b"", refusable: bool = False) -> bytes:
        """The answer's body; with `refusable`, a 400 is BadRequest and a 401 or 403 Unauthorized, with the
        master's reason."""
        url = URL(self.url + path)
        headers = {"Accept": MSGPACK} | self._signer.headers(method, url.path, params, data)
        try:
            async with self._session.request(
                method, url, params=params, data=data or None, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                data = await resp.read()
                if resp.status in (400, 401, 403) and refusable:
                    reason = " ".join(data.decode(errors="replace").split())[:500]
                    error = BadRequest if resp.status == 400 else Unauthorized
                    raise error(f"the master at {self.url} refused this worker: {reason}")
                if resp.status != 200 and (resp.status == 404 or ERROR_HEADER in resp.headers):
                    raise Unavailable(not_master(self.url, resp))  # the master has every route it is asked
                if resp.status != 200:
                    raise Unavailable(f"master {method} {path}: HTTP {resp.status} {data[:200]!r}")
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise unreachable(self.url, exc) from exc


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
