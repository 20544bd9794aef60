"""The one retry policy: how many attempts, how long between them. The HTTP adapters follow it
between their requests, and the worker between a failed step and its redelivery.

The delay doubles from ``backoff_seconds`` (up to ``max_delay_seconds``), with ``jitter``: ``FULL``
draws it from zero to that ceiling (callers that failed together do not come back together),
``EQUAL`` keeps half the ceiling and draws the other half (still backing off, yet spread), ``NONE``
is the ceiling itself. A server's ``Retry-After`` lengthens it, up to ``retry_after_cap_seconds``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preheat.settings import Settings

# Doublings beyond this change nothing a cap would not (2**30 base delays are decades), and keep a
# huge failure count from overflowing a float.
MAX_DOUBLINGS = 30


class Jitter(Enum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    backoff_seconds: float
    jitter: Jitter = Jitter.FULL
    max_delay_seconds: float = math.inf
    retry_after_cap_seconds: float = math.inf

    def delay(
        self, failures: int, retry_after: float | None = None, rand: Callable[[], float] = random.random
    ) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first); ``rand`` draws the
        jitter, from 0 to 1."""
        doublings = min(max(failures, 1) - 1, MAX_DOUBLINGS)
        ceiling = min(self.max_delay_seconds, self.backoff_seconds * float(1 << doublings))
        if self.jitter is Jitter.FULL:
            delay = rand() * ceiling
        elif self.jitter is Jitter.EQUAL:
            delay = ceiling / 2 + rand() * ceiling / 2
        else:
            delay = ceiling
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.retry_after_cap_seconds))
        return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def step_retry_delay(
    attempt: int,
    settings: Settings,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds until a step that failed on its ``attempt``-th try is tried again: doubling from
    ``retry_base_delay_seconds`` up to ``retry_max_delay_seconds``, with equal jitter (half fixed, so
    it still backs off; half random, so tasks that failed together do not come back together), and
    no sooner than a server's ``Retry-After`` (itself capped)."""
    cap = settings.retry_max_delay_seconds
    policy = RetryPolicy(
        attempts=1,  # SQS counts a step's attempts (the queue's maxReceiveCount), not this policy
        backoff_seconds=settings.retry_base_delay_seconds,
        jitter=Jitter.EQUAL,
        max_delay_seconds=cap,
        retry_after_cap_seconds=cap,
    )
    return policy.delay(attempt, retry_after, rand)
