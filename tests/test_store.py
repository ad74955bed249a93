"""The chunk store on a real directory: capacity, pins, crash leftovers, restart."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from conftest import put_chunk, wait_for
from p2pcache.blocksums import BLOCK
from p2pcache.errors import Busy, CorruptChunk
from p2pcache.objects import ChunkId, ObjectInfo
from worker.eviction import LRU, POLICIES
from worker.chunkfile import pread, read_now, read_pieces
from worker.store import ChunkStore

CHUNK = 1000


def chunk(i: int, size: int = 100 * CHUNK):
    return ObjectInfo("b", "k", '"e"', size).chunk(i, CHUNK)


SLOT = CHUNK + len(chunk(0).pack()) + 8 + 16  # its bytes, metadata, one block's sum, the lengths and magic


async def filled(root, n: int) -> ChunkStore:
    """A loaded store with room for ten chunks, holding chunks 0 to n - 1."""
    store = ChunkStore(root, capacity=10 * SLOT)
    await store.load()
    for i in range(n):
        await put_chunk(store, chunk(i))
    return store


def disk_bytes(root) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name != "worker-id")


async def test_capacity_is_respected_under_a_stream_of_new_chunks(tmp_path):
    store = ChunkStore(tmp_path, capacity=10 * SLOT)
    await store.load()
    for i in range(50):
        await put_chunk(store, chunk(i))
        assert store.used <= store.capacity
        assert disk_bytes(tmp_path) <= store.capacity
    assert len(store) == 10
    assert [chunk(i).name in store for i in range(40, 50)] == [True] * 10  # the newest survive


async def test_recently_read_chunks_are_kept_and_pinned_ones_never_evicted(tmp_path):
    store = ChunkStore(tmp_path, capacity=3 * SLOT)
    await store.load()
    for i in range(3):
        await put_chunk(store, chunk(i))
    with store.pinned(chunk(0).name):  # 0 is being read, 1 was just read
        with store.pinned(chunk(1).name):
            pass
        await put_chunk(store, chunk(3))
        assert chunk(2).name not in store  # the least recently used unpinned one went
        assert chunk(0).name in store and store.path(chunk(0).name).exists()
        with store.pinned(chunk(3).name), store.pinned(chunk(1).name):
            with pytest.raises(Busy, match="every cached chunk is being read"):
                await put_chunk(store, chunk(4))
    assert store.used == 3 * SLOT and store._reserved == 0


async def test_a_chunk_held_before_it_is_filled_is_no_victim_once_stored_until_let_go(tmp_path):
    """What a read waiting on a fill does: S3-FIFO would evict the new chunk first."""
    store = ChunkStore(tmp_path, capacity=3 * SLOT, policy=POLICIES["s3fifo"])
    await store.load()
    with store.held(chunk(0).name):
        for i in range(6):
            await put_chunk(store, chunk(i))
        assert chunk(0).name in store and chunk(5).name in store
    for i in range(6, 9):
        await put_chunk(store, chunk(i))
    assert chunk(0).name not in store  # let go: evicted as any other


async def test_a_failed_write_leaves_nothing_visible(tmp_path):
    store = ChunkStore(tmp_path, capacity=10 * SLOT)
    await store.load()
    c = chunk(1)
    with pytest.raises(RuntimeError):
        async with store.writing(c.name, c.length) as w:
            await w.write(b"x" * 10)
            raise RuntimeError("origin died")
    with pytest.raises(ValueError, match="wrote 10 of"):
        async with store.writing(c.name, c.length) as w:
            await w.write(b"x" * 10)
    assert c.name not in store and store.used == 0 and store._reserved == 0
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_restart_rebuilds_the_index_and_drops_crash_leftovers(tmp_path):
    store = await filled(tmp_path, 3)
    # A crash mid-fill leaves a temp file; a torn or foreign file may sit among the chunks.
    (tmp_path / "tmp" / f"{chunk(5).name}.abcd1234.part").write_bytes(b"half")
    torn = store.path(chunk(6).name)
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"short")
    (torn.parent / "junk.txt").write_text("not a chunk")

    again = ChunkStore(tmp_path, capacity=10 * SLOT)
    await again.load()
    assert {chunk(i).name for i in range(3)} == set(again._chunks)
    assert again.used == 3 * SLOT
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not torn.exists() and not (torn.parent / "junk.txt").exists()
    with again.pinned(chunk(2).name) as file:
        data = b"".join([bytes(p) async for p in read_pieces(file, 0, CHUNK, piece=300)])
    assert data == bytes([2]) * CHUNK
    assert await again.read(chunk(1).name, 10, 20) == bytes([1]) * 20
    assert await again.read(chunk(9).name, 0, 1) is None
    # Each chunk knows what it is, so the worker can compute who should hold it now.
    meta = await again.metadata([chunk(i).name for i in (0, 2, 9)])
    assert {ChunkId.unpack(m) for m in meta.values()} == {chunk(0), chunk(2)}


async def test_a_file_whose_trailer_is_damaged_is_dropped_at_restart(tmp_path):
    store = await filled(tmp_path, 2)
    path = store.path(chunk(1).name)
    path.write_bytes(path.read_bytes()[:-1] + b"X")  # the magic
    again = ChunkStore(tmp_path, capacity=10 * SLOT)
    await again.load()
    assert set(again._chunks) == {chunk(0).name} and not path.exists()


async def test_what_a_power_cut_leaves_of_unsynced_chunks_is_never_served(tmp_path):
    """Chunks are renamed in without an fsync. A power cut may leave one empty, or whole in
    size with blocks of zeros that never reached the disk: the first is dropped at restart,
    the second refused by its checksums on its first read."""
    store = ChunkStore(tmp_path, capacity=10 * SLOT)
    await store.load()
    for i in range(3):
        await put_chunk(store, chunk(i), bytes(range(1, 251)) * 4)
    store.path(chunk(1).name).write_bytes(b"")
    with open(store.path(chunk(2).name), "r+b") as f:
        f.write(bytes(CHUNK))  # the data never written back; the trailer was
    again = ChunkStore(tmp_path, capacity=10 * SLOT)
    await again.load()
    assert set(again._chunks) == {chunk(0).name, chunk(2).name}
    assert await again.read(chunk(0).name, 0, CHUNK) == bytes(range(1, 251)) * 4
    with pytest.raises(CorruptChunk):
        await again.read(chunk(2).name, 0, 1)


async def test_a_smaller_capacity_on_restart_evicts_down_to_it(tmp_path):
    store = await filled(tmp_path, 6)
    smaller = ChunkStore(tmp_path, capacity=4 * SLOT)
    await smaller.load()
    assert smaller.used <= 4 * SLOT and disk_bytes(tmp_path) <= 4 * SLOT


async def test_a_store_filled_by_kept_chunks_says_so_when_full_and_at_a_restart_over_its_capacity(tmp_path, caplog):
    kept = {chunk(i).name for i in range(3)}
    store = ChunkStore(tmp_path, capacity=4 * SLOT, kept=kept.__contains__)
    await store.load()
    for i in range(4):
        await put_chunk(store, chunk(i))
    with store.pinned(chunk(3).name):  # read: the one chunk not kept
        with pytest.raises(Busy, match=r"^cache full: every cached chunk is being read or kept by a pin "
                                       rf"\({3 * SLOT} of {4 * SLOT} bytes kept\)$"):
            await put_chunk(store, chunk(4))
    smaller = ChunkStore(tmp_path, capacity=3 * SLOT - 1, kept=kept.__contains__)
    await smaller.load()  # evicts all it can: what is kept stays
    assert set(smaller.names()) == kept
    assert any(r.levelname == "WARNING" and f"kept (pinned) chunks hold {3 * SLOT} bytes, over its capacity of "
               f"{3 * SLOT - 1}" in r.getMessage() and "--capacity" in r.getMessage() for r in caplog.records)
    with pytest.raises(Busy, match=rf"^cache full: kept \(pinned\) chunks hold {3 * SLOT} of its {3 * SLOT - 1} "
                                   r"bytes, .*: unpin some \(p2pcache unpin\) or raise --capacity$"):
        await put_chunk(smaller, chunk(5))


async def test_a_dangling_link_or_a_bad_entry_drops_itself_not_the_scan(tmp_path):
    store = await filled(tmp_path, 3)
    first = store.path(chunk(0).name)
    bad = [first.with_name("zz-dangling"), first.with_name(chunk(9).name), first.parent.parent / "zz"]
    bad[0].symlink_to("/nonexistent")
    bad[1].symlink_to("/nonexistent")
    (bad[2] / "sub").mkdir(parents=True)
    again = ChunkStore(tmp_path, capacity=10 * SLOT)
    await again.load()
    assert sorted(again.names()) == sorted(chunk(i).name for i in range(3))
    assert not any(p.is_symlink() or p.exists() for p in bad[:2]) and not (bad[2] / "sub").exists()


async def test_the_free_space_floor_refuses_fills_it_cannot_make_room_for(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = ChunkStore(tmp_path, capacity=10 * SLOT, min_free=free + (1 << 40))
    await store.load()
    with pytest.raises(Busy, match="free-space floor"):
        await put_chunk(store, chunk(0))
    assert store._reserved == 0 and store.used == 0


BIG = 5 * BLOCK + 1234  # five whole blocks and a short one


async def big_chunk(tmp_path):
    store = ChunkStore(tmp_path, capacity=1 << 30)
    await store.load()
    c = ObjectInfo("b", "big", '"e"', BIG).chunk(0, BIG)
    data = os.urandom(BIG)
    async with store.writing(c.name, c.length, c.pack()) as w:
        for i in range(0, BIG, 10_007):  # pieces that straddle blocks
            await w.write(data[i:i + 10_007])
    return store, c, data


async def test_read_pieces_reads_any_window(tmp_path):
    store, c, data = await big_chunk(tmp_path)
    windows = [(0, BIG, 4096), (123, 4000, 1000), (BIG - 1, 1, 7), (50, 0, 10),
               (BLOCK - 5, 10, BLOCK), (BLOCK, 3 * BLOCK, 2 * BLOCK), (7, BIG - 7, 5 * BLOCK)]
    with store.pinned(c.name) as file:
        for offset, length, piece in windows:
            got = b"".join([bytes(p) async for p in read_pieces(file, offset, length, piece)])
            assert got == data[offset:offset + length]
            # At once, from the page cache (just written): the same bytes.
            assert bytes(read_now(file, offset, length)) == data[offset:offset + length]
    for offset, length, _ in windows:
        assert bytes(await store.read(c.name, offset, length)) == data[offset:offset + length]


@pytest.mark.parametrize("where", [0, 3 * BLOCK + 17, BIG - 1])
async def test_a_flipped_byte_is_never_read_and_reads_elsewhere_still_are(tmp_path, where):
    store, c, data = await big_chunk(tmp_path)
    with open(store.path(c.name), "r+b") as f:  # same size: only the checksums can tell
        f.seek(where)
        f.write(bytes([data[where] ^ 0x01]))
    bad = where // BLOCK
    with pytest.raises(CorruptChunk):
        await store.read(c.name, where, 1)
    with store.pinned(c.name) as file:
        got = b""
        with pytest.raises(CorruptChunk):
            async for p in read_pieces(file, 0, BIG, BLOCK):
                got += bytes(p)
        assert got == data[:bad * BLOCK]  # every byte before the bad block, none of it
        with pytest.raises(CorruptChunk):
            read_now(file, where, 1)
        assert bytes(read_now(file, (bad + 2) % 6 * BLOCK, 100)) == data[(bad + 2) % 6 * BLOCK:][:100]
    other = (bad + 2) % 6
    start = other * BLOCK
    assert bytes(await store.read(c.name, start, 100)) == data[start:start + 100]
    store.discard(c.name)
    assert c.name not in store and not store.path(c.name).exists() and store.used == 0


async def test_read_pieces_asks_the_piece_size_before_each_piece(tmp_path):
    store, c, data = await big_chunk(tmp_path)
    sizes = iter([3 * BLOCK, 1, BLOCK + 5, 10 * BLOCK])  # a budget shrinking, then growing
    with store.pinned(c.name) as file:
        got = [bytes(p) async for p in read_pieces(file, 7, BIG - 7, lambda: next(sizes))]
    # Whole blocks, at least one; the first trimmed by the 7 bytes before the window, the last
    # the short block at the end.
    assert [len(p) for p in got] == [3 * BLOCK - 7, BLOCK, BLOCK, 1234]
    assert b"".join(got) == data[7:]


async def test_a_chunk_discarded_while_read_keeps_its_reader_going(tmp_path):
    store, c, data = await big_chunk(tmp_path)
    with store.pinned(c.name) as file:
        store.discard(c.name)
        got = b"".join([bytes(p) async for p in read_pieces(file, 0, BIG)])
    assert got == data and c.name not in store and store._fds == {}


async def test_open_files_are_bounded_and_evicted_chunks_closed(tmp_path):
    store = ChunkStore(tmp_path, capacity=6 * CHUNK, open_files=3)
    await store.load()
    for i in range(6):
        await put_chunk(store, chunk(i))
        assert await store.read(chunk(i).name, 0, 1) == bytes([i])
        assert len(store._fds) <= 3
    for i in range(6, 12):  # evicting chunks closes their files
        await put_chunk(store, chunk(i))
    assert set(store._fds) <= set(store._chunks)
    store.close()
    assert not store._fds


async def test_cold_reads_go_to_the_executor_and_warm_ones_stay_on_the_loop(tmp_path):
    import asyncio
    import concurrent.futures

    from worker.chunkfile import pread

    class Counting(concurrent.futures.ThreadPoolExecutor):
        calls = 0

        def submit(self, *args, **kwargs):
            Counting.calls += 1
            return super().submit(*args, **kwargs)

    asyncio.get_running_loop().set_default_executor(Counting(max_workers=2))
    data = os.urandom(1 << 20)
    path = tmp_path / "cold"
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evict it from the page cache
        assert await pread(fd, 0, len(data)) == data
        cold_calls = Counting.calls
        assert cold_calls >= 1  # the disk read did not block the loop
        assert await pread(fd, 0, len(data)) == data  # now cached: served on the loop
        assert Counting.calls == cold_calls
    finally:
        os.close(fd)


async def test_a_read_past_the_end_fails_rather_than_return_bytes_it_did_not_read(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)  # pread's buffer is not zeroed: every byte must be read
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="short read"):
            await pread(fd, 500, 1000)
        assert await pread(fd, 500, 500) == b"x" * 500
    finally:
        os.close(fd)


async def read_after_fill(store: ChunkStore, c) -> None:
    """A miss as the read path makes it: fill, then the read the fill was made for."""
    await put_chunk(store, c)
    with store.pinned(c.name, touch=False) as file:
        assert await pread(file.fd, 0, 1) == bytes([c.index % 256])


@pytest.mark.parametrize(("policy", "survives"), [(POLICIES["s3fifo"], True), (LRU, False)])
async def test_a_working_set_survives_a_scan_larger_than_the_cache_unless_the_policy_is_lru(
        tmp_path, policy, survives):
    store = ChunkStore(tmp_path, capacity=10 * SLOT, policy=policy)
    await store.load()
    working = [chunk(i, 3 * CHUNK) for i in range(3)]  # a config read by every pod
    for c in working:
        await read_after_fill(store, c)
    await read_after_fill(store, chunk(9))  # another read meanwhile
    for c in working:  # a second pod reads it
        assert await store.read(c.name, 0, 1) == bytes([c.index])
    for i in range(10, 60):  # a new model of 5x the cache, read once
        await read_after_fill(store, chunk(i))
        assert store.used <= store.capacity
    assert all(c.name in store for c in working) is survives
    assert all(store.path(c.name).exists() for c in working) is survives
    assert len(list((tmp_path / "chunks").glob("*/*"))) == len(store) == 10


async def test_a_demoted_chunk_is_the_next_to_go_and_a_restart_keeps_the_newest(tmp_path):
    store = ChunkStore(tmp_path, capacity=4 * SLOT)
    await store.load()
    for i in range(4):
        await read_after_fill(store, chunk(i))
        assert await store.read(chunk(i).name, 0, 1) == bytes([i])  # all read twice
    store.demote(chunk(2).name)
    await put_chunk(store, chunk(4))
    assert chunk(2).name not in store and not store.path(chunk(2).name).exists()
    assert {chunk(i).name for i in (0, 1, 3, 4)} == set(store._chunks)
    for i, name in enumerate(chunk(i).name for i in (0, 1, 3, 4)):  # mtimes in that order
        os.utime(store.path(name), (1_000 + i, 1_000 + i))
    smaller = ChunkStore(tmp_path, capacity=2 * SLOT)
    await smaller.load()
    assert set(smaller._chunks) == {chunk(3).name, chunk(4).name}


async def test_the_eviction_flag_picks_the_workers_policy(cluster_factory):
    from p2pcache.cli import build_parser
    from worker.config import WorkerConfig
    from worker.eviction import LRU, S3FIFO

    base = ["worker", "--master", "http://m", "--cache-dir", "/tmp/x"]
    assert WorkerConfig.from_args(build_parser().parse_args(base)).eviction == "s3fifo"
    assert WorkerConfig.from_args(build_parser().parse_args(base + ["--eviction", "lru"])).eviction == "lru"
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--eviction", "fifo"])
    cluster = await cluster_factory(2, eviction="lru")
    assert all(isinstance(w.store._policy, LRU) for w in cluster.workers)
    assert isinstance((await cluster.add_worker(eviction="s3fifo")).store._policy, S3FIFO)


async def test_a_store_on_tmpfs_serves_its_chunks(tmp_path):
    """tmpfs (an emptyDir in memory, /dev/shm) refuses reads with RWF_NOWAIT (EOPNOTSUPP on
    Linux 6.x): they go through the executor rather than fail as a disk error."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as root:
        store = ChunkStore(Path(root), capacity=10 * SLOT)
        await store.load()
        c = chunk(1)
        await put_chunk(store, c)
        with store.pinned(c.name) as file:
            got = b"".join([piece async for piece in read_pieces(file, 0, c.length)])
            assert got == bytes([c.index % 256]) * c.length
        assert await store.read(c.name, 5, 100) == bytes([c.index % 256]) * 100
        store.close()


async def test_the_free_space_floor_holds_for_fills_that_write_together(tmp_path, monkeypatch):
    """Each fill checked the disk's free space less its own chunk only: four at once, each
    seeing room for itself, took the disk 2 chunks under its floor. A small disk, simulated
    (its free space is what the files under the cache dir leave of 10 chunks)."""
    import shutil

    def usage(path):
        used = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
        return shutil._ntuple_diskusage(10 * SLOT, used, 10 * SLOT - used)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    store = ChunkStore(tmp_path, capacity=100 * SLOT, min_free=4 * SLOT)  # room for 6 chunks
    await store.load()

    reserved = []

    async def fill(i: int, go: asyncio.Event) -> bool:
        c = chunk(10 + i)
        try:
            async with store.writing(c.name, c.length, c.pack()) as w:
                reserved.append(i)
                await go.wait()
                await w.write(bytes(c.length))
        except Busy:
            return False
        return True

    go = asyncio.Event()
    fills = [asyncio.create_task(fill(i, go)) for i in range(8)]
    # Every fill has reserved its room (and waits to write) or been refused.
    await wait_for(lambda: len(reserved) + sum(f.done() for f in fills) == len(fills), what="the reservations")
    go.set()
    done = await asyncio.gather(*fills)
    assert usage(tmp_path).free >= store.min_free, done
    assert sum(done) == 6 and len(store) == 6
