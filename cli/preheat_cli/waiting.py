"""``--wait``: poll a task's status until it ends, the time runs out, or the API keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from preheat_cli.client import ClientError, Envelope
from preheat_cli.progress import FAIL, SUCCESS, ProgressView

TERMINAL = frozenset({SUCCESS, FAIL})
# A long wait outlives blips (a cold start timing out, a dropped connection, a 500 "try again");
# this many failed polls in a row means the API is really gone.
MAX_CONSECUTIVE_FAILURES = 5


class StatusSource(Protocol):
    def status(self, task_id: str, detail: bool = False) -> Envelope: ...


class WaitTimeout(Exception):
    """The task was still running at the deadline; ``last`` is its latest status answer, if any."""

    def __init__(self, task_id: str, timeout: float, last: Envelope | None) -> None:
        super().__init__(
            f"task {task_id} is still RUNNING after {timeout:g} s; it goes on without us "
            f"(`preheat status {task_id} --wait` to keep following it)"
        )
        self.last = last


def wait_for_task(
    client: StatusSource,
    task_id: str,
    view: ProgressView,
    *,
    timeout: float,
    interval: float,
    detail: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Envelope:
    """The task's final status answer (SUCCESS or FAIL), or an error answer the API insists on
    (code 4xx at once, 5xx after :data:`MAX_CONSECUTIVE_FAILURES` polls); raises :class:`WaitTimeout`,
    or :class:`ClientError` when the API cannot be reached that many times in a row."""
    deadline = clock() + timeout
    last: Envelope | None = None
    failures = 0
    while True:
        try:
            answer = client.status(task_id, detail)
        except ClientError:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise
        else:
            if answer.ok:
                failures = 0
                last = answer
                view.update(answer.data)
                if answer.data.get("status") in TERMINAL:
                    return answer
            elif answer.code < 500:
                return answer  # 400 or 404: asking again will not change the answer
            else:
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    return answer
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(task_id, timeout, last)
        sleep(min(interval, remaining))
