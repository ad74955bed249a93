"""The egress token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from worker.limits import TokenBucket


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_out_at_once_then_senders_wait_off_their_debt():
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=500, clock=clock)
    assert bucket.delay(500) == 0
    assert bucket.delay(1000) == pytest.approx(1.0)  # 1000 bytes of debt at 1000 B/s
    assert bucket.delay(500) == pytest.approx(1.5)  # queued behind the first
    clock.now = 10.0  # long idle: refills to the burst, not beyond
    assert bucket.delay(500) == 0
    assert bucket.delay(1) > 0


def test_the_long_run_rate_is_the_configured_rate():
    clock = Clock()
    bucket = TokenBucket(rate=100e6, clock=clock)
    sent = 0
    for _ in range(1000):  # send 1 MiB pieces as fast as the bucket allows
        clock.now += bucket.delay(1 << 20)
        sent += 1 << 20
    assert sent / clock.now == pytest.approx(100e6, rel=0.01)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


def test_the_embedded_s3_throttle_paces_get_bytes():
    import time

    import boto3

    from p2pcache.s3local import EmbeddedS3

    with EmbeddedS3(throttle=4e6) as s3:  # 4 MB/s
        client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
        client.create_bucket(Bucket="throttled")
        client.put_object(Bucket="throttled", Key="k", Body=b"x" * (2 << 20))
        start = time.monotonic()
        assert len(client.get_object(Bucket="throttled", Key="k")["Body"].read()) == 2 << 20
        # A lower bound only: 2 MiB cannot leave a 4 MB/s link in under ~0.5 s.
        assert time.monotonic() - start >= 0.45
        assert s3.get_bytes == 2 << 20


def test_fast_ranges_answer_like_moto_without_copying_the_object():
    import boto3
    import pytest as _pytest
    from botocore.exceptions import ClientError

    from p2pcache.s3local import EmbeddedS3

    with EmbeddedS3() as plain, EmbeddedS3(fast_ranges=True) as fast:
        body = bytes(range(256)) * 4096  # 1 MiB
        clients = [boto3.client("s3", endpoint_url=s.url, region_name="us-east-1") for s in (plain, fast)]
        clients[0].create_bucket(Bucket="fast-ranges")  # moto's state is shared in-process
        clients[0].put_object(Bucket="fast-ranges", Key="k 1", Body=body, ContentType="application/x-t")
        etag = clients[0].head_object(Bucket="fast-ranges", Key="k 1")["ETag"]
        for rng in ("bytes=0-0", "bytes=1000-300000", "bytes=-77", "bytes=1048000-"):
            want, got = (c.get_object(Bucket="fast-ranges", Key="k 1", Range=rng, IfMatch=etag) for c in clients)
            assert got["Body"].read() == want["Body"].read()
            for field in ("ContentRange", "ContentLength", "ETag", "LastModified", "ContentType"):
                assert got[field] == want[field], field
        assert fast.get_bytes == 1 + 299001 + 77 + 576
        assert fast.counter.fast_gets == 4 and plain.counter.fast_gets == 0
        with _pytest.raises(ClientError) as info:  # left to moto: a stale If-Match, a bad range
            clients[1].get_object(Bucket="fast-ranges", Key="k 1", Range="bytes=0-9", IfMatch='"stale"')
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        with _pytest.raises(ClientError) as info:
            clients[1].get_object(Bucket="fast-ranges", Key="k 1", Range="bytes=2000000-")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
