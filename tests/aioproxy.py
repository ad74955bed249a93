"""An aiohttp server on 127.0.0.1 port 0 in front of a worker, for proxies that alter its peer
traffic (tests/test_checksums.py's Flipper, tests/test_peer_answers.py's PeerProxy): a subclass
answers each request in `_forward`, with `self._session` to reach the worker."""

from __future__ import annotations

import aiohttp
from aiohttp import web

__all__ = ["AioProxy"]


class AioProxy:
    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError
