"""The master's settings, the cluster-wide placement parameters among them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from p2pcache.auth import load_secret
from p2pcache.bounds import bounded
from p2pcache.config import add_flag, add_security_flags, parse_listen, size_arg
from p2pcache.sizes import format_size, parse_size
from p2pcache import tls

__all__ = ["MasterConfig", "add_arguments", "MIN_CHUNK", "MAX_VNODES", "MIN_WORKER_TTL"]

# Each chunk costs an S3 GET (tens of ms to its first byte), a file with its trailer and an
# entry in the eviction policy: below 64 KiB, the smallest piece a read streams in
# (worker/budget.py) and two checksum blocks, those costs outweigh the bytes. Nothing in the
# code bounds a chunk from above but each worker's capacity (registration.py: two chunks).
MIN_CHUNK = 64 << 10
# Ring points are vnodes x weight per worker, built by every worker and client at each ring
# change; placement bounds the load whatever the vnodes (README), so more buy nothing.
MAX_VNODES = 1000
# Workers beat at least three times per TTL whatever their --heartbeat-interval (the master's
# answer tells them the TTL): below a second, that is more beats than a master wants to hear.
MIN_WORKER_TTL = 1.0


@dataclass(frozen=True)
class MasterConfig:
    host: str = "127.0.0.1"
    port: int = 0
    chunk_size: int = 8 << 20
    replicas: int = 1
    vnodes: int = 100
    worker_ttl: float = 10.0
    startup_grace: float = 0.0
    cluster_secret: bytes | None = field(default=None, repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MasterConfig":
        """Raises ValueError naming the flag for a number out of its range, a bad secret or TLS flags."""
        host, port = args.listen
        bounded("--chunk-size", args.chunk_size, MIN_CHUNK, show=_size)
        bounded("--replicas", args.replicas, 1)
        bounded("--vnodes", args.vnodes, 1, MAX_VNODES)
        bounded("--worker-ttl", args.worker_ttl, MIN_WORKER_TTL)
        bounded("--startup-grace", args.startup_grace, 0)
        tls.check(args.tls_cert, args.tls_key, args.tls_ca)
        return cls(host, port, args.chunk_size, args.replicas, args.vnodes, args.worker_ttl,
                   args.startup_grace, load_secret(args.cluster_secret, args.cluster_secret_file),
                   args.tls_cert, args.tls_key, args.tls_ca)


def _size(n: float) -> str:
    """`64KiB`, or the bytes when that would round them (`65,535 bytes`)."""
    text = format_size(int(n))
    return text if parse_size(text) == n else f"{n:,} bytes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--listen", "HOST:PORT to serve on", type=parse_listen, default="0.0.0.0:7070")
    add_flag(p, "--chunk-size", "cluster-wide chunk size, at least 64KiB", type=size_arg, default="8MiB")
    add_flag(p, "--replicas", "copies of each chunk in the cluster", type=int, default=1)
    add_flag(p, "--vnodes", f"virtual nodes per worker on the hash ring, 1 to {MAX_VNODES}", type=int,
             default=100)
    add_flag(p, "--worker-ttl", "seconds without a heartbeat before a worker is dropped, at least 1 (workers "
             "beat at least three times per TTL)", type=float, default=10.0)
    add_flag(p, "--startup-grace", "seconds after start to collect heartbeats before publishing "
             "a ring, so a restarted master never hands out a ring missing live workers",
             type=float, default=5.0)
    add_security_flags(p)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for https:// workers (preload, status), on top of "
             "the system's", default="")
