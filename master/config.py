"""The master's settings, the cluster-wide placement parameters among them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from p2pcache.auth import load_secret
from p2pcache.config import add_flag, add_security_flags, parse_listen, size_arg
from p2pcache import tls

__all__ = ["MasterConfig", "add_arguments"]


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
        """Raises ValueError for a bad secret or TLS flags (reads the secret file)."""
        host, port = args.listen
        tls.check(args.tls_cert, args.tls_key, args.tls_ca)
        return cls(host, port, args.chunk_size, args.replicas, args.vnodes, args.worker_ttl,
                   args.startup_grace, load_secret(args.cluster_secret, args.cluster_secret_file),
                   args.tls_cert, args.tls_key, args.tls_ca)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--listen", "HOST:PORT to serve on", type=parse_listen, default="0.0.0.0:7070")
    add_flag(p, "--chunk-size", "cluster-wide chunk size", type=size_arg, default="8MiB")
    add_flag(p, "--replicas", "copies of each chunk in the cluster", type=int, default=1)
    add_flag(p, "--vnodes", "virtual nodes per worker on the hash ring", type=int, default=100)
    add_flag(p, "--worker-ttl", "seconds without a heartbeat before a worker is dropped",
             type=float, default=10.0)
    add_flag(p, "--startup-grace", "seconds after start to collect heartbeats before publishing "
             "a ring, so a restarted master never hands out a ring missing live workers",
             type=float, default=5.0)
    add_security_flags(p)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for https:// workers (preload, status), on top of "
             "the system's", default="")
