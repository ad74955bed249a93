"""The drain's last line says what was handed over, and what was not and why."""

from __future__ import annotations

import logging
import random
import re
from collections import Counter

import aiohttp

from conftest import metric
from worker.drainreport import FAILED, HANDED, HELD, NO_OWNER, STALE, DrainTally, drain_line

CHUNK = 64 << 10


def test_a_chunk_copied_stays_handed_when_a_later_pass_finds_it_at_its_owner():
    tally = DrainTally()
    tally.note("a", FAILED)
    tally.note("a", HANDED)
    tally.note("a", HELD)  # the next pass offered it again: the owner has it (from us)
    tally.note("b", HELD)
    tally.note("c", HANDED)
    tally.note("c", NO_OWNER)  # a newer ring has no owner for it: it leaves with us
    tally.note("d", FAILED)
    tally.gone("d")  # evicted here meanwhile
    assert tally.counts() == Counter({HANDED: 1, HELD: 1, NO_OWNER: 1})


def test_the_line_says_what_was_handed_and_what_was_not_and_why():
    assert drain_line(Counter({HANDED: 4}), 0, 0.42, True, 0) == "drain: handed 4 chunks to their owners in 0.4 s"
    line = drain_line(Counter({NO_OWNER: 4}), 4, 15.5, True, 0)
    assert line.startswith("drain: handed 0 chunks to their owners in 15.5 s; leaving with this worker: "
                           "4 with no owner to hand them to") and line.endswith("; 4 takes failed")
    line = drain_line(Counter({HANDED: 2, HELD: 1, STALE: 3}), 0, 1.0, True, 0)
    assert "handed 2 chunks" in line and "(1 more they held already)" in line
    assert "3 cut at another chunk size" in line
    assert drain_line(Counter({HANDED: 2, FAILED: 5}), 1, 2.0, False, 5) == (
        "drain: handed 2 chunks to their owners in 2.0 s; leaving with this worker: "
        "5 not handed over by --drain-timeout; 1 take failed")


def drain_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("drain:")]


async def read_some(http: aiohttp.ClientSession, url: str, s3_client, bucket: str) -> None:
    body = random.Random(bucket).randbytes(40 * CHUNK)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    async with http.get(f"{url}/{bucket}/m.bin") as resp:
        assert resp.status == 200 and await resp.read() == body


async def test_a_lone_worker_says_it_handed_nothing_for_want_of_an_owner(cluster_factory, s3_client, bucket, caplog):
    """The only worker drains: the ring has no owner to hand its chunks to. It said it handed
    every chunk it held."""
    cluster = await cluster_factory(1, chunk_size=CHUNK)
    lone = cluster.workers[0]
    async with aiohttp.ClientSession() as http:
        await read_some(http, lone.url, s3_client, bucket)
    held = len(lone.store)
    assert held == 40
    with caplog.at_level(logging.INFO, logger="p2pcache.worker"):
        await lone.stop()  # what SIGTERM does
    [line] = drain_lines(caplog)
    assert line.startswith("drain: handed 0 chunks to their owners in ") and (
        f"leaving with this worker: {held} with no owner to hand them to") in line, line


async def test_a_drain_whose_takes_fail_counts_only_what_its_owners_copied(cluster_factory, s3_client, bucket, caplog):
    """Of three workers one is gone (killed: still in the ring until its TTL), and one drains:
    the chunks for the live owner are handed over, the takes to the dead one fail until
    --drain-timeout. The line counts what the live owner copied, and says what was not."""
    cluster = await cluster_factory(3, chunk_size=CHUNK, drain_timeout=2.0)
    alive, dead, leaving = cluster.workers
    async with aiohttp.ClientSession() as http:
        await read_some(http, alive.url, s3_client, bucket)
        assert len(leaving.store) > 0
        await dead.stop(leave=False)  # as kill -9: the master keeps it for its TTL (10 s)
        copied = await metric(http, alive.url, "p2pcache_handoff_chunks_total")
        with caplog.at_level(logging.INFO, logger="p2pcache.worker"):
            await leaving.stop()
        copied = await metric(http, alive.url, "p2pcache_handoff_chunks_total") - copied
    [line] = drain_lines(caplog)
    handed = re.match(r"drain: handed (\d+) chunks to their owners in [\d.]+ s; leaving with this worker: "
                      r"(\d+) not handed over by --drain-timeout; (\d+) takes? failed$", line)
    assert handed, line
    assert int(handed[1]) == copied > 0 and int(handed[2]) > 0 and int(handed[3]) > 0, line
