"""A serving process's open chunk files: a file evicted or replaced at its path is let go of
within RECHECK seconds of reads, or by the sweep; one a reader holds stays open until it is done."""

from __future__ import annotations

import os

from p2pcache.objects import ObjectInfo
from worker.chunkfiles import RECHECK, ChunkFiles
from worker.store import ChunkStore, read_now

CHUNK = 4096


async def _store(tmp_path, count: int = 2) -> tuple[ChunkStore, list[str]]:
    store = ChunkStore(tmp_path, capacity=1 << 20)
    await store.load()
    names = []
    for i in range(count):
        c = ObjectInfo("b", "k", '"e"', count * CHUNK).chunk(i, CHUNK)
        async with store.writing(c.name, c.length, c.pack()) as w:
            await w.write(bytes([i + 1]) * CHUNK)
        names.append(c.name)
    return store, names


def _open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


async def test_an_evicted_file_is_let_go_of_once_it_is_rechecked(tmp_path):
    store, (name, other) = await _store(tmp_path)
    now = [0.0]
    files = ChunkFiles(tmp_path, clock=lambda: now[0])
    file = files.now(name)
    assert bytes(read_now(file, 0, 10)) == bytes([1]) * 10
    path = str(store.path(name))
    store.discard(name)  # the coordinator evicts it
    assert files.now(name) is file  # within RECHECK: the same bytes, still checked on read
    now[0] += RECHECK
    assert files.now(name) is None
    assert not any(p.startswith(path) for p in _open_fds())  # closed: its blocks are freed
    assert files.now(other) is not None and len(files) == 1


async def test_a_replaced_file_is_reopened_and_a_pinned_one_kept_until_its_reader_ends(tmp_path):
    store, (name, _) = await _store(tmp_path)
    now = [0.0]
    files = ChunkFiles(tmp_path, clock=lambda: now[0])
    with files.pinned(name) as old:
        store.discard(name)
        c = ObjectInfo("b", "k", '"e"', 2 * CHUNK).chunk(0, CHUNK)
        async with store.writing(c.name, c.length, c.pack()) as w:  # refilled: a new file, same name
            await w.write(bytes([1]) * CHUNK)
        now[0] += RECHECK
        new = files.now(name)
        assert new is not old and new.fd != old.fd
        assert bytes(read_now(old, 0, 4)) == bytes([1]) * 4  # the reader's file is still open
        assert len(files) == 2
    assert len(files) == 1  # the old one closed when its reader let go
    assert files.now(name) is new


async def test_the_sweep_finds_what_no_read_rechecked(tmp_path):
    store, names = await _store(tmp_path)
    files = ChunkFiles(tmp_path)
    for name in names:
        assert files.now(name) is not None
    store.discard(names[0])
    files.sweep(files.stale(files.snapshot()))
    assert len(files) == 1 and files.now(names[1]) is not None
