"""Task queue on SQS: one message per step, delays for the checks that wait on supernodes."""

from __future__ import annotations

import functools
import math
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.models import WorkerMessage
from preheat.settings import Settings

# The longest visibility timeout SQS accepts (12 hours).
MAX_VISIBILITY_SECONDS = 43200


class SqsTaskQueue:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._queue_url = settings.queue_url
        self._injected_client = client

    @functools.cached_property
    def _client(self) -> Any:
        return self._injected_client or aws.client("sqs")

    def send(self, message: WorkerMessage, delay_seconds: int = 0) -> None:
        if not self._queue_url:
            raise DependencyFailure("no queue configured: set PREHEAT_QUEUE_URL")
        try:
            # The task id and step go in attributes so operators can see them without the body,
            # which may hold credentials and is never logged.
            self._client.send_message(
                QueueUrl=self._queue_url,
                MessageBody=message.to_json(),
                DelaySeconds=max(0, min(delay_seconds, 900)),
                MessageAttributes={
                    "taskId": {"DataType": "String", "StringValue": message.task_id},
                    "step": {"DataType": "String", "StringValue": message.step.value},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not queue the task: {aws.reason(exc)}") from None

    def retry_later(self, receipt_handle: str, delay_seconds: float) -> None:
        if not self._queue_url:
            raise DependencyFailure("no queue configured: set PREHEAT_QUEUE_URL")
        seconds = max(0, min(math.ceil(delay_seconds), MAX_VISIBILITY_SECONDS))
        try:
            # Lambda's event source leaves a failed record's visibility alone: the record comes back
            # after this, not after the queue's visibility timeout (sized for the function timeout).
            self._client.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not delay the retry: {aws.reason(exc)}") from None
