"""The SQS event source mapping: polls a queue, invokes the function with Lambda's SQS event, deletes.

Like the managed mapping: a batch is at most ``BatchSize`` messages from one receive; with
``ReportBatchItemFailures`` only the records named in ``batchItemFailures`` stay on the queue; when the
function fails nothing is deleted, so the whole batch comes back after the visibility timeout, and the
queue's redrive policy (enforced by moto on receive) moves a message past ``maxReceiveCount`` to its
dead-letter queue.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from local.aws import LOCAL_REGION, client
from local.template import SqsEvent

log = logging.getLogger("local.poller")

Invoke = Callable[[str, Mapping[str, Any]], Any]

MAX_MESSAGES_PER_RECEIVE = 10  # SQS's limit; larger BatchSizes would need a batching window
# System attributes Lambda copies into each record (the FIFO and tracing ones only when present).
_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _record_message_attributes(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """SQS's ``MessageAttributes`` in the event's camelCase shape, binary values base64 encoded."""
    converted: dict[str, dict[str, Any]] = {}
    for name, attribute in raw.items():
        record: dict[str, Any] = {}
        if "StringValue" in attribute:
            record["stringValue"] = attribute["StringValue"]
        if "BinaryValue" in attribute:
            record["binaryValue"] = _b64(attribute["BinaryValue"])
        record["stringListValues"] = list(attribute.get("StringListValues") or [])
        record["binaryListValues"] = [_b64(v) for v in attribute.get("BinaryListValues") or []]
        record["dataType"] = attribute["DataType"]
        converted[name] = record
    return converted


def build_sqs_event(
    messages: Iterable[Mapping[str, Any]], queue_arn: str, region: str = LOCAL_REGION
) -> dict[str, Any]:
    """Lambda's SQS event for messages as ReceiveMessage returns them (with all attributes)."""
    records = []
    for message in messages:
        attributes = message.get("Attributes") or {}
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": {k: attributes[k] for k in _RECORD_ATTRIBUTES if k in attributes},
            "messageAttributes": _record_message_attributes(message.get("MessageAttributes") or {}),
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        records.append(record)
    return {"Records": records}


class InvalidBatchResponse(ValueError):
    """A partial batch response Lambda would treat as a failure of the whole batch."""


def failed_message_ids(response: Any, message_ids: Sequence[str]) -> set[str]:
    """The records to leave on the queue, by Lambda's partial batch response rules.

    Success: None, ``{}``, no or null or empty ``batchItemFailures``. Whole batch failed: anything
    else that is not a list of ``{"itemIdentifier": <a messageId of this batch>}``.
    """
    if response is None or response == {}:
        return set()
    if not isinstance(response, dict):
        raise InvalidBatchResponse(f"response is a {type(response).__name__}, not an object")
    failures = response.get("batchItemFailures")
    if not failures:
        return set()
    if not isinstance(failures, list):
        raise InvalidBatchResponse("batchItemFailures is not a list")
    failed: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in message_ids:
            raise InvalidBatchResponse(f"batchItemFailures names no message of the batch: {failure!r}")
        failed.add(identifier)
    return failed


class SqsPoller:
    """Polls one queue for one function on ``concurrency`` threads (each one batch at a time)."""

    def __init__(
        self,
        function: str,
        event: SqsEvent,
        *,
        queue_url: str,
        queue_arn: str,
        invoke: Invoke,
        endpoint_url: str,
        concurrency: int = 2,
        wait_seconds: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.function = function
        self.event = event
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self._invoke = invoke
        self._endpoint_url = endpoint_url
        self._concurrency = concurrency
        self._wait_seconds = wait_seconds
        self._batch_size = min(event.batch_size, MAX_MESSAGES_PER_RECEIVE)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Self:
        if self._threads or not self.event.enabled:
            return self
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._run, name=f"poller-{self.function}-{n}", daemon=True)
            for n in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "polling %s for %s (batch %d, %d threads)",
            self.queue_url,
            self.function,
            self._batch_size,
            self._concurrency,
        )
        return self

    def request_stop(self) -> None:
        """Stop receiving, without waiting (so many pollers wind down their long polls together)."""
        self._stopping.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving; batches already being handled finish first (up to ``timeout`` seconds)."""
        self.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s still busy after %.0fs; leaving it behind", thread.name, timeout)
        self._threads = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        sqs = client("sqs", self._endpoint_url)
        while not self._stopping.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self._batch_size,
                    WaitTimeSeconds=self._wait_seconds,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("receive from %s failed; retrying", self.queue_url)
                self._stopping.wait(1.0)
                continue
            if messages:
                self.handle_batch(sqs, messages)

    def handle_batch(self, sqs: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        started = time.monotonic()
        ids = [m["MessageId"] for m in messages]
        try:
            response = self._invoke(self.function, build_sqs_event(messages, self.queue_arn))
            failed = failed_message_ids(response, ids) if self.event.report_batch_item_failures else set()
        except Exception:
            # Record bodies are not logged: they may carry registry credentials.
            log.exception(
                "function=%s failed on a batch of %d; it returns after the visibility timeout",
                self.function,
                len(messages),
            )
            return
        done = [m for m in messages if m["MessageId"] not in failed]
        try:
            self._delete(sqs, done)
        except Exception:
            # SQS unreachable: the handled messages come back after the visibility timeout and are
            # handled again (every step is safe to run twice); the polling thread must live on.
            log.exception(
                "delete from %s failed; %d message(s) will be redelivered", self.queue_url, len(done)
            )
            return
        log.info(
            "batch function=%s size=%d deleted=%d failed=%d ms=%.1f",
            self.function,
            len(messages),
            len(done),
            len(failed),
            (time.monotonic() - started) * 1000,
        )

    def _delete(self, sqs: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(messages), MAX_MESSAGES_PER_RECEIVE):
            chunk = messages[start : start + MAX_MESSAGES_PER_RECEIVE]
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)]
            result = sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in result.get("Failed", []):
                log.warning("delete from %s failed: %s", self.queue_url, failure.get("Message"))
