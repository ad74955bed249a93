"""p2pcache: a peer-to-peer S3 chunk cache; `Client` and `SyncClient` read through it."""

from __future__ import annotations

__all__ = ["Client", "SyncClient"]


def __getattr__(name: str):
    # Lazy, so that `import p2pcache.ranges` (workers, the master) does not load the client.
    if name == "Client":
        from .client import Client

        return Client
    if name == "SyncClient":
        from .sync_client import SyncClient

        return SyncClient
    raise AttributeError(f"module 'p2pcache' has no attribute {name!r}")
