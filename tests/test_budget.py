"""Memory a worker's reads hold, bounded whatever the number of readers (worker/budget.py)."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from hypothesis import given, strategies as st

from conftest import CHUNK, wait_for
from worker.budget import OPEN_AHEAD, PieceBudget, readahead


def test_pieces_shrink_as_streams_open_and_grow_back_as_they_close():
    b = PieceBudget(total=16 << 20, least=64 << 10, most=1 << 20)
    assert b.piece() == 1 << 20  # alone: the largest piece
    for _ in range(64):
        b.open()
    assert b.piece() == 256 << 10 and 64 * b.piece() == b.total
    for _ in range(1000):
        b.open()
    assert b.piece() == 64 << 10  # never below the least
    for _ in range(1064):
        b.close()
    assert b.streams == 0 and b.piece() == 1 << 20


@given(st.integers(0, 64), st.integers(1, 10_000))
def test_chunks_opened_ahead_add_up_to_the_budget_at_most(configured, reads):
    ahead = readahead(configured, reads)
    assert 0 <= ahead <= configured
    assert reads * ahead <= OPEN_AHEAD
    if reads * configured <= OPEN_AHEAD:  # a few reads: each as configured
        assert ahead == configured


async def test_more_readers_than_the_readahead_budget_read_every_byte(cluster, s3_client, bucket):
    """Past OPEN_AHEAD reads on one worker, no read opens a chunk ahead: each must still open
    its next chunk when it has sent one, across local and peer chunks."""
    size = 9 * CHUNK + 4321
    body = random.Random(3).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="many.bin", Body=body)
    w = cluster.workers[0]

    async def reader(i: int, http: aiohttp.ClientSession) -> None:
        a = random.Random(i).randrange(CHUNK)
        async with http.get(f"{w.url}/{bucket}/many.bin", headers={"Range": f"bytes={a}-"}) as resp:
            assert resp.status == 206 and await resp.read() == body[a:]

    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # cold, then warm
            await asyncio.gather(*(reader(i, http) for i in range(2 * OPEN_AHEAD + 3)))
    for x in cluster.workers:
        await wait_for(lambda: x.chunks.budget.streams == 0 and x.chunks._reads == 0, what="reads to end")


def test_workers_ask_glibc_for_two_malloc_arenas_unless_the_environment_says(monkeypatch):
    from p2pcache.service import few_malloc_arenas
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert few_malloc_arenas() is True  # glibc's mallopt(M_ARENA_MAX) accepted it
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert few_malloc_arenas() is False  # the operator's setting stands


def test_fills_read_s3_in_smaller_pieces_as_more_run():
    from worker.budget import FILL_PIECES, fill_piece
    assert fill_piece(0) == fill_piece(1) == 1 << 20
    assert [fill_piece(n) for n in (4, 8, 16, 64)] == [1 << 20, 512 << 10, 256 << 10, 256 << 10]
    assert all(n * fill_piece(n) <= FILL_PIECES for n in range(4, 17))
