"""The URL a worker gives the master for itself: its listening address made reachable, or
--advertise, which must answer as this worker."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from p2pcache.service import Fatal

__all__ = ["check_advertised", "reachable"]


async def check_advertised(session: aiohttp.ClientSession, url: str, me: str) -> None:
    """Fatal if `url` (our --advertise) answers as another worker: a second worker given a live
    one's URL would take it from the master (the newest process holds a URL) and stop the one
    that serves it. Not answering (a proxy not set up yet, a network without hairpin) proves
    nothing: then the start goes on."""
    try:
        async with session.get(url + "/_p2p/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            body = await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
        return
    other = body.get("id") if isinstance(body, dict) else None
    if isinstance(other, str) and other != me:
        raise Fatal(f"--advertise {url} answers as worker {other!r}, not as this one ({me!r}): "
                    f"two workers must not share a URL")


def reachable(host: str) -> str:
    """The host part of a URL for a listening address: this machine's name for a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host
