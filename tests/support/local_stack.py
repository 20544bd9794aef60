"""What the tests through the local stack share: a preheat submitted and waited for through the
API, as a user would; the completion events its bus delivered; a stack driving the fake Dragonfly 2
manager of ``local/``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack

# -- a task through the API ------------------------------------------------------------------------


def api_answer(response: requests.Response) -> dict[str, Any]:
    """The body of an answer of the API, checked to be the spec's: HTTP 200, JSON, code 200."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    answer: dict[str, Any] = response.json()
    assert answer["code"] == 200, answer
    return answer


def submit(stack: LocalStack, body: Mapping[str, Any]) -> str:
    """POST ``body`` to /api/preheat; the new task's id."""
    response = requests.post(f"{stack.api_url}/api/preheat", json=dict(body), timeout=10)
    task_id: str = api_answer(response)["data"]["taskId"]
    return task_id


def status_answers(
    stack: LocalStack, task_id: str, *, timeout: float = 60, detail: bool = False, interval: float = 0.1
) -> Iterator[dict[str, Any]]:
    """The task's status answers, read every ``interval`` seconds, up to the first that is not
    RUNNING (the last one given); AssertionError if it is still RUNNING after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(
            f"{stack.api_url}/api/preheat/{task_id}",
            params={"detail": "true"} if detail else None,
            timeout=10,
        )
        answer = api_answer(response)
        yield answer
        if answer["data"]["status"] != "RUNNING":
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"task {task_id} still RUNNING after {timeout:g} s")
        time.sleep(interval)


def ended(stack: LocalStack, task_id: str, **options: Any) -> dict[str, Any]:
    """The task's status ``data`` once it is no longer RUNNING (``options`` as for status_answers)."""
    *_, last = status_answers(stack, task_id, **options)
    data: dict[str, Any] = last["data"]
    return data


def preheated(stack: LocalStack, body: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """Submit ``body``; the task's status ``data`` once it is no longer RUNNING."""
    return ended(stack, submit(stack, body), **options)


# -- completion events -----------------------------------------------------------------------------


def delivered_events(stack: LocalStack) -> list[dict[str, Any]]:
    """The completion events the stack's rule wrote to its ``events_file`` so far, one envelope a
    line (a line still being written is left for the next read)."""
    assert stack.events_file is not None, "the stack was started without an events_file"
    path: Path = stack.events_file
    if not path.exists():
        return []
    *complete, _partial = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in complete if line]


def wait_for_events(
    stack: LocalStack, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    """The delivered events once ``until`` holds of them: the rule delivers asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        events = delivered_events(stack)
        if until(events):
            return events
        if time.monotonic() >= deadline:
            raise AssertionError(f"the delivered completion events never were as expected: {events}")
        time.sleep(0.05)


def events_of(stack: LocalStack, task_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The completion events about ``task_id``, once there is one."""

    def about(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [event for event in events if event["detail"]["taskId"] == task_id]

    return about(wait_for_events(stack, lambda events: bool(about(events)), timeout))


# -- a stack driving a Dragonfly 2 manager ---------------------------------------------------------


def dragonfly2_stack(
    manager: FakeDragonfly2Manager,
    token: str,
    cache_dir: Path,
    parameters: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    events_file: Path | None = None,
) -> LocalStack:
    """The local stack with ``manager`` as its one supernode, spoken to through Dragonfly 2's open API
    with ``token``; ``parameters`` and ``extra_env`` add to that, ``events_file`` receives the
    completion events (start it with ``with``)."""
    return LocalStack(
        supernodes=[manager.url],
        parameters={"SupernodeApi": "dragonfly2", **(parameters or {})},
        extra_env={"PREHEAT_DRAGONFLY2_TOKEN": token, **(extra_env or {})},
        cache_dir=cache_dir,
        events_file=events_file,
    )
