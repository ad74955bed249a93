"""Pins of a version S3 has replaced: released when a worker learns of the newer one (it pins it, or
a HEAD finds it), so a model overwritten and pinned again keeps one version's bytes, not all of them."""

from __future__ import annotations

import logging
import random

import aiohttp

from conftest import CHUNK, SECRET, metric
from p2pcache.admin_client import AdminClient, preload
from p2pcache.auth import Signer
from p2pcache.control import WorkerControl
from p2pcache.objects import ChunkId, ObjectInfo

CAPACITY = 12 * (CHUNK + 512)  # a dozen chunk files per worker: keep limit 10.8 chunks
KEY = "llm/weights"


def overwrite(s3_client, bucket: str, chunks: int, seed: int) -> list[ChunkId]:
    """A new version of KEY; its chunk ids."""
    body = random.Random(seed).randbytes(chunks * CHUNK)
    etag = s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)["ETag"]
    return [ObjectInfo(bucket, KEY, etag, len(body)).chunk(i, CHUNK) for i in range(chunks)]


def kept(cluster) -> set[str]:
    return {n for w in cluster.live() for n in w.keeps._kept}


async def released(cluster) -> float:
    async with aiohttp.ClientSession() as http:
        return sum([await metric(http, w.url, "p2pcache_superseded_pins_total") for w in cluster.live()])


async def test_a_model_overwritten_and_pinned_again_keeps_one_version(cluster_factory, s3_client, bucket, caplog):
    """Six chunks, two workers (at most 4 chunks each per version): four versions pinned one after
    the other would keep 24 chunks, over the 21.6 the workers may keep; each pin releases the last."""
    cluster = await cluster_factory(2, capacity=CAPACITY)
    old: set[str] = set()
    with caplog.at_level(logging.INFO, "p2pcache.keep"):
        for v in range(4):
            chunks = overwrite(s3_client, bucket, 6, v)
            job = await preload(cluster.master.url, [f"s3://{bucket}/llm/"], pin=True, secret=SECRET)
            assert job["state"] == "done", job
            assert kept(cluster) == {c.name for c in chunks}  # the old versions' chunks are not kept
            assert not old & kept(cluster)
            for w in cluster.live():  # each keeps its share of this version, nothing more
                mine = [c for c in chunks if w.placement.owner(c).id == w.id]
                assert w.keeps.bytes == sum(c.length for c in mine) <= 4 * CHUNK
            async with AdminClient(cluster.master.url, SECRET) as admin:
                status = await admin.status(f"s3://{bucket}/llm/")
            assert sum(row["pinned"] for row in status["workers"]) == 6 * CHUNK
            assert [o["pinned"] for o in status["objects"]] == [1.0]
            old |= {c.name for c in chunks}
    assert await released(cluster) == 3 * 6
    said = [r.getMessage() for r in caplog.records if "released the pins of" in r.getMessage()]
    assert 3 <= len(said) <= 3 * 2, said  # one line per object and worker, not one per chunk
    assert all(f"s3://{bucket}/{KEY} at version" in s and "S3 has version" in s for s in said), said


async def test_a_head_that_finds_a_newer_version_releases_the_old_pins(cluster_factory, s3_client, bucket):
    """Without a pin of the new version: a read's HEAD (here one that asks S3 at once) on each worker."""
    cluster = await cluster_factory(2, capacity=CAPACITY)
    overwrite(s3_client, bucket, 6, 1)
    assert (await preload(cluster.master.url, [f"s3://{bucket}/llm/"], pin=True, secret=SECRET))["state"] == "done"
    assert len(kept(cluster)) == 6
    overwrite(s3_client, bucket, 6, 2)
    async with aiohttp.ClientSession() as http:
        for w in cluster.live():
            async with http.head(f"{w.url}/{bucket}/{KEY}", headers={"Cache-Control": "no-cache"}) as resp:
                assert resp.status == 200
    assert kept(cluster) == set()
    assert all(w.keeps.bytes == 0 for w in cluster.live())
    assert await released(cluster) == 6
    async with AdminClient(cluster.master.url, SECRET) as admin:
        assert sum(row["pinned"] for row in (await admin.status())["workers"]) == 0


async def test_an_overwrite_during_a_pinned_preload_releases_what_it_had_pinned(cluster_factory, s3_client, bucket):
    """The batches of a pinned preload (as the master's job sends them): the first is kept, then the
    object is overwritten; the next one's fills get 412 from S3, and the pins of the first go too."""
    cluster = await cluster_factory(1, capacity=CAPACITY, meta_ttl=60.0)  # the worker's HEAD stays v1
    worker = cluster.workers[0]
    chunks = overwrite(s3_client, bucket, 6, 1)
    control = WorkerControl(cluster.session, Signer(SECRET))
    me, ring = worker.placement.members[worker.id], worker.placement.ring.version
    assert [r[0] for r in await control.preload(me, chunks[:3], True, ring)] == ["filled"] * 3
    assert len(kept(cluster)) == 3
    overwrite(s3_client, bucket, 6, 2)
    results = await control.preload(me, chunks[3:], True, ring)
    assert all(r[0] == "error" and r[1].startswith("ObjectChanged: ") for r in results), results
    assert kept(cluster) == set() and worker.keeps.bytes == 0
    assert await released(cluster) == 3
