"""The domain service every entry point calls: submit a preheat, read a task, probe the supernodes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from preheat.errors import ClaimHeld, DependencyFailure, InvalidRequest, TaskNotFound
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
from preheat.network import check_request
from preheat.ports import EventPublisher, SupernodeDriver, TaskQueue, TaskStore
from preheat.settings import Settings

logger = logging.getLogger(__name__)

MAX_CLAIM_ATTEMPTS = 3
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
        dedup_key: Callable[[], bytes] | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        self._events = events
        self._store = store
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self._new_id = id_factory
        self._dedup_key = dedup_key

    def submit(self, request: PreheatRequest) -> Task:
        """Record the task as RUNNING and queue its first step; or, when an identical request is
        still RUNNING, answer that task instead of starting another.

        Identical means the same type, normalised URL, platforms and credentials (compared by a
        keyed hash, never stored). The task and its claim on the request are written in one
        conditional transaction, so concurrent arrivals cannot both start a task; a claim whose
        task has finished (or died) is taken over, conditionally on its holder, so tags that move
        are preheated again.

        If the queue refuses the message the task is marked FAIL at once: a RUNNING task that no
        worker will ever pick up would otherwise sit there until its deadline.

        A URL the outbound policy refuses without DNS (scheme, a literal private address, a host
        off PREHEAT_ALLOWED_REGISTRIES) is an InvalidRequest; names are judged by the worker.
        """
        check_request(request, self._settings)
        now = self._clock()
        platforms = self._platforms_for(request)
        task = Task(
            task_id=self._new_id(),
            type=request.type,
            url=request.url,
            status=TaskStatus.RUNNING,
            created_at=now,
            deadline=now + timedelta(seconds=self._settings.task_timeout_seconds),
            platforms=platforms,
        )
        existing = self._create_unless_running(task, self._claim_for(request, platforms))
        if existing is not None:
            return existing
        try:
            self._queue.send(WorkerMessage(task.task_id, Step.START, headers=request.headers))
        except DependencyFailure as exc:
            failed = replace(
                task, status=TaskStatus.FAIL, finished_at=self._clock(), message=f"could not queue: {exc}"
            )
            # Should this write fail too, the deadline check in get() still ends the task as FAIL.
            with contextlib.suppress(DependencyFailure):
                if self._store.save(failed, expected_check_seq=task.check_seq):
                    self._announce(failed)
            raise
        return task

    def _create_unless_running(self, task: Task, claim: str | None) -> Task | None:
        """Create ``task``; or return the RUNNING task that holds ``claim``."""
        replaces: str | None = None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            try:
                self._store.create(task, claim=claim, replaces=replaces)
                return None
            except ClaimHeld as held:
                holder = self._store.get(held.task_id) if held.task_id else None
                if (
                    holder is not None
                    and holder.status is TaskStatus.RUNNING
                    and not holder.is_expired(self._clock())
                ):
                    return holder
                replaces = held.task_id  # finished, expired or vanished: take the claim over
        raise DependencyFailure("could not claim the request: it changed hands too often, try again")

    def _claim_for(self, request: PreheatRequest, platforms: tuple[str, ...]) -> str | None:
        if self._dedup_key is None:
            return None
        url = str(request.image) if request.image is not None else request.url
        # A keyed hash: equal credentials give equal claims, yet the table never holds anything a
        # reader could test guesses of the credentials against.
        credentials = hmac.new(
            self._dedup_key(),
            json.dumps(sorted((name.lower(), value) for name, value in request.headers.items())).encode(),
            hashlib.sha256,
        ).hexdigest()
        identity = json.dumps([request.type.value, url, sorted(platforms), credentials])
        return hashlib.sha256(identity.encode()).hexdigest()

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
            # The answer must not say RUNNING past the deadline even if no worker is left to notice;
            # the write is conditional, so a worker concluding at this moment keeps its verdict.
            expired = replace(
                task,
                status=TaskStatus.FAIL,
                finished_at=task.deadline,
                message=timed_out_message(task),
                check_seq=task.check_seq + 1,
            )
            if self._store.save(expired, expected_check_seq=task.check_seq):
                self._announce(expired)
                return expired
            return self._store.get(task_id) or expired
        return task

    def _announce(self, task: Task) -> None:
        """The completion event of a task this service ended. A reader must get its answer even
        when EventBridge fails: the failure is logged, and a check message still on its way for the
        task announces it again when it finds the task ended (see Worker.handle)."""
        if self._events is None:
            return
        try:
            self._events.task_finished(task)
        except DependencyFailure as exc:
            logger.error("task %s ended %s, but its event was not put: %s", task.task_id, task.status, exc)


def unreachable_supernodes(driver: SupernodeDriver) -> Mapping[str, str]:
    """Each supernode that did not answer its ping, with why; empty when all are fine."""
    if not driver.targets:
        return {"(none)": "no supernodes configured: set PREHEAT_SUPERNODES"}
    return {target: reason for target, reason in driver.ping().items() if reason is not None}
