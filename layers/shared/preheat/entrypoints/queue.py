"""SQS entry points: the worker's steps and the dead-letter consumer, both with partial batch
failures so one bad message never makes its neighbours run again."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat import bootstrap
from preheat.entrypoints.observability import logger, metrics, tracer
from preheat.errors import DependencyFailure, TransientFailure
from preheat.models import WorkerMessage
from preheat.worker import give_up


@tracer.capture_method(capture_response=False)
def run_step(record: SQSRecord) -> None:
    message = WorkerMessage.from_json(record.body)
    logger.append_keys(task_id=message.task_id, step=message.step.value, message_id=record.message_id)
    try:
        task = bootstrap.worker().handle(message)
    except (TransientFailure, DependencyFailure) as exc:
        # Reported as a batch item failure: SQS redelivers it, then the dead-letter queue takes over.
        logger.warning("step failed, will be retried", extra={"reason": str(exc)})
        metrics.add_metric(name="StepRetries", unit=MetricUnit.Count, value=1)
        raise
    if task is not None and task.status.terminal and task.finished_at is not None:
        metrics.add_metric(name=f"Tasks{task.status.value.title()}", unit=MetricUnit.Count, value=1)


def handle_steps(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    # A processor per batch: it holds the batch's state, and nothing may outlive one invocation.
    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=run_step, processor=processor, context=context
    )


@tracer.capture_method(capture_response=False)
def fail_dead_letter(record: SQSRecord) -> None:
    receives = int(record.attributes.approximate_receive_count or 0)
    try:
        message = WorkerMessage.from_json(record.body)
    except ValueError:
        # Nothing to mark; the message id in the log is its trace (the body may hold credentials).
        logger.error("dead letter is not a worker message; dropped", extra={"message_id": record.message_id})
        metrics.add_metric(name="MalformedDeadLetters", unit=MetricUnit.Count, value=1)
        return
    task = give_up(bootstrap.task_store(), message, receives)
    logger.error(
        "worker message exhausted its receives; task marked FAIL",
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
