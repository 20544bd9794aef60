"""The retry policy every HTTP adapter follows: how many attempts, how long between them.

The delay doubles from ``backoff_seconds`` (up to ``max_delay_seconds``); with ``jitter`` it is drawn
from zero to that ceiling (full jitter: callers that failed together do not come back together);
a server's ``Retry-After`` lengthens it, up to ``retry_after_cap_seconds``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    backoff_seconds: float
    jitter: bool = True
    max_delay_seconds: float = math.inf
    retry_after_cap_seconds: float = math.inf

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        ceiling = min(self.max_delay_seconds, self.backoff_seconds * 2 ** (failures - 1))
        delay = random.uniform(0, ceiling) if self.jitter else ceiling  # noqa: S311 - not crypto
        if retry_after is not None:
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
