"""A serving process's reads of chunks that other workers hold: straight from them.

Without this, a read of another worker's chunk would pass through the coordinator
(one more receive and send per byte, on one process). The serving process keeps
the coordinator's ring (`/_p2p/local/ring`, fetched again when an answer from the
coordinator names a newer version) and asks the chunk's owners over the signed
peer protocol, checking the block sums as the coordinator would. A chunk this
worker owns but does not hold is the coordinator's to fill; so is every read
whose owners fail: then the caller passes the read (or its rest) on. An owner's
error about the object (S3 failing under it) is the read's answer, not passed on.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Callable, Collection

import aiohttp

from p2pcache import tls
from p2pcache.auth import Signer
from p2pcache.errors import P2PError, PeerError
from p2pcache.objects import ChunkId
from p2pcache.ring import Placement, RingSnapshot, WorkerInfo
from p2pcache.singleflight import SingleFlight

from .forward import DOWN_PATH, RING_PATH, CoordinatorClient
from .peer import PeerClient, PeerStream
from .routing import DownPeers

__all__ = ["PeerReads"]

log = logging.getLogger("p2pcache.worker.peerreads")


class PeerReads:
    def __init__(self, coordinator: CoordinatorClient, secret: bytes | None, tls_ca: str = "",
                 read_timeout: float = 60.0, on_corrupt=lambda: None, *, piece: Callable[[], int],
                 on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self._coordinator = coordinator
        self._secret, self._tls_ca, self._read_timeout = secret, tls_ca, read_timeout
        self._on_corrupt = on_corrupt
        self._on_bytes = on_bytes  # chunk bytes received from peers
        self._piece = piece
        self.placement: Placement | None = None
        self.me = ""
        self._version: tuple | None = None
        self._refresh = SingleFlight()
        self._down = DownPeers()
        self._session: aiohttp.ClientSession | None = None
        self._client: PeerClient | None = None

    async def start(self) -> None:
        ssl = await asyncio.to_thread(tls.client_context, self._tls_ca)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=64, ssl=ssl), auto_decompress=False)
        self._client = PeerClient(self._session, read_timeout=self._read_timeout, signer=Signer(self._secret),
                                  on_corrupt=self._on_corrupt, piece=self._piece, on_bytes=self._on_bytes)

    async def close(self) -> None:
        await self._refresh.close()
        if self._session is not None:
            await self._session.close()

    async def seen(self, version) -> None:
        """The coordinator named its ring's `version`: fetch that ring if it is not ours."""
        if version is not None and tuple(version) != self._version:
            try:
                await self._refresh.do("ring", self._fetch)
            except P2PError as exc:
                log.warning("could not fetch the coordinator's ring: %s", exc)
            except Exception:  # a bad ring must not fail the read that noticed it: the coordinator reads
                log.exception("bug: the coordinator's ring could not be used")

    async def _fetch(self) -> None:
        got = await self._coordinator.get_json(RING_PATH, {})
        snapshot = RingSnapshot.decode(base64.b64decode(got["ring"]))
        placement = await asyncio.to_thread(Placement, snapshot)  # 0.1 s at 1,000 workers: off the loop
        self.placement, self.me, self._version = placement, got["me"], snapshot.version

    def peers(self, c: ChunkId, failed: Collection[str] = ()) -> list[WorkerInfo] | None:
        """The workers to ask for `c`, best first: those the coordinator would ask before it
        filled `c` itself (not the peers that failed lately: it asks them after that), without
        those that failed in this read (`failed`). None if there are none (an owner's chunk:
        the coordinator fills it; every peer failed: the coordinator's to read) or no ring yet."""
        placement = self.placement
        if placement is None or c.chunk_size != placement.ring.chunk_size:
            return None
        found = []
        for w in self._down.order(placement.owners(c), placement.ring.replicas, self.me):
            if w.id == self.me:
                break
            if w.id not in failed:
                found.append(w)
        return found or None

    async def open(self, c: ChunkId, offset: int, length: int, peers: list[WorkerInfo],
                   failed: set[str]) -> PeerStream | None:
        """`length` bytes of `c` from `offset`, from the first of `peers` that answers; None if
        none does (the coordinator's to read). A peer that fails joins `failed`, the peers that
        failed in this read (a hung one is waited for once per read, not once per chunk), and
        those that failed lately. An error about the object, or S3's failure at the owner, is
        raised as the owner answered it: the coordinator would only get it again."""
        for peer in peers:
            if peer.id in failed:  # while this read waited for it on another chunk
                continue
            try:
                stream = await self._client.open(peer, c, offset, length)
            except PeerError as exc:
                log.info("peer %s failed for %s: %s", peer.id, c.ring_key, exc)
                failed.add(peer.id)
                await self.failed(peer, exc)
                continue
            self._down.answered(peer.id)
            return stream
        return None

    async def failed(self, peer: WorkerInfo, exc: PeerError | None = None) -> None:
        """`peer` failed: ask it last for a while, here and at the coordinator (which reads what
        this process passes on, and asks it last, after filling a chunk itself); not for an `exc`
        that is no failure (routing.DownPeers.failed)."""
        if not self._down.failed(peer.id, exc):
            return
        try:
            await self._coordinator.post_json(DOWN_PATH, {"peer": peer.id})
        except P2PError as exc:
            log.warning("could not tell the coordinator that peer %s failed: %s", peer.id, exc)
