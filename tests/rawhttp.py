"""HTTP/1.1 over a raw socket, so that odd bytes really go out and a dropped connection shows."""

from __future__ import annotations

import asyncio
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["Reply", "exchange", "request_bytes"]


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names; the last of repeated ones
    raw_head: bytes
    body: bytes


def request_bytes(method: str, target: str, headers: dict[str, str] | None = None, host: str = "x") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def exchange(url: str, data: bytes, head: bool = False, timeout: float = 20) -> Reply:
    """Send `data` as is and read one response; raises if the server hangs up before answering."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout)
    try:
        writer.write(data)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if head or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        elif headers.get("transfer-encoding") == "chunked":
            body = await asyncio.wait_for(_chunked(reader), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return Reply(status, headers, raw_head, body)
    finally:
        writer.close()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)
