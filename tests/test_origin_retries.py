"""S3Origin against a faulty S3: what is retried, resumed from where, and what never is."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from conftest import CHUNK, wait_for
from p2pcache.errors import (
    InvalidPartNumber, NotFound, ObjectChanged, OriginError, OriginThrottled, OriginTimeout, OriginUnavailable,
)
from p2pcache.origin import S3Origin, brief

SIZE = 3 << 20


@pytest.fixture
def obj(s3_client, bucket):
    body = random.Random(3).randbytes(SIZE)
    s3_client.put_object(Bucket=bucket, Key="o.bin", Body=body)
    return bucket, "o.bin", s3_client.head_object(Bucket=bucket, Key="o.bin")["ETag"], body


async def read(origin: S3Origin, obj, start: int = 0, stop: int = SIZE, **kw) -> bytes:
    bucket, key, etag, _ = obj
    return b"".join([p async for p in origin.read_range(bucket, key, etag, start, stop, **kw)])


def starts(proxy) -> list[int]:
    return [int(r.removeprefix("bytes=").split("-")[0]) for r in proxy.ranges]


async def test_cut_bodies_resume_from_the_byte_reached_with_the_same_version(fault_proxy, obj):
    fault_proxy.script = ["truncate", "truncate", "truncate"]
    async with S3Origin.connect(fault_proxy.url) as origin:
        assert await read(origin, obj, 1000) == obj[3][1000:]
    assert fault_proxy.gets == 4
    assert starts(fault_proxy)[0] == 1000
    assert all(a < b for a, b in zip(starts(fault_proxy), starts(fault_proxy)[1:]))  # never from the start again
    assert fault_proxy.body_bytes < 1.25 * (SIZE - 1000)


async def test_a_stalled_body_is_abandoned_after_the_read_timeout_and_retried(fault_proxy, obj):
    fault_proxy.script = ["stall"]
    async with S3Origin.connect(fault_proxy.url, read_timeout=0.5) as origin:
        began = time.monotonic()
        assert await read(origin, obj) == obj[3]
        took = time.monotonic() - began
    assert fault_proxy.injected["stall"] == 1 and fault_proxy.gets == 2
    assert 0.45 < fault_proxy.stall_waits[0] < 2.0  # abandoned at the timeout, not S3's 60 s
    assert took < 5.0


async def test_resets_throttling_and_5xx_are_retried(fault_proxy, obj):
    fault_proxy.script = ["reset", "slowdown", "error", "reset"]
    async with S3Origin.connect(fault_proxy.url) as origin:
        assert await read(origin, obj, 0, 1 << 20) == obj[3][:1 << 20]
    assert fault_proxy.gets == 5 and sum(fault_proxy.injected.values()) == 4


async def test_a_changed_object_a_404_and_a_403_are_never_retried(fault_proxy, obj, s3_client):
    bucket, key, etag, _ = obj
    async with S3Origin.connect(fault_proxy.url) as origin:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"the next version")
        with pytest.raises(ObjectChanged):
            await read(origin, obj)
        assert fault_proxy.gets == 1
        with pytest.raises(NotFound):
            await read(origin, (bucket, "missing", etag, b""))
        assert fault_proxy.gets == 2
        fault_proxy.script = ["denied"]
        with pytest.raises(OriginError) as denied:
            await read(origin, (bucket, key, s3_client.head_object(Bucket=bucket, Key=key)["ETag"], b""), 0, 4)
        assert "AccessDenied" in str(denied.value) and fault_proxy.gets == 3


async def test_a_resume_after_the_object_changed_fails_rather_than_mix_versions(fault_proxy, obj, s3_client):
    bucket, key, etag, old = obj
    fault_proxy.script = ["stall"]
    got = bytearray()
    async with S3Origin.connect(fault_proxy.url, read_timeout=1.0) as origin:
        async def reading() -> None:
            async for piece in origin.read_range(bucket, key, etag, 0, SIZE):
                got.extend(piece)
        task = asyncio.create_task(reading())
        await wait_for(lambda: fault_proxy.stalling, what="the body to stall")
        await asyncio.to_thread(s3_client.put_object, Bucket=bucket, Key=key, Body=b"x" * SIZE)
        with pytest.raises(ObjectChanged):
            await task
    assert fault_proxy.gets == 2 and starts(fault_proxy)[1] == len(got)  # resumed where it was cut
    assert bytes(got) == old[:len(got)]  # only bytes of the version the read began with


async def test_retries_end_at_the_deadline_or_when_nobody_wants_the_bytes(fault_proxy, obj):
    fault_proxy.mode = "error"
    async with S3Origin.connect(fault_proxy.url, deadline=1.0, breaker_threshold=0) as origin:
        began = time.monotonic()
        with pytest.raises(OriginError, match="500 InternalError"):
            await read(origin, obj)
        assert time.monotonic() - began < 3.0
        assert 3 <= fault_proxy.requests <= 1.0 / origin.policy.base * 2  # backed off, not hammered
        before = fault_proxy.requests
        with pytest.raises(OriginError):
            await read(origin, obj, keep_going=lambda: False)
        assert fault_proxy.requests == before + 1


async def test_a_trickling_body_fails_as_too_slow_at_the_deadline_and_a_slow_reader_does_not(
        fault_proxy, obj):
    """Bytes that keep coming never trip the read timeout's silence: before, a read of a
    trickling body ran as long as S3 took (here 16 s for 256 KiB), whatever the deadline."""
    fault_proxy.script = ["trickle"]
    async with S3Origin.connect(fault_proxy.url, read_timeout=1.0, deadline=1.0, breaker_threshold=0) as origin:
        with pytest.raises(OriginTimeout, match=rf"origin timeout for s3://.*/o.bin: too slow, \d+ of {CHUNK} bytes"):
            await read(origin, obj, 0, CHUNK)
        assert fault_proxy.gets == 1  # not retried: its deadline is spent
        # The deadline counts S3's time, not the reader's: one that takes its pieces slowly
        # (a slow client of an uncached read) reads on past it.
        got = bytearray()
        async for piece in origin.read_range(*obj[:3], 0, 4 << 16, piece=lambda: 1 << 16):
            got += piece
            await asyncio.sleep(0.4)  # the reader's own pace: nothing to wait for
    assert bytes(got) == obj[3][:4 << 16] and fault_proxy.gets == 2


async def test_a_retry_cut_at_the_deadline_before_s3_answers_leaves_s3s_last_answer(fault_proxy, obj):
    """The deadline bounds a retry S3 never answers too (before: the read timeout's 30 s here,
    then "origin timeout"); cut with nothing said, it is no news: the 500 before it is the cause."""
    fault_proxy.script = ["error", "hang"]
    async with S3Origin.connect(fault_proxy.url, read_timeout=30.0, deadline=1.0, breaker_threshold=0) as origin:
        with pytest.raises(OriginError, match="500 InternalError"):
            await read(origin, obj, 0, 100)
    assert fault_proxy.gets == 2


async def test_the_breaker_turns_a_persistent_outage_into_prompt_errors(fault_proxy, obj):
    fault_proxy.mode = "slowdown"
    async with S3Origin.connect(fault_proxy.url, breaker_threshold=3) as origin:
        with pytest.raises(OriginThrottled):
            await read(origin, obj)
        assert fault_proxy.requests == 3
        began = time.monotonic()
        with pytest.raises(OriginThrottled) as refused:
            await origin.head(obj[0], obj[1])
        assert time.monotonic() - began < 0.5 and fault_proxy.requests == 3  # not sent at all
        assert refused.value.retry_after > 0 and "Retry-After" in refused.value.headers
        assert "SlowDown" in str(refused.value) and "circuit breaker" in str(refused.value)
        fault_proxy.mode = None  # S3 is back: the first request after the cooldown probes it

        async def recovered() -> bool:
            try:
                return (await origin.head(obj[0], obj[1])).etag == obj[2]
            except OriginUnavailable:
                return False
        await wait_for(recovered, timeout=5.0, what="the breaker to close")
        assert await read(origin, obj, 0, 10) == obj[3][:10]


async def test_a_429_is_throttling_retried_and_counted_by_the_breaker(fault_proxy, obj):
    fault_proxy.script = ["throttle"]
    async with S3Origin.connect(fault_proxy.url, breaker_threshold=3) as origin:
        assert await read(origin, obj, 0, 10) == obj[3][:10]
        assert fault_proxy.gets == 2  # retried as a 503 SlowDown is
        fault_proxy.mode = "throttle"
        with pytest.raises(OriginThrottled, match="429 TooManyRequests"):
            await read(origin, obj)
        sent = fault_proxy.requests
        assert sent == 2 + 3  # three 429s in a row open it
        with pytest.raises(OriginThrottled, match="circuit breaker"):
            await origin.head(obj[0], obj[1])
        assert fault_proxy.requests == sent  # the breaker opened on 429s: not sent


async def test_part_heads_are_retried_and_held_back_by_the_breaker(fault_proxy, obj):
    bucket, key, etag, _ = obj
    faults = ["slowdown", "error"]
    fault_proxy.by_request = lambda method, target: (
        faults.pop(0) if faults and method == "HEAD" and "partNumber=" in target else None)
    async with S3Origin.connect(fault_proxy.url, breaker_threshold=3) as origin:
        assert (await origin.head_part(bucket, key, 1, etag)).length == SIZE
        assert fault_proxy.injected == {"slowdown": 1, "error": 1}
        with pytest.raises(InvalidPartNumber):  # S3's 416: an answer, never retried
            await origin.head_part(bucket, key, 2, etag)
        assert fault_proxy.requests == 4
        fault_proxy.mode = "slowdown"
        with pytest.raises(OriginThrottled):
            await read(origin, obj)
        sent = fault_proxy.requests
        with pytest.raises(OriginThrottled, match="circuit breaker"):
            await origin.head_part(bucket, key, 1, etag)
        assert fault_proxy.requests == sent


async def test_bytes_past_an_answers_end_are_retried_and_named_in_one_short_line(fault_proxy, obj):
    """aiohttp reads bytes after an answer on a kept-alive connection as the next answer's
    status line; botocore quoted all of them (kilobytes of binary) in its error."""
    fault_proxy.script = ["junk"]
    async with S3Origin.connect(fault_proxy.url, deadline=0.3) as origin:
        assert await read(origin, obj, 0, 1000) == obj[3][:1000]
        assert fault_proxy.gets == 2
        fault_proxy.get_mode = "junk"
        with pytest.raises(OriginUnavailable) as failed:
            await read(origin, obj, 0, 1000)
    reason = str(failed.value)
    assert "Bad status line" in reason and len(reason) < 400 and reason.isprintable(), reason


def test_brief_makes_one_short_printable_line():
    assert brief("a\n  b\tc") == "a b c"
    assert brief("\x99\x00é") == "\\x99\\x00\\xe9"
    assert brief("x" * 1000, 20) == "x" * 17 + "..."
