"""A serving process's open chunk files: a file evicted or replaced at its path is let go of at
the next open of its name, or by the sweep; one a reader holds stays open until it is done."""

from __future__ import annotations

import os

from conftest import put_chunk
from p2pcache.objects import ObjectInfo
from worker.chunkfiles import ChunkFiles
from worker.chunkfile import read_now
from worker.eviction import POLICIES
from worker.store import ChunkStore

CHUNK = 4096


async def _put(store: ChunkStore, i: int, fill: int) -> str:
    c = ObjectInfo("b", "k", '"e"', 4 * CHUNK).chunk(i, CHUNK)
    await put_chunk(store, c, bytes([fill]) * CHUNK)
    return c.name


async def _store(tmp_path) -> tuple[ChunkStore, list[str]]:
    store = ChunkStore(tmp_path, capacity=1 << 20)
    await store.load()
    return store, [await _put(store, i, i + 1) for i in range(2)]


def _open_paths() -> list[str]:
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]


async def test_an_evicted_file_is_let_go_of_at_the_next_open(tmp_path):
    store, (name, other) = await _store(tmp_path)
    files = ChunkFiles(tmp_path)
    assert bytes(read_now(files.now(name), 0, 10)) == bytes([1]) * 10
    path = str(store.path(name))
    store.discard(name)  # the coordinator evicts it
    assert files.now(name) is None
    assert not any(p.startswith(path) for p in _open_paths())  # closed: its blocks are freed
    assert files.now(other) is not None and len(files) == 1


async def test_a_chunk_refilled_after_corruption_is_read_from_its_new_file_at_once(tmp_path):
    store, (name, _) = await _store(tmp_path)
    files = ChunkFiles(tmp_path)
    with files.pinned(name) as old:
        with open(store.path(name), "r+b") as f:
            f.write(b"\0")  # corrupt on disk: the coordinator drops it and fills it again
        store.discard(name)
        await _put(store, 0, 1)
        new = files.now(name)  # the very next read: the good copy, not the old file
        assert new is not old and bytes(read_now(new, 0, CHUNK)) == bytes([1]) * CHUNK
        assert len(files) == 2  # the old file stays open for the reader that holds it
    assert len(files) == 1


async def test_the_sweep_finds_what_no_open_checked(tmp_path):
    store, names = await _store(tmp_path)
    files = ChunkFiles(tmp_path)
    for name in names:
        assert files.now(name) is not None
    store.discard(names[0])
    files.sweep(files.stale(files.snapshot()))
    assert len(files) == 1 and files.now(names[1]) is not None


async def test_a_chunk_read_here_is_not_evicted_and_one_only_open_here_is_emptied(tmp_path):
    """A file a serving process reads is pinned across processes (worker/sharedpins.py); one it
    only has open gives its blocks back as the coordinator evicts it."""
    full, names = await _store(tmp_path)
    store = ChunkStore(tmp_path, capacity=full.used, policy=POLICIES["lru"])  # room for these two only
    await store.load()
    files = ChunkFiles(tmp_path)
    with files.pinned(names[0]) as read:  # the older one: the first to go, but it is being read
        only_open = files.now(names[1])
        await _put(store, 2, 3)
        assert names[0] in store and names[1] not in store
        assert os.fstat(only_open.fd).st_size == 0  # evicted: its blocks are freed, though still open
        assert bytes(read_now(read, 0, CHUNK)) == bytes([1]) * CHUNK
    await _put(store, 3, 4)  # read no more: now it goes (the oldest)
    assert names[0] not in store
