"""SQS entry points: the worker's steps and the dead-letter consumer, both with partial batch
failures so one bad message never makes its neighbours run again."""

from __future__ import annotations

import asyncio
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    BatchProcessor,
    EventType,
    async_process_partial_response,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat import bootstrap
from preheat.errors import DependencyFailure, TransientFailure
from preheat.models import WorkerMessage, utcnow
from preheat.observability import logger, metrics, tracer
from preheat.retry import step_retry_delay
from preheat.settings import get_settings
from preheat.worker import give_up

# The share of the invocation's remaining time kept back from a step's work (resolution, sends,
# watch): room for the last round of supernode calls to time out, then the writes and the message
# that hand the task over. A share, not a number of seconds, so that it holds on any clock.
_HANDOVER_MARGIN_SHARE = 0.2


def run_step(record: SQSRecord, time_budget_seconds: float | None = None) -> None:
    message = WorkerMessage.from_json(record.body)
    # Records of a batch run on threads side by side: their log keys must not mix.
    logger.thread_safe_append_keys(
        task_id=message.task_id, step=message.step.value, message_id=record.message_id
    )
    try:
        task = bootstrap.worker().handle(message, time_budget_seconds)
    except (TransientFailure, DependencyFailure) as exc:
        # Reported as a batch item failure, after making the message visible again after a backoff
        # of seconds: Lambda leaves a failed record's visibility as it is, and the queue's own
        # timeout is sized for the function's, minutes away. Past maxReceiveCount the dead-letter
        # queue takes over.
        attempt = int(record.attributes.approximate_receive_count or 1)
        delay = step_retry_delay(attempt, get_settings(), getattr(exc, "retry_after", None))
        deadline = getattr(exc, "deadline", None)
        if deadline is not None:
            # The retry that comes after the deadline ends the task: it need not wait any longer.
            delay = min(delay, max(0.0, (deadline - utcnow()).total_seconds()) + 1)
        try:
            bootstrap.task_queue().retry_later(record.receipt_handle, delay)
        except DependencyFailure as refused:
            # The queue's visibility timeout then brings it back instead: later, never lost.
            logger.warning("could not schedule the retry", extra={"reason": str(refused)})
        logger.warning(
            "step failed, will be retried",
            extra={"reason": str(exc), "attempt": attempt, "retry_in": round(delay, 3)},
        )
        metrics.add_metric(name="StepRetries", unit=MetricUnit.Count, value=1)
        raise
    if task is not None and task.status.terminal and task.finished_at is not None:
        metrics.add_metric(name=f"Tasks{task.status.value.title()}", unit=MetricUnit.Count, value=1)


def handle_steps(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Run the batch's steps concurrently: each may watch the supernodes for seconds, and one
    record's wait must not delay the others' completion."""
    budget = context.get_remaining_time_in_millis() / 1000 * (1 - _HANDOVER_MARGIN_SHARE)

    async def run_in_thread(record: SQSRecord) -> None:
        await asyncio.to_thread(run_step, record, budget)

    # A processor per batch: it holds the batch's state, and nothing may outlive one invocation.
    processor = AsyncBatchProcessor(event_type=EventType.SQS)
    return async_process_partial_response(
        event=event, record_handler=run_in_thread, processor=processor, context=context
    )


@tracer.capture_method(capture_response=False)
def fail_dead_letter(record: SQSRecord) -> None:
    # The count carries over from the worker's queue and includes this receive from the dead-letter
    # queue itself: the worker's attempts are one fewer.
    attempts = max(1, int(record.attributes.approximate_receive_count or 1) - 1)
    try:
        message = WorkerMessage.from_json(record.body)
    except ValueError:
        # Nothing to mark; the message id in the log is its trace (the body may hold credentials).
        logger.error("dead letter is not a worker message; dropped", extra={"message_id": record.message_id})
        metrics.add_metric(name="MalformedDeadLetters", unit=MetricUnit.Count, value=1)
        return
    task = give_up(bootstrap.task_store(), message, attempts, events=bootstrap.event_publisher())
    logger.error(
        "worker message exhausted its receives; its task is marked FAIL unless it moved on",
        extra={
            "task_id": message.task_id,
            "step": message.step.value,
            "message_id": record.message_id,
            "status": task.status.value if task else None,
        },
    )
    metrics.add_metric(name="DeadLetters", unit=MetricUnit.Count, value=1)


def handle_dead_letters(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=fail_dead_letter, processor=processor, context=context
    )
