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
