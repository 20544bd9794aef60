"""The domain service every entry point calls: submit a preheat, read a task, probe the supernodes."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from preheat.errors import DependencyFailure, InvalidRequest, TaskNotFound
from preheat.models import (
    BlobState,
    PreheatRequest,
    PreheatType,
    Step,
    Task,
    TaskStatus,
    WorkerMessage,
    utcnow,
)
from preheat.ports import SupernodeDriver, TaskQueue, TaskStore
from preheat.settings import Settings

TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def new_task_id() -> str:
    return str(uuid.uuid4())


def timed_out_message(task: Task) -> str:
    pending = sorted({blob.label for blob in task.blobs if blob.state is BlobState.PENDING})
    message = f"timed out: still RUNNING at the deadline {task.deadline.isoformat()}"
    if pending:
        shown = ", ".join(pending[:10]) + (f" and {len(pending) - 10} more" if len(pending) > 10 else "")
        message += f"; still pending: {shown}"
    return message


class PreheatService:
    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        id_factory: Callable[[], str] = new_task_id,
    ) -> None:
        self._store = store
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self._new_id = id_factory

    def submit(self, request: PreheatRequest) -> Task:
        """Record the task as RUNNING and queue its first step.

        If the queue refuses the message the task is marked FAIL at once: a RUNNING task that no
        worker will ever pick up would otherwise sit there until its deadline.
        """
        now = self._clock()
        task = Task(
            task_id=self._new_id(),
            type=request.type,
            url=request.url,
            status=TaskStatus.RUNNING,
            created_at=now,
            deadline=now + timedelta(seconds=self._settings.task_timeout_seconds),
            platforms=self._platforms_for(request),
        )
        self._store.create(task)
        try:
            self._queue.send(WorkerMessage(task.task_id, Step.START, headers=request.headers))
        except DependencyFailure as exc:
            failed = replace(
                task, status=TaskStatus.FAIL, finished_at=self._clock(), message=f"could not queue: {exc}"
            )
            # Should this write fail too, the deadline check in get() still ends the task as FAIL.
            with contextlib.suppress(DependencyFailure):
                self._store.save(failed, expected_check_seq=task.check_seq)
            raise
        return task

    def _platforms_for(self, request: PreheatRequest) -> tuple[str, ...]:
        if request.type is not PreheatType.IMAGE:
            return ()
        if request.platforms:
            return tuple(str(platform) for platform in request.platforms)
        return self._settings.platforms

    def get(self, task_id: str) -> Task:
        if not TASK_ID_RE.match(task_id):
            raise InvalidRequest(
                f"taskId {task_id[:80]!r} is not a task id: use the 'taskId' that POST /api/preheat returned"
            )
        task = self._store.get(task_id)
        if task is None:
            raise TaskNotFound(f"no preheat task with id {task_id} (unknown, or expired after its retention)")
        if task.is_expired(self._clock()):
            # The answer must not say RUNNING past the deadline even if no worker is left to notice.
            return replace(
                task, status=TaskStatus.FAIL, finished_at=task.deadline, message=timed_out_message(task)
            )
        return task


def unreachable_supernodes(driver: SupernodeDriver) -> Mapping[str, str]:
    """Each supernode that did not answer its ping, with why; empty when all are fine."""
    if not driver.targets:
        return {"(none)": "no supernodes configured: set PREHEAT_SUPERNODES"}
    return {target: reason for target, reason in driver.ping().items() if reason is not None}
