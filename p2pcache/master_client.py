"""The master's HTTP API as seen by workers and loaders."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import aiohttp
import msgpack

from .errors import Unavailable
from .ring import RingSnapshot, WorkerInfo

__all__ = ["MasterClient", "MSGPACK"]

MSGPACK = "application/msgpack"


class MasterClient:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = url.rstrip("/")

    async def heartbeat(self, worker: WorkerInfo) -> tuple[str, int]:
        """Register or refresh `worker`; returns the ring version it is now in."""
        body = msgpack.packb(asdict(worker))
        data = await self._call("POST", "/workers", data=body, timeout=10)
        reply = msgpack.unpackb(data)
        return reply["master_id"], reply["epoch"]

    async def leave(self, worker_id: str) -> None:
        await self._call("DELETE", f"/workers/{worker_id}", timeout=10)

    async def ring(self, known: tuple[str, int] | None = None, wait: float = 0) -> RingSnapshot:
        """The current ring; with `known` and `wait`, long-poll until it differs."""
        params = {"wait": str(wait)} if wait else {}
        if known:
            params |= {"master_id": known[0], "epoch": str(known[1])}
        data = await self._call("GET", "/ring", params=params, timeout=wait + 10)
        return RingSnapshot.decode(data)

    async def _call(self, method: str, path: str, timeout: float, **kwargs) -> bytes:
        try:
            async with self._session.request(
                method, self.url + path, headers={"Accept": MSGPACK},
                timeout=aiohttp.ClientTimeout(total=timeout), **kwargs,
            ) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise Unavailable(f"master {method} {path}: HTTP {resp.status} {data[:200]!r}")
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(f"master at {self.url} unreachable: {exc!r}") from exc
