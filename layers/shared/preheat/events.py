"""The completion event: what the service announces when a task ends (see README, "Completion events")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from preheat.models import Task

SOURCE = "preheat"
DETAIL_TYPE = "Preheat Task Finished"
REWARMED_DETAIL_TYPE = "Preheat Task Rewarmed"
EVICTED_DETAIL_TYPE = "Preheat Task Evicted"


def finished_detail(task: Task) -> dict[str, Any]:
    """The event's ``detail``: the status answer's fields, built from the task item, which never
    holds a header value (credentials travel only in the first SQS message)."""
    answer = task.to_api()
    detail: dict[str, Any] = {
        "taskId": answer["taskId"],
        "status": answer["status"],
        "type": answer["type"],
        "url": answer["url"],
        "platforms": answer.get("platforms") or answer.get("platform") or [],
        "layers": answer.get("layers") or {"total": 0, "succeeded": 0, "failed": 0, "pending": 0},
        "startTime": answer["startTime"],
        "finishTime": answer["finishTime"],
    }
    if task.status.value == "FAIL":
        detail["msg"] = answer.get("msg") or "failed"
    return detail


def rewarmed_detail(task: Task, missing: Sequence[str], failed: Sequence[str] = ()) -> dict[str, Any]:
    """A keep-warm check's event: what it found missing (``<blob>@<target>``) and re-created, and
    what it could not re-create. Built from the task item, like the completion event."""
    detail: dict[str, Any] = {
        "taskId": task.task_id,
        "type": task.type.value,
        "url": task.url,
        "missing": list(missing),
        "failed": list(failed),
    }
    if task.keep_warm is not None:
        detail["keepWarm"] = task.keep_warm.to_api()
    return detail


def evicted_detail(task: Task) -> dict[str, Any]:
    """The eviction event's ``detail``: the task, when it was evicted, and each blob's outcome per
    target (what a consumer needs to know whether the cluster still holds any of it)."""
    answer = task.to_api(detail=True)
    return {
        "taskId": task.task_id,
        "type": answer["type"],
        "url": answer["url"],
        "evictedAt": answer.get("evictedAt"),
        "blobs": answer.get("evictions", []),
        "evicted": sum(e.outcome == "evicted" for e in task.evictions),
        "notEvicted": sum(e.outcome != "evicted" for e in task.evictions),
    }
