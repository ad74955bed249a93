"""The worker's settings and its command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from p2pcache.auth import load_secret
from p2pcache.bounds import bounded, bounded_size
from p2pcache.config import add_flag, add_security_flags, parse_listen, size_arg
from p2pcache.httpserver import HEAD_TIMEOUT, IDLE_TIMEOUT
from p2pcache.members import MAX_WEIGHT, check_id, check_url
from p2pcache.origin import check_endpoint
from p2pcache import tls

from .cpus import available_cpus
from .eviction import DEFAULT, POLICIES
from .readers import ClientKey, client_keys_arg

MAX_SECONDS = 86_400  # a day: the most any of the worker's seconds flags may be
MAX_COUNT = 1_000_000  # the most any of its count flags may be
# Bytes of listing answers a worker keeps (worker/listing.py). A page of 1,000 keys is up to
# ~3.5 MB (URL-encoded keys of 1,024 bytes): this holds a few of the largest, thousands of
# usual ones; 256 of the largest held 780 MiB when only their count was bounded.
LISTING_CACHE_BYTES = 32 << 20

__all__ = ["WorkerConfig", "add_arguments"]


@dataclass(frozen=True)
class WorkerConfig:
    master_url: str
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    capacity: int = 20 << 30
    min_free: int = 1 << 30
    s3_endpoint: str | None = None
    advertise: str | None = None
    worker_id: str | None = None
    weight: int = 1
    allowed_buckets: frozenset[str] = field(default_factory=frozenset)
    heartbeat_interval: float = 2.0
    drain_timeout: float = 20.0
    origin_concurrency: int = 16
    meta_ttl: float = 5.0
    readahead: int = 4
    egress_limit: int = 0  # bytes per second; 0 = unlimited
    rebalance_rate: int = 0  # bytes per second; 0 = a quarter of the egress limit, or 256 MiB/s
    client_keys: tuple[ClientKey, ...] = ()  # empty: readers are not checked
    origin_read_timeout: float = 5.0
    origin_deadline: float = 30.0
    origin_breaker: int = 8
    eviction: str = DEFAULT  # worker/eviction.py POLICIES
    cluster_secret: bytes | None = field(default=None, repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    serve_processes: int = 1  # 1: this process serves everything (worker/procs.py for more)
    max_reads: int = 0  # reads sending at once per process; 0: what its piece budget holds (worker/turns.py)
    read_wait: float = 15.0  # seconds a read waits for its turn before 503 SlowDown
    send_timeout: float = 60.0  # seconds a reader may take nothing before its answer is cut; 0: never
    peer_read_timeout: float = 0.0  # no flag (tests set it); 0: `peer_timeout()`'s default
    # No flags (tests set them): seconds a connection has to send its first whole request head, and
    # each next one after an answer, on every server of the worker (p2pcache/httpserver.py).
    head_timeout: float = HEAD_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    listing_cache_bytes: int = LISTING_CACHE_BYTES  # no flag (tests set it)

    def peer_timeout(self) -> float:
        """Seconds a peer may send nothing: an owner's status line waits for its fill, which may
        take --origin-deadline, and a follower's for its primary's."""
        return self.peer_read_timeout or max(60.0, 2 * self.origin_deadline)

    def holder_timeout(self) -> float:
        """Seconds an earlier holder may send nothing (a `local=1` request: worker/chunks.py).

        It answers from its disk or not at all, so its first byte comes in milliseconds; yet a
        fill that asks it is waited on by a peer for `peer_timeout()`. A third of that: one hung
        holder (a third) and a fill from S3 (--origin-deadline, at most half by default) still
        answer that peer in time, so it never fails us over for a holder's fault. At most 10 s:
        a disk or a loop that takes longer to start a chunk is failing, and a hung holder costs
        each fill that meets it this long (it is then not asked for 5 s: worker/routing.py)."""
        return min(10.0, self.peer_timeout() / 3)

    def primary_timeout(self) -> float:
        """Seconds a follower's primary may send nothing (a follower fills a chunk from it).

        The peer that waits on the follower's fill gives up after `peer_timeout()`; after a hung
        primary the follower still fills from S3 (--origin-deadline), so both, and a tenth of
        that timeout of slack (the rest of the fill, a busy loop), must fit in it, or the peer
        fails the follower over for its primary's fault. Yet a healthy primary may itself wait
        for a hung earlier holder, then for S3: twice the holder timeout leaves as long again for
        S3. That is 20 s with every --origin-deadline (the peer timeout is at least twice it), and
        what a hung primary costs each fill that meets it (then it is not asked for 5 s:
        worker/routing.py). Only a short `peer_read_timeout` (tests) makes the peer's bound the
        smaller, and then it wins, even below the holder timeout; where --origin-deadline leaves
        no room at all, the slack: the peer then gives up on the follower only if S3 takes the
        other nine tenths."""
        slack = self.peer_timeout() / 10
        return max(slack, min(2 * self.holder_timeout(), self.peer_timeout() - self.origin_deadline - slack))

    def handoff_rate(self) -> float:
        """Bytes per second the rebalancer hands chunks over at (a draining worker: unlimited)."""
        return self.rebalance_rate or (self.egress_limit / 4 if self.egress_limit else 256 << 20)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "WorkerConfig":
        """Raises ValueError for a bad flag: a secret, TLS files, or what the master would refuse."""
        host, port = a.listen
        tls.check(a.tls_cert, a.tls_key, a.tls_ca)
        _check_numbers(a)
        if a.s3_endpoint:
            _checked("--s3-endpoint", check_endpoint, a.s3_endpoint)
        # The master's own rules: a worker it would refuse must not start and heartbeat in vain.
        master, advertise = a.master.rstrip("/"), a.advertise.rstrip("/")
        _checked("--master", check_url, master)
        if advertise:
            _checked("--advertise", check_url, advertise)
        if a.id:
            _checked("--id", check_id, a.id)
        buckets = frozenset(b.strip() for b in (a.allowed_buckets or "").split(",") if b.strip())
        return cls(
            master_url=master, cache_dir=Path(a.cache_dir), host=host, port=port,
            capacity=a.capacity, min_free=a.min_free, s3_endpoint=a.s3_endpoint or None,
            advertise=advertise or None, worker_id=a.id or None, weight=a.weight,
            allowed_buckets=buckets, heartbeat_interval=a.heartbeat_interval,
            drain_timeout=a.drain_timeout, origin_concurrency=a.origin_concurrency,
            meta_ttl=a.meta_ttl, readahead=a.readahead, egress_limit=a.egress_limit,
            rebalance_rate=a.rebalance_rate,
            client_keys=a.client_keys,
            origin_read_timeout=a.origin_read_timeout, origin_deadline=a.origin_deadline,
            origin_breaker=a.origin_breaker, eviction=a.eviction,
            cluster_secret=load_secret(a.cluster_secret, a.cluster_secret_file),
            tls_cert=a.tls_cert, tls_key=a.tls_key, tls_ca=a.tls_ca,
            serve_processes=_serve_processes(a.serve_processes),
            max_reads=a.max_reads, read_wait=a.read_wait, send_timeout=a.send_timeout,
        )


def _check_numbers(a: argparse.Namespace) -> None:
    """Each number inside the range where it means something: ValueError naming the flag otherwise.

    Seconds stop at a day (a longer wait is a hang, a longer trust in a HEAD is no cache of S3's);
    counts at MAX_COUNT, which no machine holds as many connections or pieces as.
    """
    bounded("--weight", a.weight, 1, MAX_WEIGHT)
    bounded("--heartbeat-interval", a.heartbeat_interval, 0, MAX_SECONDS, above=True)
    bounded("--origin-read-timeout", a.origin_read_timeout, 0, MAX_SECONDS, above=True)
    bounded("--origin-concurrency", a.origin_concurrency, 1, MAX_COUNT)
    bounded("--readahead", a.readahead, 1, MAX_COUNT)
    def value(flag: str):
        return getattr(a, flag[2:].replace("-", "_"))

    for flag in ("--drain-timeout", "--meta-ttl", "--origin-deadline", "--read-wait", "--send-timeout"):
        bounded(flag, value(flag), 0, MAX_SECONDS)
    for flag in ("--origin-breaker", "--max-reads"):
        bounded(flag, value(flag), 0, MAX_COUNT)
    for flag in ("--capacity", "--min-free", "--egress-limit", "--rebalance-rate"):
        bounded_size(flag, value(flag))


def _checked(flag: str, check: Callable[[str], None], value: str) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _serve_processes(text: str) -> int:
    if text == "auto":
        return available_cpus()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise ValueError(f"--serve-processes must be auto or from 1 to 256, not {text!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--master", "URL of the master", required=True)
    add_flag(p, "--listen", "HOST:PORT to serve on", type=parse_listen, default="0.0.0.0:7071")
    add_flag(p, "--cache-dir", "directory for cached chunks", required=True)
    add_flag(p, "--capacity", "bytes of chunks to keep on disk", type=size_arg, default="20GiB")
    add_flag(p, "--min-free", "free disk space to leave on the cache volume", type=size_arg,
             default="1GiB")
    add_flag(p, "--s3-endpoint", "S3-compatible endpoint URL (default: AWS S3)", default="")
    add_flag(p, "--advertise", "URL peers and clients reach this worker at", default="")
    add_flag(p, "--id", "stable worker id (default: kept in the cache dir)", default="")
    add_flag(p, "--weight", "relative share of chunks this worker owns", type=int, default=1)
    add_flag(p, "--allowed-buckets", "comma-separated buckets that may be read (default all)",
             default="")
    add_flag(p, "--heartbeat-interval", "seconds between heartbeats", type=float, default=2.0)
    add_flag(p, "--drain-timeout", "on SIGTERM, seconds to hand chunks to their new owners (and "
             "again to finish in-flight reads)", type=float, default=20.0)
    add_flag(p, "--origin-concurrency", "concurrent chunk fills from S3", type=int, default=16)
    add_flag(p, "--meta-ttl", "seconds an object's ETag and size are trusted", type=float,
             default=5.0)
    add_flag(p, "--readahead", "chunks a read prepares ahead of the one being sent "
             "(fewer when more than 4 reads run: 16 over all reads)", type=int, default=4)
    add_flag(p, "--max-reads", "reads sending bytes at once, per process; the next wait for a turn "
             "(0: as many as its memory budget holds, 128 in the coordinator, 256 in a serving process)",
             type=int, default=0)
    add_flag(p, "--read-wait", "seconds a read waits for its turn before 503 SlowDown", type=float,
             default=15.0)
    add_flag(p, "--send-timeout", "seconds a reader may take no byte before its answer is cut (0: never)",
             type=float, default=60.0)
    add_flag(p, "--egress-limit", "bytes per second this worker sends, e.g. 1GB (0: no limit)",
             type=size_arg, default="0")
    add_flag(p, "--rebalance-rate", "bytes per second of chunks handed to their new owners after a "
             "ring change (0: a quarter of --egress-limit, or 256MiB)", type=size_arg, default="0")
    add_flag(p, "--client-keys", "file of reader keys, `ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,...]` "
             "per line: every S3 request must then be signed (SigV4) by one of them (default: not checked)",
             type=client_keys_arg, default="")
    add_flag(p, "--origin-read-timeout", "seconds without a byte from S3 before a request is "
             "abandoned and retried", type=float, default=5.0)
    add_flag(p, "--origin-deadline", "seconds a chunk's read from S3 may take, all its tries "
             "together (a body still coming then is cut as too slow)", type=float, default=30.0)
    add_flag(p, "--origin-breaker", "failed S3 requests (a success clears the failures of its kind: "
             "GETs, or HEADs and listings) after which S3 is not asked for a while (0: never)",
             type=int, default=8)
    add_flag(p, "--eviction", "which chunks go first when the cache is full: s3fifo (read-once "
             "chunks first, keeps a working set through scans), lru, or slru (segmented: a chunk read "
             "again is protected)", choices=sorted(POLICIES), default=DEFAULT)
    add_security_flags(p)
    add_flag(p, "--tls-ca", "PEM bundle of CAs to trust for https:// peers and master, on top of "
             "the system's", default="")
    add_flag(p, "--serve-processes", "processes serving reads on the port (SO_REUSEPORT) next to the "
             "one that fills, evicts and keeps the ring; auto: the CPUs this worker may use "
             "(affinity, cgroup quota); 1: one process does everything", default="auto")
