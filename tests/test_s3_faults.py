"""A real cluster behind a faulty S3 (tests/faultproxy.py): every read completes with the right
bytes, S3 is asked little more than once, outages give prompt 503s, and versions never mix."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import aiohttp
import pytest

from conftest import CHUNK, metric, wait_for
from p2pcache import Client
from p2pcache.errors import OriginError, OriginThrottled, P2PError
from p2pcache.objects import ObjectInfo

READ_TIMEOUT = 1.0  # --origin-read-timeout for these tests
BACKOFF_CAP = 1.0  # RetryPolicy.cap: the longest wait before a retry


def put(s3_client, bucket: str, key: str, size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


async def get(http: aiohttp.ClientSession, url: str, rng: tuple[int, int] | None = None):
    """(status, body or None if cut short, seconds, headers) of one read."""
    headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
    began = time.monotonic()
    async with http.get(url, headers=headers) as resp:
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            body = None
        return resp.status, body, time.monotonic() - began, resp.headers


async def retries(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/_p2p/metrics") as resp:
        return sum(float(line.split()[-1]) for line in (await resp.text()).splitlines()
                   if line.startswith("p2pcache_origin_retries_total{"))


async def test_reads_ride_out_a_fifth_of_s3_responses_failing(cluster_factory, fault_proxy, s3_client, bucket):
    chunk = 64 << 10  # small chunks: many fills, so every kind of fault comes up
    cluster = await cluster_factory(3, chunk_size=chunk, s3_endpoint=fault_proxy.url,
                                    origin_read_timeout=READ_TIMEOUT)
    bodies = {f"m{i}.bin": put(s3_client, bucket, f"m{i}.bin", 24 * chunk + 1000 * i, seed=i) for i in range(3)}
    keys = sorted(bodies)
    fault_proxy.rate = 0.2
    times: list[float] = []

    async def reader(i: int, http: aiohttp.ClientSession) -> None:
        rnd = random.Random(i)
        worker = cluster.workers[i % 3]
        plan = [(keys[i % 3], None)] + [(k, rnd.randrange(len(bodies[k]))) for k in rnd.choices(keys, k=3)]
        for key, a in plan:
            body = bodies[key]
            rng = None if a is None else (a, min(len(body), a + rnd.randrange(1, 3 * chunk)))
            status, got, took, _ = await get(http, f"{worker.url}/{bucket}/{key}", rng)
            times.append(took)
            assert status == (200 if rng is None else 206), (key, rng, status)
            assert got == (body if rng is None else body[rng[0]:rng[1]]), (key, rng)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(reader(i, http) for i in range(12)))
        retried = sum([await retries(http, w.url) for w in cluster.workers])
    dataset = sum(len(b) for b in bodies.values())
    assert set(fault_proxy.injected) == {"reset", "slowdown", "error", "truncate", "stall"}, fault_proxy.injected
    # Each fault cost one retry; a reset before the response is retried once by aiohttp itself.
    faults = sum(fault_proxy.injected.values())
    assert faults - fault_proxy.injected["reset"] <= retried <= faults, (retried, fault_proxy.injected)
    # Counted at the proxy: S3 sent little more than the data once (a resume costs no refetch).
    assert fault_proxy.body_bytes <= 1.25 * dataset, (fault_proxy.body_bytes, dataset)
    # A stalled body is abandoned after the inactivity timeout, not S3's 60 s.
    assert max(fault_proxy.stall_waits) < READ_TIMEOUT + 1.0, fault_proxy.stall_waits
    # A read may meet a stall on a chunk and one on a chunk it reads after it: two timeouts and
    # their retries; plus slack for a noisy 2-core machine.
    bound = 2 * (READ_TIMEOUT + BACKOFF_CAP) + 3.0
    assert max(times) < bound, sorted(times)[-5:]


async def test_an_s3_outage_gives_prompt_503s_few_requests_and_recovers(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(3, s3_endpoint=fault_proxy.url, meta_ttl=3600, origin_concurrency=4,
                                    origin_read_timeout=READ_TIMEOUT, origin_breaker=8)
    size = 40 * CHUNK
    body = put(s3_client, bucket, "big.bin", size, seed=7)
    url = lambda w: f"{w.url}/{bucket}/big.bin"
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:  # each worker knows the object's ETag: the outage is of GETs
            assert (await get(http, url(w), (0, 1)))[0] == 206
        fault_proxy.mode = "slowdown"
        began = time.monotonic()
        answers = []

        async def reader(i: int) -> None:
            rnd = random.Random(i)
            while time.monotonic() - began < 4.0:
                a = rnd.randrange(1, 40) * CHUNK
                answers.append(await get(http, url(cluster.workers[i % 3]), (a, a + 1000)))

        await asyncio.gather(*(reader(i) for i in range(6)))
        ready = [await (await http.get(f"{w.url}/_p2p/ready")).json() for w in cluster.workers]
        late = fault_proxy.requests_since(began + 2.0)
        during = fault_proxy.requests_since(began)

        fault_proxy.mode = None
        back = time.monotonic()

        async def served() -> bool:
            return (await get(http, url(cluster.workers[0]), (5 * CHUNK, 6 * CHUNK)))[1] == body[5 * CHUNK:6 * CHUNK]
        await wait_for(served, timeout=10.0, interval=0.2, what="reads to succeed after S3 came back")
        recovered = time.monotonic() - back

    statuses = {status for status, *_ in answers}
    took = [t for _, _, t, _ in answers]
    assert statuses == {503}, statuses
    assert all(h["X-P2P-Error"] == "SlowDown" and "throttling" in h["X-P2P-Reason"] for *_, h in answers)
    assert all(int(h["Retry-After"]) >= 1 for *_, h in answers)
    assert statistics.median(took) < 0.5 and max(took) < 4.0, sorted(took)[-5:]
    assert len(answers) > 50  # prompt answers: many reads in 4 s
    assert all("origin breaker" in r.get("degraded", "") for r in ready)
    # Bounded S3 traffic: until a worker's breaker opens, its threshold plus the fills in flight;
    # after, one probe per cooldown (at least 1 s) per worker.
    assert during <= 3 * (8 + 4 + 4), during
    assert late <= 3 * 3, late
    assert recovered < 7.0  # the longest cooldown (5 s), then one read


async def test_a_reader_that_hangs_up_leaves_no_fill_retrying(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_deadline=30.0, origin_breaker=0)
    put(s3_client, bucket, "cold.bin", 6 * CHUNK, seed=3)
    async with aiohttp.ClientSession() as http:
        for w in cluster.workers:  # both know the object (an owner checks a peer's chunk against it)
            async with http.head(f"{w.url}/{bucket}/cold.bin") as resp:
                assert resp.status == 200
        fault_proxy.mode = "error"  # every GET fails: fills would retry for 30 s
        reading = asyncio.create_task(get(http, f"{cluster.workers[0].url}/{bucket}/cold.bin"))
        await wait_for(lambda: fault_proxy.requests >= 6 and
                       sum(w.chunks.fills_in_flight for w in cluster.workers) >= 2,
                       what="fills of the read and its read-ahead, retrying")
        reading.cancel()  # the reader hangs up
        await asyncio.gather(reading, return_exceptions=True)
        await wait_for(lambda: all(w.chunks.fills_in_flight == 0 for w in cluster.workers), timeout=5.0,
                       what="fills nobody waits for to stop retrying")
        assert fault_proxy.requests < 60


def owned_by(owner, asker, s3_client, bucket: str) -> str:
    """The key of a new one-chunk object whose chunk `owner` owns in `asker`'s ring."""
    for i in range(50):
        key = f"o{i}.bin"
        put(s3_client, bucket, key, CHUNK, seed=i)
        info = ObjectInfo(bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], CHUNK)
        if asker.placement.owner(info.chunk(0, CHUNK)).id == owner.id:
            return key
    raise AssertionError(f"no object of 50 has its chunk at {owner.id}")


async def know_the_etag(http: aiohttp.ClientSession, workers, path: str) -> None:
    """Every worker asks S3 for the object's identity now: after this, only its GETs can fail."""
    for w in workers:
        async with http.head(f"{w.url}/{path}") as resp:
            assert resp.status == 200


async def test_an_origin_failure_at_the_owner_reaches_the_reader_as_such(cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_deadline=0.5, origin_breaker=0,
                                    meta_ttl=3600)
    asker, owner = cluster.workers
    key = owned_by(owner, asker, s3_client, bucket)
    async with aiohttp.ClientSession() as http, Client(cluster.master.url) as client:
        await know_the_etag(http, cluster.workers, f"{bucket}/{key}")
        for mode, status, code, reason, kind in (("error", 502, "OriginError", "500 InternalError", OriginError),
                                                  ("slowdown", 503, "SlowDown", "throttling", OriginThrottled)):
            fault_proxy.mode = mode
            status_, _, _, headers = await get(http, f"{asker.url}/{bucket}/{key}", (0, 100))
            assert (status_, headers["X-P2P-Error"]) == (status, code)
            assert reason in headers["X-P2P-Reason"] and "capacity" not in headers["X-P2P-Reason"]
            with pytest.raises(kind, match=reason):
                await client.read(bucket, key, 0, 100)
        # The owner was not blamed, and the asker did not go to S3 itself.
        assert await metric(http, asker.url, "p2pcache_peer_failures_total") == 0
        assert await metric(http, asker.url, "p2pcache_origin_requests_total") == 0
        assert await metric(http, owner.url, "p2pcache_origin_requests_total") > 2
        assert not asker.chunks._down


async def test_a_trickling_fill_fails_at_the_deadline_and_frees_its_origin_slot(
        cluster_factory, fault_proxy, s3_client, bucket):
    """A body that keeps trickling never trips the read timeout's silence: before, its fill
    held its slot for as long as S3 took (16 s here), and every fill behind it waited."""
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, origin_deadline=1.0, origin_breaker=0,
                                    origin_concurrency=1)
    worker = cluster.workers[0]
    put(s3_client, bucket, "slow.bin", CHUNK, seed=21)
    other = put(s3_client, bucket, "other.bin", 1000, seed=22)
    fault_proxy.by_request = lambda method, target: "trickle" if method == "GET" and "slow.bin" in target else None
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(get(http, f"{worker.url}/{bucket}/slow.bin"))
        await wait_for(lambda: fault_proxy.injected["trickle"], what="the fill to trickle")
        status, body, _, _ = await get(http, f"{worker.url}/{bucket}/other.bin")  # waits for the only slot
        assert (status, body) == (200, other)
        status, _, _, headers = await slow
    assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (503, "ServiceUnavailable", "timeout")
    assert f"origin timeout for s3://{bucket}/slow.bin: too slow" in headers["X-P2P-Reason"], headers["X-P2P-Reason"]
    assert f" of {CHUNK} bytes in " in headers["X-P2P-Reason"]
    assert fault_proxy.injected["trickle"] == 1  # tried once: its deadline was spent
    assert not list(worker.config.cache_dir.rglob("*.part")) and worker.chunks.fills_in_flight == 0


async def test_a_trickling_fill_at_the_owner_reaches_the_reader_as_s3s_failure(
        cluster_factory, fault_proxy, s3_client, bucket):
    """Before, the owner's fill ran past the asker's peer timeout (4 s here; 60 s by default),
    the asker blamed the owner and read the chunk from S3 a second time."""
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_deadline=1.0, origin_breaker=0,
                                    meta_ttl=3600, peer_read_timeout=4.0)
    asker, owner = cluster.workers
    key = owned_by(owner, asker, s3_client, bucket)
    async with aiohttp.ClientSession() as http:
        await know_the_etag(http, cluster.workers, f"{bucket}/{key}")
        fault_proxy.get_mode = "trickle"
        status, _, _, headers = await get(http, f"{asker.url}/{bucket}/{key}")
        assert (status, headers["X-P2P-Origin"]) == (503, "timeout")
        assert f"origin timeout for s3://{bucket}/{key}: too slow" in headers["X-P2P-Reason"], headers["X-P2P-Reason"]
        assert await metric(http, asker.url, "p2pcache_peer_failures_total") == 0
        assert await metric(http, asker.url, "p2pcache_origin_requests_total") == 0
    assert fault_proxy.gets == 1 and not asker.chunks._down


async def test_an_object_overwritten_while_it_is_read_never_mixes_versions(cluster_factory, fault_proxy, s3_client, bucket):
    chunk = 64 << 10
    cluster = await cluster_factory(3, chunk_size=chunk, s3_endpoint=fault_proxy.url, meta_ttl=0.2,
                                    origin_read_timeout=READ_TIMEOUT)
    size, rounds = 16 * chunk, 10
    versions = [random.Random(100 + v).randbytes(size) for v in range(5)]
    s3_client.put_object(Bucket=bucket, Key="v.bin", Body=versions[0])
    fault_proxy.rate = 0.2  # resumes, too, must stay on one version
    done, whole, seen, written = [0], [0], set(), [False]

    def check(rng: tuple[int, int], got: bytes | None, how: str) -> None:
        """Each answer is one version's bytes in full, or an error, or cut short: never a mix."""
        if got is not None:
            matches = [v for v, version in enumerate(versions) if got == version[rng[0]:rng[1]]]
            assert matches, f"mixed versions from {how} {rng}"
            seen.update(matches)
            whole[0] += 1
        done[0] += 1

    def more(i: int) -> bool:
        """Readers go on until every version is written, and for `rounds` reads at least."""
        return i < rounds or not written[0]

    async def http_reader(i: int, http: aiohttp.ClientSession) -> None:
        rnd, worker, n = random.Random(i), cluster.workers[i % 3], 0
        while more(n):
            a = rnd.choice([0, rnd.randrange(size)])
            status, got, _, _ = await get(http, f"{worker.url}/{bucket}/v.bin", (a, size) if a else None)
            assert status in (200, 206, 502, 503), status
            check((a, size), got if status in (200, 206) else None, worker.id)
            n += 1

    async def client_reader(client: Client) -> None:
        n = 0
        while more(n):
            try:
                got = await client.read(bucket, "v.bin")
            except P2PError:  # ObjectChanged among them
                got = None
            check((0, size), got, "the client")
            n += 1

    async def writer() -> None:
        """Each version once the one before was read whole (so every version is filled from S3,
        through the faults), after some reads of it."""
        for v, version in enumerate(versions[1:], 1):
            await wait_for(lambda: done[0] >= 9 * rounds * v // len(versions) and v - 1 in seen, timeout=60.0,
                           what=f"reads of version {v - 1}")
            await asyncio.to_thread(s3_client.put_object, Bucket=bucket, Key="v.bin", Body=version)
        await wait_for(lambda: len(versions) - 1 in seen, timeout=60.0, what="reads of the last version")
        written[0] = True

    async with aiohttp.ClientSession() as http, Client(cluster.master.url, meta_ttl=0.2) as client:
        await asyncio.gather(writer(), *(http_reader(i, http) for i in range(6)),
                             *(client_reader(client) for _ in range(3)))
    assert done[0] >= 9 * rounds and whole[0] >= done[0] // 2
    assert seen == set(range(len(versions)))
    assert sum(fault_proxy.injected.values()) >= 5  # faults met the overwrites


async def test_the_breaker_opens_when_every_get_stalls_while_heads_succeed(cluster_factory, fault_proxy, s3_client,
                                                                            bucket):
    # Each read HEADs the object first (meta_ttl=0), and S3 answers every HEAD; a fill's GET
    # tries fit 3 stalls in its deadline, one fewer than the breaker's threshold: only GET
    # failures counted across the HEADs' successes can open it.
    cluster = await cluster_factory(1, s3_endpoint=fault_proxy.url, meta_ttl=0, origin_read_timeout=0.3,
                                    origin_deadline=1.0, origin_breaker=4)
    put(s3_client, bucket, "s.bin", 100_000, seed=9)
    url = f"{cluster.workers[0].url}/{bucket}/s.bin"
    fault_proxy.get_mode = "stall"  # each stalls before half the object: the last bytes never come
    async with aiohttp.ClientSession() as http:
        answers = []

        async def refused() -> bool:
            answers.append(await get(http, url, (99_990, 100_000)))
            return "circuit breaker" in answers[-1][3].get("X-P2P-Reason", "")
        await wait_for(refused, timeout=20.0, interval=0.05, what="a read refused by the breaker")
        ready = await (await http.get(f"{cluster.workers[0].url}/_p2p/ready")).json()
        # Open, it stays so however many HEADs succeed: a HEAD's success proves nothing of GETs,
        # so it never closes the breaker; only a GET probe (which stalls) could. Every read
        # after is refused, none waits for S3's stalls again.
        first = len(answers)
        probes = fault_proxy.gets

        async def probed_twice() -> bool:
            answers.append(await get(http, url, (99_990, 100_000)))
            return fault_proxy.gets >= probes + 2
        await wait_for(probed_twice, timeout=20.0, interval=0.05, what="two GET probes after the cooldowns")
    assert first <= 3, [h.get("X-P2P-Reason") for *_, h in answers]  # 4 stalls: within the second read
    assert "origin breaker" in ready.get("degraded", ""), ready
    for status, _, _, headers in answers[first - 1:]:
        assert (status, headers["X-P2P-Origin"]) == (503, "timeout")
        assert "circuit breaker" in headers["X-P2P-Reason"], headers["X-P2P-Reason"]


async def test_the_owners_breaker_open_after_500s_reaches_the_reader_as_a_502_with_retry_after(
        cluster_factory, fault_proxy, s3_client, bucket):
    cluster = await cluster_factory(2, s3_endpoint=fault_proxy.url, origin_breaker=3, meta_ttl=3600)
    asker, owner = cluster.workers
    key = owned_by(owner, asker, s3_client, bucket)
    async with aiohttp.ClientSession() as http, Client(cluster.master.url) as client:
        await know_the_etag(http, cluster.workers, f"{bucket}/{key}")
        fault_proxy.get_mode = "error"  # 3 500s at the owner open its breaker
        answers = [await get(http, f"{asker.url}/{bucket}/{key}", (0, 100)) for _ in range(2)]
        with pytest.raises(OriginError, match="circuit breaker open") as refused:
            await client.read(bucket, key, 0, 100)
        assert await metric(http, asker.url, "p2pcache_origin_requests_total") == 0
    assert fault_proxy.gets >= 3  # the owner asked S3 three times before its breaker opened
    for status, _, _, headers in answers:
        assert (status, headers["X-P2P-Error"], headers["X-P2P-Origin"]) == (502, "OriginError", "error")
        assert "circuit breaker" in headers["X-P2P-Reason"] and "500 InternalError" in headers["X-P2P-Reason"]
        assert int(headers["Retry-After"]) >= 1
    assert refused.value.retry_after is not None and "500 InternalError" in str(refused.value)
