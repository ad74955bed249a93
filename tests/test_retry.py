"""The retry policy: which S3 failures are retried, the backoff schedule, the deadline."""

from __future__ import annotations

import aiohttp
import botocore.exceptions
from hypothesis import given, strategies as st

from p2pcache.errors import (
    AccessDenied, NotFound, ObjectChanged, OriginDenied, OriginError, OriginThrottled, OriginTimeout,
    OriginUnavailable, PeerError,
)
from p2pcache.origin import convert_error
from p2pcache.retry import RetryPolicy, is_transient


def client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


def test_resets_timeouts_throttling_5xx_and_cut_bodies_are_retried():
    for exc in (OriginUnavailable("reset"), OriginTimeout("stall"), OriginThrottled("SlowDown"),
                OriginError("500", transient=True)):
        assert is_transient(exc), exc
    for status, code, kind in ((503, "SlowDown", OriginThrottled), (500, "InternalError", OriginError),
                               (503, "503", OriginThrottled)):
        error = convert_error(client_error(status, code), "b", "k")
        assert type(error) is kind and is_transient(error), (status, code)
    stalled = convert_error(botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), "b", "k", 5.0)
    assert isinstance(stalled, OriginTimeout) and "nothing for 5 s" in str(stalled)
    cut = convert_error(botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2), "b", "k")
    assert isinstance(cut, OriginUnavailable) and is_transient(cut)


def test_a_connection_reset_or_closed_by_s3_is_not_called_a_failure_to_connect():
    reset = botocore.exceptions.EndpointConnectionError(  # what aiobotocore raises for an RST
        endpoint_url="http://s3/b/k", error=aiohttp.ClientOSError(104, "Connection reset by peer"))
    closed = botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3/b/k",
                                                      error=aiohttp.ServerDisconnectedError())
    for exc, said in ((reset, "connection reset by the origin during a request for s3://b/k"),
                      (closed, "origin closed the connection without answering a request for s3://b/k")):
        error = convert_error(exc, "b", "k")
        assert type(error) is OriginUnavailable and is_transient(error)
        assert str(error) == said


def test_errors_of_a_head_which_has_no_body_say_the_status_once_and_name_throttling():
    def head_error(status: int, phrase: str) -> botocore.exceptions.ClientError:  # as botocore parses them
        return botocore.exceptions.ClientError(
            {"Error": {"Code": str(status), "Message": phrase}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "HeadObject")
    throttled = convert_error(head_error(503, "Service Unavailable"), "b", "k")
    assert type(throttled) is OriginThrottled
    assert str(throttled).startswith("origin throttling reads of s3://b/k: 503 SlowDown (")
    failed = convert_error(head_error(500, "Internal Server Error"), "b", "k")
    assert str(failed) == "origin failed for s3://b/k: 500 Internal Server Error" and is_transient(failed)
    named = convert_error(client_error(503, "SlowDown"), "b", "k")
    assert str(named) == "origin throttling reads of s3://b/k: 503 SlowDown"


def test_a_changed_object_a_404_or_a_403_is_never_retried():
    for status, code, kind in ((412, "PreconditionFailed", ObjectChanged), (404, "NoSuchKey", NotFound),
                               (403, "AccessDenied", OriginDenied)):
        error = convert_error(client_error(status, code), "b", "k")
        assert type(error) is kind and not is_transient(error), (status, code)
        assert RetryPolicy().next_delay(error, tries=1, failures=1, elapsed=0, rand=0.5) is None
    for exc in (OriginError("403"), AccessDenied(), PeerError("peer"), ValueError("bug")):
        assert not is_transient(exc)


def test_backoff_doubles_from_the_base_up_to_the_cap_with_equal_jitter():
    p = RetryPolicy(base=0.1, cap=1.0)
    assert [p.backoff(n, 0.0) for n in (1, 2, 3, 4, 5, 6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(p.backoff(n, 0.999999), 3) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


@given(st.integers(1, 200), st.floats(0, 1, exclude_max=True), st.floats(0, 100))
def test_every_delay_is_within_half_a_step_and_ends_before_the_deadline(failures, rand, elapsed):
    p = RetryPolicy(base=0.05, cap=1.0, deadline=30.0)
    step = min(1.0, 0.05 * 2 ** (failures - 1))
    delay = p.next_delay(OriginUnavailable(), tries=failures, failures=failures, elapsed=elapsed, rand=rand)
    if delay is None:
        assert elapsed + p.backoff(failures, rand) >= 30.0
    else:
        assert step / 2 <= delay <= step and elapsed + delay < 30.0


def test_tries_stop_at_the_attempt_limit_or_the_deadline():
    p = RetryPolicy(base=0.1, cap=1.0, deadline=10.0, attempts=3)
    assert p.next_delay(OriginUnavailable(), tries=2, failures=2, elapsed=0, rand=0) == 0.1
    assert p.next_delay(OriginUnavailable(), tries=3, failures=3, elapsed=0, rand=0) is None
    assert p.next_delay(OriginUnavailable(), tries=1, failures=1, elapsed=9.96, rand=0) is None


def test_a_try_that_made_progress_starts_the_backoff_over():
    p = RetryPolicy(base=0.1, cap=1.0)
    assert p.next_delay(OriginUnavailable(), tries=9, failures=0, elapsed=1, rand=0) == 0.05
