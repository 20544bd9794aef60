"""Answering a Step Functions ``.waitForTaskToken`` state when its preheat task ends.

Every end of a task, whatever path ended it (the worker's verdict, a deadline seen by a status read
or by the sweeper, the dead-letter consumer, a start that could not be queued), announces it
through the :class:`~preheat.ports.EventPublisher`. So the callback rides on that one call: this
publisher puts the completion event, then answers the task token (SendTaskSuccess with the task's
final status answer, SendTaskFailure with its message), then removes the token from the item.

At least once, like the event: should the answer fail, the publisher raises as a refused event
does, and the path that ended the task announces it again (its event too, which consumers
dedupe). Once answered, or refused for good (the execution no longer waits), the token is gone
from the item, so a later announcement of the same task has nothing to answer.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from preheat.models import Task, TaskStatus
from preheat.models.keepwarm import TaskToken
from preheat.ports import EventPublisher

logger = logging.getLogger(__name__)

FAILURE_ERROR = "PreheatFailed"


class TaskCallbacks(Protocol):
    def succeed(self, token: TaskToken, output: dict[str, Any]) -> bool:
        """Answer ``token`` with success; False when nobody waits for it any more."""

    def fail(self, token: TaskToken, error: str, cause: str) -> bool:
        """Answer ``token`` with a failure; False when nobody waits for it any more."""


class TokenStore(Protocol):
    def forget_token(self, task_id: str) -> None:
        """Remove the task's stored token."""


class CallbackPublisher:
    """An :class:`EventPublisher` that also answers the ended task's Step Functions token."""

    def __init__(self, events: EventPublisher, callbacks: TaskCallbacks, tokens: TokenStore) -> None:
        self._events = events
        self._callbacks = callbacks
        self._tokens = tokens

    def task_finished(self, task: Task) -> None:
        self._events.task_finished(task)
        token = task.callback_token
        if token is None:
            return
        if task.status is TaskStatus.SUCCESS:
            answered = self._callbacks.succeed(token, task.to_api())
        else:
            answered = self._callbacks.fail(token, FAILURE_ERROR, task.message or "the preheat task failed")
        if not answered:
            logger.warning(
                "task %s: its Step Functions execution no longer waits; token dropped", task.task_id
            )
        self._tokens.forget_token(task.task_id)

    def task_evicted(self, task: Task) -> None:
        self._events.task_evicted(task)
