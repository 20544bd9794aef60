"""The one retry policy the HTTP adapters and the worker's step backoff follow."""

from __future__ import annotations

import pytest

from preheat.retry import Jitter, RetryPolicy


@pytest.mark.parametrize(
    ("jitter", "lowest", "highest"),
    [
        (Jitter.NONE, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0], [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]),
        (Jitter.FULL, [0.0] * 6, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]),
        (Jitter.EQUAL, [0.25, 0.5, 1.0, 2.0, 4.0, 4.0], [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]),
    ],
)
def test_the_delay_doubles_up_to_its_cap_within_its_jitter(jitter, lowest, highest):
    policy = RetryPolicy(attempts=3, backoff_seconds=0.5, jitter=jitter, max_delay_seconds=8.0)
    assert [policy.delay(failures, rand=lambda: 0.0) for failures in range(1, 7)] == lowest
    assert [policy.delay(failures, rand=lambda: 1.0) for failures in range(1, 7)] == highest


def test_retry_after_lengthens_the_delay_up_to_its_own_cap():
    policy = RetryPolicy(attempts=3, backoff_seconds=0.5, jitter=Jitter.NONE, retry_after_cap_seconds=10.0)
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=3600.0) == 10.0
    assert policy.delay(3, retry_after=0.1) == 2.0  # never sooner than the backoff
    assert policy.delay(1, retry_after=-5.0) == 0.5


def test_a_huge_failure_count_is_capped_not_an_overflow():
    policy = RetryPolicy(attempts=1, backoff_seconds=1.0, jitter=Jitter.NONE, max_delay_seconds=60.0)
    assert policy.delay(10_000) == 60.0
    assert policy.delay(0) == 1.0  # counted from the first failure
