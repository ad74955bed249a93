"""Fixtures that start real servers on loopback: an S3 (moto), a master, workers."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import boto3
import pytest
from hypothesis import settings

settings.register_profile("p2pcache", deadline=None)  # a noisy 2-core machine
settings.load_profile("p2pcache")

from faultproxy import FaultProxy
from master.config import MasterConfig
from master.server import Master
from p2pcache.s3local import EmbeddedS3
from worker.config import WorkerConfig
from worker.server import Worker

os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                  AWS_DEFAULT_REGION="us-east-1")
for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
    os.environ.pop(var, None)

CHUNK = 256 << 10
# P2PCACHE_TEST_SERVE_PROCESSES=2 runs every test cluster's workers with serving processes (a
# check of the path through them; tests that look into a worker's store or streams assume 1).
SERVE_PROCESSES = int(os.environ.get("P2PCACHE_TEST_SERVE_PROCESSES", "1"))
SECRET = b"conftest-cluster-secret-0123456789"  # every test cluster is a closed one unless told


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without P2PCACHE_* variables, plus `extra`: a command a test runs sees
    only what the test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("P2PCACHE_")} | extra


def worker_args(tmp_path: Path, *flags: str) -> list[str]:
    """`p2pcache worker` on a free loopback port with its cache dir under `tmp_path`, and `flags`."""
    return ["worker", "--listen", "127.0.0.1:0", "--cache-dir", str(tmp_path / "cache"), *flags]


async def until(predicate) -> None:
    """Let the loop run until `predicate()` holds, at most 1,000 turns (no clock: for ordering tests)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` (sync or async) until truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """`wait_for` for tests without an event loop (processes watched from outside): poll `predicate`
    until truthy, or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return result


async def put_chunk(store, c, fill: bytes | None = None) -> None:
    """Store chunk `c` of a `ChunkStore` whole, filled with `fill` (its index's byte by default)."""
    async with store.writing(c.name, c.length, c.pack()) as w:
        await w.write(fill or bytes([c.index % 256]) * c.length)


async def p2pcache_get(*args: str) -> tuple[int, bytes, str]:
    """`p2pcache get ARGS` in a process of its own: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "get", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out, err.decode()


@pytest.fixture
def fsspec_instances():
    """fsspec caches filesystem instances: after the test, stop their clients so none follows a
    master that is gone (`pytestmark = pytest.mark.usefixtures("fsspec_instances")`)."""
    from p2pcache.fs import P2PCacheFileSystem

    yield
    for fs in list(P2PCacheFileSystem._cache.values()):
        fs.close()
    P2PCacheFileSystem.clear_instance_cache()


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """One sample of a worker's Prometheus metric."""
    async with http.get(f"{url}/_p2p/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} missing at {url}")


def botocore_subresources() -> tuple[set[str], set[str]]:
    """The sub-resources botocore knows, (of a bucket, of an object): the `?name`s of its S3 model's
    request URIs, of any method (`/{Bucket}?delete`, `/{Bucket}/{Key+}?restore`), and the bucket's
    that only its signer lists (auth.py: the names it signs that no GetObject or listing takes)."""
    import botocore.session
    from botocore.auth import HmacV1Auth

    model = botocore.session.get_session().get_service_model("s3")
    bucket, obj, args = set(), set(), set()
    for name in model.operation_names:
        op = model.operation_model(name)
        path, _, query = op.http["requestUri"].partition("?")
        for arg in filter(None, query.split("&")):
            (obj if "{Key+}" in path else bucket).add(arg.partition("=")[0])
        if name in ("GetObject", "HeadObject", "ListParts", "ListObjects", "ListObjectsV2"):
            args |= {m.serialization["name"] for m in op.input_shape.members.values()
                     if m.serialization.get("location") == "querystring"}
    bucket |= set(HmacV1Auth.QSAOfInterest) - bucket - obj - args
    return bucket - {"location", "list-type"}, obj  # GetBucketLocation and ListObjectsV2 are answered


@pytest.fixture(scope="session")
def s3():
    with EmbeddedS3() as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(s3):
    return boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")


@pytest.fixture
async def fault_proxy(s3):
    """A fault-injecting proxy in front of the S3 server (tests/faultproxy.py); no faults until set."""
    proxy = await FaultProxy(s3.url).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def bucket(s3_client, request):
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + f"-{os.getpid()}"
    name = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)[:60].strip("-")
    s3_client.create_bucket(Bucket=name)
    return name


class Cluster:
    """A master and N workers in this process, on loopback, with port 0."""

    def __init__(self, s3_url: str, root: Path, chunk_size: int, worker_ttl: float,
                 heartbeat: float, replicas: int = 1, secret: bytes | None = SECRET,
                 **worker_options) -> None:
        self.s3_url, self.root = s3_url, root
        self.secret = secret
        self.master = Master(MasterConfig(chunk_size=chunk_size, worker_ttl=worker_ttl, replicas=replicas,
                                          cluster_secret=secret))
        self.heartbeat = heartbeat
        self.worker_options = worker_options
        self.workers: list[Worker] = []
        self.session: aiohttp.ClientSession | None = None

    async def start(self, n: int) -> "Cluster":
        self.session = aiohttp.ClientSession()
        await self.master.start()
        for _ in range(n):
            await self.add_worker()
        await self.wait_converged()
        return self

    async def add_worker(self, **options) -> Worker:
        """A worker with the cluster's options and `options`; `clock=` is the worker's clock."""
        i = len(self.workers)
        settings = dict(worker_id=f"w{i}", s3_endpoint=self.s3_url, min_free=0, capacity=1 << 30,
                        heartbeat_interval=self.heartbeat, cluster_secret=self.secret,
                        serve_processes=SERVE_PROCESSES)
        settings |= self.worker_options | options
        wall_clock = settings.pop("wall_clock", time.time)
        clock = settings.pop("clock", time.monotonic)
        settings.setdefault("master_url", self.master.url)  # or a proxy in front of it
        cfg = WorkerConfig(cache_dir=self.root / f"w{i}", **settings)
        worker = Worker(cfg, clock=clock, wall_clock=wall_clock)
        await worker.start()
        self.workers.append(worker)
        return worker

    async def restart(self, old: Worker) -> Worker:
        """A new worker process on a stopped worker's id and cache dir, as a pod restarted on its volume."""
        worker = Worker(old.config)
        await worker.start()
        self.workers[self.workers.index(old)] = worker
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.running]

    async def wait_converged(self, timeout: float = 15.0) -> None:
        """Until every live worker uses the master's current ring, which holds them all."""
        def converged():
            ring = self.master.membership.ring
            ids = {w.id for w in ring.workers}
            live = self.live()
            return ids == {w.id for w in live} and all(
                w.placement is not None and w.placement.ring.version == ring.version for w in live)
        await wait_for(converged, timeout, what="the ring to converge")

    async def stop(self) -> None:
        # No drain at teardown (tests of draining stop their workers themselves): a drain
        # waits for handoffs, up to --drain-timeout when an owner was killed by the test.
        await asyncio.gather(*(w.stop(leave=False) for w in self.live()))
        await self.master.stop()
        await self.session.close()


@pytest.fixture
async def cluster_factory(s3, tmp_path):
    clusters = []

    async def make(n: int = 3, chunk_size: int = CHUNK, worker_ttl: float = 10.0,
                   heartbeat: float = 0.5, replicas: int = 1, secret: bytes | None = SECRET,
                   **worker_options) -> Cluster:
        root = tmp_path / f"cluster-{len(clusters)}" if clusters else tmp_path  # one cache dir per worker
        cluster = Cluster(s3.url, root, chunk_size, worker_ttl, heartbeat, replicas, secret, **worker_options)
        clusters.append(cluster)
        return await cluster.start(n)

    yield make
    for cluster in clusters:
        await cluster.stop()


@pytest.fixture
async def cluster(cluster_factory):
    return await cluster_factory(3)
