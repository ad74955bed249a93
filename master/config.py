"""The master's settings, the cluster-wide placement parameters among them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from p2pcache.auth import load_secret
from p2pcache.bounds import bounded
from p2pcache.config import add_flag, add_security_flags, parse_listen, size_arg
from p2pcache.httpserver import HEAD_TIMEOUT, IDLE_TIMEOUT
from p2pcache.ring import MAX_CHUNK, MIN_CHUNK
from p2pcache.sizes import format_size, show_size
from p2pcache import tls

__all__ = ["MasterConfig", "add_arguments", "MAX_VNODES", "MAX_REPLICAS", "MIN_WORKER_TTL", "MAX_WORKER_TTL"]

# Ring points are vnodes x weight per worker, built by every worker and client at each ring
# change; placement bounds the load whatever the vnodes (README), so more buy nothing.
MAX_VNODES = 1000
# More replicas than workers is a copy on every worker; 1000 is the largest ring measured (README).
MAX_REPLICAS = 1000
# Workers beat at least three times per TTL whatever their --heartbeat-interval (the master's
# answer tells them the TTL): below a second, that is more beats than a master wants to hear.
MIN_WORKER_TTL = 1.0
# A dead worker stays in the ring for a TTL (its chunks' readers wait on it, then go around it):
# an hour is longer than any pause a live worker comes back from. The startup grace has the same
# bound: a live worker beats at least three times per TTL, so a longer wait hears no one new.
MAX_WORKER_TTL = 3600.0


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
    head_timeout: float = HEAD_TIMEOUT  # no flag (tests set it): p2pcache/httpserver.py
    idle_timeout: float = IDLE_TIMEOUT  # no flag (tests set it)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MasterConfig":
        """Raises ValueError naming the flag for a number out of its range, a bad secret or TLS flags."""
        host, port = args.listen
        bounded("--chunk-size", args.chunk_size, MIN_CHUNK, MAX_CHUNK, show=show_size)
        bounded("--replicas", args.replicas, 1, MAX_REPLICAS)
        bounded("--vnodes", args.vnodes, 1, MAX_VNODES)
        bounded("--worker-ttl", args.worker_ttl, MIN_WORKER_TTL, MAX_WORKER_TTL)
        bounded("--startup-grace", args.startup_grace, 0, MAX_WORKER_TTL)
        tls.check(args.tls_cert, args.tls_key, args.tls_ca)
        return cls(host, port, args.chunk_size, args.replicas, args.vnodes, args.worker_ttl,
                   args.startup_grace, load_secret(args.cluster_secret, args.cluster_secret_file),
                   args.tls_cert, args.tls_key, args.tls_ca)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--listen", "HOST:PORT to serve on", type=parse_listen, default="0.0.0.0:7070")
    add_flag(p, "--chunk-size", f"cluster-wide chunk size, from {format_size(MIN_CHUNK)} to {format_size(MAX_CHUNK)}",
             type=size_arg, default="8MiB")
    add_flag(p, "--replicas", f"copies of each chunk in the cluster, 1 to {MAX_REPLICAS}", type=int, default=1)
    add_flag(p, "--vnodes", f"virtual nodes per worker on the hash ring, 1 to {MAX_VNODES}", type=int,
             default=100)
    add_flag(p, "--worker-ttl", f"seconds without a heartbeat before a worker is dropped, {MIN_WORKER_TTL:g} to "
             f"{MAX_WORKER_TTL:g} (workers beat at least three times per TTL)", type=float, default=10.0)
    add_flag(p, "--startup-grace", "seconds after start to collect heartbeats before publishing "
             f"a ring, so a restarted master never hands out a ring missing live workers; at most {MAX_WORKER_TTL:g}",
             type=float, default=5.0)
    add_security_flags(p)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for https:// workers (preload, status), on top of "
             "the system's", default="")
