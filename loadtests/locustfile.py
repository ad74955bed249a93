"""Locust users reading byte ranges through p2pcache (or any S3-style HTTP endpoint), reporting bytes/s besides requests/s.

    locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:7071 \\
        --objects demo/models/demo-model.safetensors --csv /tmp/p2p --bandwidth-json /tmp/p2p_bandwidth.json

Each user reads back to back (no wait), and each read is either the next `--large-size` range of
its own sequential stream through one object (a loader streaming a shard; at the end of the
object it starts over at a random offset of a random object) or a `--small-size` range at a
random 4 KiB-aligned offset (random access to tensors), in the ratio `--large-weight` to
`--small-weight`. Every response is checked: status 206 and the exact length.

Options, each also an environment variable (locust's own config files work too):
  --objects        P2P_OBJECTS        comma-separated `bucket/key` or `bucket/key:size` (a HEAD
                                      finds sizes not given); default the `p2pcache local` demo
  --large-size     P2P_LARGE_SIZE     8MiB       --small-size    P2P_SMALL_SIZE    64KiB
  --large-weight   P2P_LARGE_WEIGHT   1          --small-weight  P2P_SMALL_WEIGHT  3
  --endpoints      P2P_ENDPOINTS      comma-separated base URLs to spread the users over (each user
                                      keeps one), e.g. every worker of a local cluster; default --host
  --bandwidth-json P2P_BANDWIDTH_JSON also write the bandwidth summary here

At the end of the run the bytes received, MB/s and req/s are printed and, with `--csv PREFIX`,
written to `PREFIX_bandwidth.csv` (and to `--bandwidth-json`). In distributed runs the workers
report their bytes to the master with their stats. Nothing is fetched but the target host.
Locust registers the listeners below when it imports this file; nothing else runs at import.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import time
import urllib.request

from locust import FastHttpUser, constant, events, task
from locust.runners import WorkerRunner

__all__ = ["RangeReader"]

log = logging.getLogger("p2pcache.locust")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30}
ALIGN = 4096


def parse_size(text: str) -> int:
    """`64KiB` -> 65536 (the same forms as the p2pcache CLI, without importing it)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {text!r}: use bytes or a suffix like 64KiB, 8MiB, 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class Bandwidth:
    """Response bytes since the test (or, with --reset-stats, the ramp-up) ended."""

    def __init__(self) -> None:
        self.bytes = self.unreported = 0
        self.started, self.stopped = time.monotonic(), None
        self.objects: list[tuple[str, int]] = []  # (path, size), resolved at test start
        self.written = False
        self.reset_after_ramp_up = False  # locust's --reset-stats

    def reset(self) -> None:
        self.bytes, self.started, self.stopped, self.written = 0, time.monotonic(), None, False

    def add(self, n: int) -> None:
        self.bytes += n
        self.unreported += n

    def summary(self, env) -> dict:
        seconds = max((self.stopped or time.monotonic()) - self.started, 1e-9)
        total = env.stats.total
        return {"bytes": self.bytes, "seconds": seconds, "bytes_per_s": self.bytes / seconds,
                "MB_per_s": self.bytes / seconds / 1e6, "requests": total.num_requests,
                "failures": total.num_failures, "requests_per_s": total.num_requests / seconds}


BANDWIDTH = Bandwidth()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("p2pcache range reads")
    group.add_argument("--objects", env_var="P2P_OBJECTS", default="demo/models/demo-model.safetensors",
                       help="comma-separated bucket/key or bucket/key:size")
    group.add_argument("--large-size", env_var="P2P_LARGE_SIZE", default="8MiB", help="sequential read size")
    group.add_argument("--small-size", env_var="P2P_SMALL_SIZE", default="64KiB", help="random read size")
    group.add_argument("--large-weight", env_var="P2P_LARGE_WEIGHT", type=float, default=1.0)
    group.add_argument("--small-weight", env_var="P2P_SMALL_WEIGHT", type=float, default=3.0)
    group.add_argument("--endpoints", env_var="P2P_ENDPOINTS", default="",
                       help="comma-separated base URLs to spread users over (default: --host)")
    group.add_argument("--bandwidth-json", env_var="P2P_BANDWIDTH_JSON", default="",
                       help="write the bandwidth summary here")


@events.init.add_listener
def _init(environment, **_) -> None:
    BANDWIDTH.reset_after_ramp_up = bool(getattr(environment.parsed_options, "reset_stats", False))


@events.test_start.add_listener
def _resolve_objects(environment, **_) -> None:
    BANDWIDTH.reset()
    objects = []
    for spec in environment.parsed_options.objects.split(","):
        path, _, size = spec.strip().strip("/").partition(":")
        size = parse_size(size) if size else _head_size(_endpoints(environment)[0], f"/{path}")
        objects.append((f"/{path}", size))
    BANDWIDTH.objects = objects


def _endpoints(environment) -> list[str]:
    listed = [u.strip().rstrip("/") for u in environment.parsed_options.endpoints.split(",") if u.strip()]
    return listed or [(environment.host or "").rstrip("/")]


def _head_size(host: str, path: str) -> int:
    req = urllib.request.Request(f"{host}{path}", method="HEAD")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.headers["Content-Length"])


@events.spawning_complete.add_listener
def _ramped_up(user_count, **_) -> None:
    if BANDWIDTH.reset_after_ramp_up:
        BANDWIDTH.reset()


@events.request.add_listener
def _count(response_length, exception, **_) -> None:
    if exception is None and response_length:
        BANDWIDTH.add(response_length)


@events.report_to_master.add_listener
def _report(client_id, data) -> None:
    data["p2p_bytes"], BANDWIDTH.unreported = BANDWIDTH.unreported, 0


@events.worker_report.add_listener
def _collect(client_id, data) -> None:
    BANDWIDTH.add(data.get("p2p_bytes", 0))


@events.test_stop.add_listener
def _stopped(environment, **_) -> None:
    BANDWIDTH.stopped = time.monotonic()


@events.quitting.add_listener
def _write(environment, **_) -> None:
    # At quitting, not test_stop: a distributed run's last worker reports arrive after test_stop.
    if isinstance(environment.runner, WorkerRunner) or BANDWIDTH.written:
        return
    BANDWIDTH.written = True
    s = BANDWIDTH.summary(environment)
    print(f"p2pcache bandwidth: {s['bytes']:,} bytes in {s['seconds']:.1f} s = {s['MB_per_s']:,.1f} MB/s, "
          f"{s['requests_per_s']:,.1f} req/s, {s['failures']} failures", flush=True)
    options = environment.parsed_options
    if getattr(options, "csv_prefix", None):
        with open(f"{options.csv_prefix}_bandwidth.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(s))
            writer.writeheader()
            writer.writerow(s)
    if options.bandwidth_json:
        with open(options.bandwidth_json, "w") as f:
            json.dump(s, f, indent=2)


class RangeReader(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.large, self.small = parse_size(options.large_size), parse_size(options.small_size)
        self.p_large = options.large_weight / ((options.large_weight + options.small_weight) or 1)
        self.stream = self._new_stream()
        self.base = random.choice(_endpoints(self.environment))

    def _new_stream(self) -> tuple[str, int, int]:
        path, size = random.choice(BANDWIDTH.objects)
        return path, size, random.randrange(0, max(size - self.large, 0) + 1, ALIGN)

    @task
    def read(self) -> None:
        if random.random() < self.p_large:
            path, size, offset = self.stream
            length = min(self.large, size - offset)
            self.stream = (path, size, offset + length) if offset + length < size else self._new_stream()
            self._get(path, offset, length, f"large sequential range ({self.large} B)")
        else:
            path, size = random.choice(BANDWIDTH.objects)
            length = min(self.small, size)
            offset = random.randrange(0, size - length + 1, ALIGN)
            self._get(path, offset, length, f"small random range ({self.small} B)")

    def _get(self, path: str, offset: int, length: int, name: str) -> None:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        with self.client.get(self.base + path, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != 206 or len(resp.content or b"") != length:
                resp.failure(f"status {resp.status_code}, {len(resp.content or b'')} bytes instead of {length}")
