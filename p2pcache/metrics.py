"""Prometheus exposition for an aiohttp app; each process owns its registry."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["metrics_handler"]


def metrics_handler(registry: CollectorRegistry):
    async def handle(request: web.BaseRequest) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return handle
