"""Domain errors. Entry points map them to answers in one place; nothing matches on message text."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preheat.models import BlobProgress


class PreheatError(Exception):
    """Base of every error this service raises on purpose."""


class InvalidRequest(PreheatError):
    """The caller sent something we cannot act on; the message says what and how to fix it."""


class TaskNotFound(PreheatError):
    """No task has the requested id (never existed, or expired)."""


class DependencyFailure(PreheatError):
    """A dependency (DynamoDB, SQS) failed while serving a request; answered as code 500."""


class PermanentFailure(PreheatError):
    """The task cannot succeed (image missing, credentials refused, supernode rejected the blob).

    The worker ends the task FAIL with this message; retrying would not help.
    """


class ProgressTooLarge(PermanentFailure):
    """The task's blob progress cannot be recorded in its store item, even cut to its least (a
    1000-layer image on many supernodes at once). A terminal task is recorded without the per-blob
    detail instead, so that the worker ends the task FAIL with this message and ``blobs`` (the
    progress that did not fit: its counts are kept)."""

    def __init__(self, message: str, blobs: tuple[BlobProgress, ...]) -> None:
        super().__init__(message)
        self.blobs = blobs


class TransientFailure(PreheatError):
    """Worth another try later (timeouts, 5xx, throttling): the worker makes its message visible
    again after a backoff, no sooner than ``retry_after`` seconds when the server asked for that."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # The deadline of the task that failed, when known: a retry later than it would only end
        # the task, so it comes no later than that.
        self.deadline: datetime | None = None


class ClaimHeld(PreheatError):
    """Another task holds the claim on an identical request (see PreheatService.submit)."""

    def __init__(self, task_id: str | None) -> None:
        super().__init__(f"an identical request is held by task {task_id}")
        self.task_id = task_id


class RateLimited(TransientFailure):
    """A target kept answering 429 (a Dragonfly 2 manager's job rate limit) past the driver's
    patience: the step is retried by redelivery, and no blob is counted as failed for it."""


class NotSupported(PreheatError):
    """The configured target offers no way to do what was asked (a Dragonfly 2 scheduler cannot
    delete peers' data): answered as code 501, the message naming what would."""
