"""A peer's answer is read only if it is the answer to what was asked: a proxy between workers that
rewrites the Range of a chunk request, or the status, length or checksum headers of an answer, gets
the reader the right bytes (from a refill), never the bytes of another block, and every answer it
spoiled counts in `p2pcache_corrupt_transfers_total`."""

from __future__ import annotations

import random

import aiohttp
import pytest
from aiohttp import web

from aioproxy import AioProxy
from conftest import metric, wait_for
from worker.peer import answer_sums

CHUNK = 256 << 10
BLOCK = 32 << 10
SIZE = 6 * CHUNK + 99


class PeerProxy(AioProxy):
    """A proxy in front of a worker (the URL it advertises) that spoils its /_p2p/chunk traffic:
    `shift` moves the Range of each request by one block; `answer` ("strip_sums", "pad",
    "status200", "relabel") alters each 206 answer. Counts what it changed and the statuses
    of the answers to shifted requests."""

    def __init__(self) -> None:
        super().__init__()
        self.target = ""
        self.shift = False
        self.answer: str | None = None
        self.shifted: list[int] = []  # the owner's status for each request whose Range moved
        self.spoiled = 0  # answers altered

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        chunk = request.path == "/_p2p/chunk"
        moved = chunk and self.shift and _shift(headers)
        async with self._session.request(request.method, self.target + request.rel_url.path_qs,
                                         headers=headers, data=await request.read()) as up:
            data = await up.read()
            status = up.status
            out = {k: v for k, v in up.headers.items()
                   if k.lower() not in {"content-length", "transfer-encoding", "content-encoding", "connection"}}
        if moved:
            self.shifted.append(status)
        if chunk and self.answer and status == 206:
            self.spoiled += 1
            sums = int(up.headers.get("X-P2P-Sums", 0))
            if self.answer == "strip_sums":  # the bytes alone: nothing left to check them by
                out.pop("X-P2P-Sums", None)
                out.pop("X-P2P-Block", None)
                data = data[sums:]
            elif self.answer == "pad":
                data += b"\0" * 100
            elif self.answer == "status200":
                status = 200
            elif self.answer == "relabel":  # said to be other bytes than those asked for
                first, last = out["Content-Range"][6:].split("/")[0].split("-")
                out["Content-Range"] = f"bytes {int(first) + BLOCK}-{int(last) + BLOCK}/{CHUNK}"
        return web.Response(status=status, body=data, headers=out)


def _shift(headers: dict[str, str]) -> bool:
    """Move a Range of whole blocks one block along, inside the chunk; whether it moved."""
    if "Range" not in headers:
        return False
    first, last = (int(n) for n in headers["Range"][6:].split("-"))
    step = -BLOCK if first >= BLOCK else BLOCK if last + BLOCK < CHUNK else 0
    headers["Range"] = f"bytes={first + step}-{last + step}"
    return step != 0


async def _behind(cluster_factory, secret_kw: dict):
    """A cluster of an honest worker and one its peers reach through a PeerProxy."""
    cluster = await cluster_factory(1, **secret_kw)
    proxy = await PeerProxy().start()
    behind = await cluster.add_worker(advertise=proxy.url)
    proxy.target = "http://%s:%d" % behind.address
    await cluster.wait_converged()
    return cluster, proxy, behind


async def _read_each_chunk(http, url: str, bucket: str, key: str, body: bytes) -> None:
    """A piece from inside each chunk (not whole blocks of it: a Range the proxy can move)."""
    for i in range(len(body) // CHUNK + 1):
        a, b = i * CHUNK + 40_000, min(i * CHUNK + 50_000, len(body))
        if a >= b:
            continue
        async with http.get(f"{url}/{bucket}/{key}", headers={"Range": f"bytes={a}-{b - 1}"}) as resp:
            assert resp.status == 206 and await resp.read() == body[a:b], (i, a, b)


@pytest.mark.parametrize("closed", [True, False], ids=["signed", "open-cluster"])
async def test_a_request_whose_range_is_moved_on_the_way_never_gets_the_reader_other_bytes(
        cluster_factory, s3_client, bucket, closed):
    """Signed, the moved Range breaks the signature (403 at the owner); in an open cluster the owner
    sends the other block, whose Content-Range the reader checks. Either way: a refill, right bytes."""
    cluster, proxy, behind = await _behind(cluster_factory, {} if closed else {"secret": None})
    honest = cluster.workers[0]
    body = random.Random(3).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{behind.url}/{bucket}/m.bin") as resp:  # each owner holds its chunks
                assert resp.status == 200 and await resp.read() == body
            proxy.shift = True
            await _read_each_chunk(http, honest.url, bucket, "m.bin", body)
            assert proxy.shifted, "no chunk request went through the proxy"
            if closed:
                assert set(proxy.shifted) == {403}
            else:
                assert set(proxy.shifted) == {206}
                await wait_for(lambda: _corrupt_is(http, honest.url, len(proxy.shifted)),
                               what="each moved answer counted as a corrupt transfer")
    finally:
        await proxy.stop()


@pytest.mark.parametrize("spoil", ["strip_sums", "pad", "status200", "relabel"])
async def test_an_answer_spoiled_on_the_way_is_never_read(cluster_factory, s3_client, bucket, spoil):
    """Without its sums (dropped: nothing to check the bytes by), longer than asked, a 200, or
    labelled as other bytes: a corrupt transfer, and the chunk is refilled."""
    cluster, proxy, behind = await _behind(cluster_factory, {})
    honest = cluster.workers[0]
    body = random.Random(spoil).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key="m.bin", Body=body)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{behind.url}/{bucket}/m.bin") as resp:
                assert resp.status == 200 and await resp.read() == body
            proxy.answer = spoil
            async with http.get(f"{honest.url}/{bucket}/m.bin") as resp:
                assert resp.status == 200 and await resp.read() == body
            await _read_each_chunk(http, honest.url, bucket, "m.bin", body)
            assert proxy.spoiled, "no chunk answer went through the proxy"
            await wait_for(lambda: _corrupt_is(http, honest.url, proxy.spoiled),
                           what="each spoiled answer counted as a corrupt transfer")
    finally:
        await proxy.stop()


async def _corrupt_is(http, url: str, n: int) -> bool:
    return await metric(http, url, "p2pcache_corrupt_transfers_total") == n


def _answer(status=206, first=0, last=BLOCK - 1, sums="8", block=str(BLOCK), length=None, chunk=CHUNK):
    headers = {"Content-Range": f"bytes {first}-{last}/{chunk}", "X-P2P-Sums": sums, "X-P2P-Block": block}
    headers = {k: v for k, v in headers.items() if v is not None}
    n = (int(sums) if (sums or "").isdigit() else 0) + last - first + 1
    headers["Content-Length"] = str(n if length is None else length)
    return status, headers


def test_an_answer_is_the_one_asked_for_or_refused():
    assert answer_sums(*_answer(), 0, BLOCK, CHUNK) == (8, BLOCK)
    assert answer_sums(*_answer(first=BLOCK, last=3 * BLOCK - 1, sums="16"), BLOCK, 3 * BLOCK, CHUNK) == (16, BLOCK)
    assert answer_sums(*_answer(sums="0", block=None), 0, BLOCK, CHUNK) == (0, 0)  # streamed from S3: said so
    short = CHUNK + 99  # a chunk's short last block
    assert answer_sums(*_answer(first=CHUNK, last=short - 1, chunk=short), CHUNK, short, short) == (8, BLOCK)
    for wrong in (_answer(status=200), _answer(first=BLOCK, last=2 * BLOCK - 1), _answer(chunk=2 * CHUNK),
                  _answer(sums=None), _answer(sums="x"), _answer(block=None), _answer(block="0"),
                  _answer(sums="16"), _answer(sums="-8"), _answer(length=BLOCK), _answer(length=BLOCK + 108)):
        with pytest.raises(ValueError):
            answer_sums(*wrong, 0, BLOCK, CHUNK)
    status, headers = _answer()
    del headers["Content-Length"]
    with pytest.raises(ValueError):
        answer_sums(status, headers, 0, BLOCK, CHUNK)
