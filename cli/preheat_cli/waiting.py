"""``--wait``: follow a task until it ends, the time runs out, or the API keeps failing.

A task's end is its status answer turning SUCCESS or FAIL: the service writes the verdict, then
puts the completion event, so the first terminal answer comes with the event, never before it. The
event itself reaches only the EventBridge bus, which an API client (holding an API key, not AWS
credentials) cannot read; so the wait polls the status route every ``--interval``. Against the
local stack, which appends every event to its ``events.jsonl``, the wait also follows that file
between polls, and polls at once when the task's event arrives: it ends on the event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from preheat_cli.client import ClientError, Envelope
from preheat_cli.progress import FAIL, SUCCESS, ProgressView

TERMINAL = frozenset({SUCCESS, FAIL})
# A long wait outlives blips (a cold start timing out, a dropped connection, a 500 "try again");
# this many failed polls in a row means the API is really gone.
MAX_CONSECUTIVE_FAILURES = 5
# How often, between polls, the events file is read for the task's completion event.
EVENT_LOOK_SECONDS = 0.1


class StatusSource(Protocol):
    def status(self, task_id: str, detail: bool = False) -> Envelope: ...


class EventSource(Protocol):
    def announced(self, task_id: str) -> bool:
        """Whether ``task_id``'s completion event has arrived."""


class EventsFile:
    """Completion events appended to a file, one EventBridge envelope a line (the local stack's
    ``events.jsonl``), read on from where the last look stopped; a line still being written waits
    for its end."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._announced: set[str] = set()

    def announced(self, task_id: str) -> bool:
        try:
            with self._path.open("rb") as events:
                events.seek(self._offset)
                data = events.read()
        except OSError:
            return task_id in self._announced  # not written yet, or rotated: the polls go on
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                detail = json.loads(line).get("detail")
            except (ValueError, AttributeError):
                continue  # not an event of ours: the file is for people to tail too
            if isinstance(detail, dict) and isinstance(detail.get("taskId"), str):
                self._announced.add(detail["taskId"])
        return task_id in self._announced


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
    events: EventSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Envelope:
    """The task's final status answer (SUCCESS or FAIL), or an error answer the API insists on
    (code 4xx at once, 5xx after :data:`MAX_CONSECUTIVE_FAILURES` polls); raises :class:`WaitTimeout`,
    or :class:`ClientError` when the API cannot be reached that many times in a row. With
    ``events``, a poll comes as soon as the task's completion event arrives (see the module notes)."""
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
        pause = min(interval, remaining)
        if events is None or events.announced(task_id):
            # (An event already seen whose task still read RUNNING, e.g. a 5xx poll: plain polls.)
            sleep(pause)
        else:
            _until_announced(events, task_id, pause, clock, sleep)


def _until_announced(
    events: EventSource,
    task_id: str,
    seconds: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Wait ``seconds``, or only until the task's completion event arrives."""
    end = clock() + seconds
    while (left := end - clock()) > 0:
        sleep(min(EVENT_LOOK_SECONDS, left))
        if events.announced(task_id):
            return
