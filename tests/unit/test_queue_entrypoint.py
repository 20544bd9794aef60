"""The worker's SQS entry point: a step that fails for a reason worth retrying is made visible again
after a backoff of seconds, not after the queue's visibility timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from preheat import bootstrap
from preheat.entrypoints import queue as queue_entrypoint
from preheat.errors import DependencyFailure, TransientFailure
from preheat.models import Step, WorkerMessage, utcnow
from preheat.settings import get_settings
from tests.support.fakes import FakeQueue


def _record(receive_count: int) -> SQSRecord:
    return SQSRecord(
        {
            "messageId": "m-1",
            "receiptHandle": "receipt-1",
            "body": WorkerMessage("t-1", Step.START).to_json(),
            "attributes": {"ApproximateReceiveCount": str(receive_count)},
            "messageAttributes": {},
            "eventSource": "aws:sqs",
        }
    )


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def handle(self, message: WorkerMessage, time_budget_seconds: float | None = None) -> Any:
        raise self.error


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    monkeypatch.setenv("PREHEAT_RETRY_BASE_DELAY", "2")
    monkeypatch.setenv("PREHEAT_RETRY_MAX_DELAY", "60")
    get_settings.cache_clear()
    fake = FakeQueue()
    monkeypatch.setattr(bootstrap, "task_queue", lambda: fake)
    yield fake
    get_settings.cache_clear()


@pytest.mark.parametrize(("attempt", "lowest", "highest"), [(1, 1, 2), (3, 4, 8), (6, 30, 60), (40, 30, 60)])
def test_a_transient_failure_is_retried_after_an_exponential_backoff(
    queue: FakeQueue, monkeypatch: pytest.MonkeyPatch, attempt: int, lowest: float, highest: float
):
    monkeypatch.setattr(bootstrap, "worker", lambda: _Failing(TransientFailure("registry answered 503")))
    with pytest.raises(TransientFailure):
        queue_entrypoint.run_step(_record(attempt))
    [(receipt, delay)] = queue.retries
    assert receipt == "receipt-1"
    assert lowest <= delay <= highest


def test_retry_after_is_honoured_up_to_the_cap(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bootstrap, "worker", lambda: _Failing(TransientFailure("429", retry_after=45)))
    with pytest.raises(TransientFailure):
        queue_entrypoint.run_step(_record(1))
    monkeypatch.setattr(bootstrap, "worker", lambda: _Failing(TransientFailure("429", retry_after=900)))
    with pytest.raises(TransientFailure):
        queue_entrypoint.run_step(_record(1))
    assert [delay for _, delay in queue.retries] == [45, 60]


def test_a_dependency_failure_is_retried_too_and_a_refused_delay_still_fails_the_record(
    queue: FakeQueue, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(bootstrap, "worker", lambda: _Failing(DependencyFailure("DynamoDB throttled")))
    queue.fail_next = 1  # ChangeMessageVisibility refused: the queue's own timeout brings it back
    with pytest.raises(DependencyFailure):
        queue_entrypoint.run_step(_record(2))
    assert queue.retries == []


def test_a_retry_never_waits_far_past_the_task_deadline(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch):
    failure = TransientFailure("registry answered 503")
    failure.deadline = utcnow() + timedelta(seconds=3)
    monkeypatch.setattr(bootstrap, "worker", lambda: _Failing(failure))
    with pytest.raises(TransientFailure):
        queue_entrypoint.run_step(_record(10))  # its backoff alone would be 30 to 60 s
    [(_, delay)] = queue.retries
    assert delay <= 4
