"""The SQS event source mapping: the event it builds, what it deletes, what comes back, the DLQ."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from local.aws import client
from local.poller import InvalidBatchResponse, build_sqs_event, failed_message_ids
from local.stack import LocalStack
from tests.local.support import Sink, wait_for

pytestmark = pytest.mark.integration


def _send(stack: LocalStack, queue: str = "WorkQueue", delay: int = 0, **body: Any) -> str:
    record_id = uuid.uuid4().hex
    client("sqs", stack.moto_url).send_message(
        QueueUrl=stack.queue_url(queue),
        MessageBody=json.dumps({"id": record_id, **body}),
        DelaySeconds=delay,
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "test"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
        },
    )
    return record_id


def _settled(stack: LocalStack, sink: Sink, record_id: str, receives: int) -> list[dict[str, Any]]:
    """The record's entries once it was handled ``receives`` times and nothing of it is left in flight."""
    wait_for(lambda: len(sink.entries(record_id)) >= receives)
    sqs = client("sqs", stack.moto_url)

    def drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.queue_url("WorkQueue"),
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return len(attributes) == 3 and all(value == "0" for value in attributes.values())

    # A record that was not deleted stays in the queue (in flight until its visibility timeout, then
    # visible): a queue with nothing visible, in flight or delayed hands nothing out again, so no
    # wait for a timeout to pass is needed.
    wait_for(drained)
    return sink.entries(record_id)


def test_the_event_has_lambdas_sqs_shape(fixture_stack: LocalStack, sink: Sink) -> None:
    record_id = _send(fixture_stack)
    record = wait_for(lambda: sink.entries(record_id))[0]["record"]
    assert record["body"] == json.dumps({"id": record_id})
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == fixture_stack.resources["WorkQueue"].attributes["Arn"]
    assert record["awsRegion"] == "us-east-1"
    assert set(record["attributes"]) == {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"] == {
        "kind": {"stringValue": "test", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "blob": {"binaryValue": "AQI=", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"},
    }
    assert len(record["md5OfBody"]) == 32
    models = pytest.importorskip("aws_lambda_powertools.utilities.parser.models")
    models.SqsModel.model_validate({"Records": [record]})


def test_handled_records_are_deleted(fixture_stack: LocalStack, sink: Sink) -> None:
    record_id = _send(fixture_stack)
    assert [e["receives"] for e in _settled(fixture_stack, sink, record_id, 1)] == [1]


def test_reported_failures_come_back_and_the_rest_do_not(fixture_stack: LocalStack, sink: Sink) -> None:
    flaky = _send(fixture_stack, fail_times=1)
    steady = _send(fixture_stack)
    assert [e["receives"] for e in _settled(fixture_stack, sink, flaky, 2)] == [1, 2]
    assert [e["receives"] for e in sink.entries(steady)] == [1]


def test_a_failed_invocation_leaves_the_whole_batch(fixture_stack: LocalStack, sink: Sink) -> None:
    record_id = _send(fixture_stack, raise_times=1)
    assert [e["receives"] for e in _settled(fixture_stack, sink, record_id, 2)] == [1, 2]


def test_delay_seconds_is_honoured(fixture_stack: LocalStack, sink: Sink) -> None:
    sent = time.time()
    record_id = _send(fixture_stack, delay=2)
    entry = wait_for(lambda: sink.entries(record_id), timeout=10)[0]
    assert entry["at"] - sent >= 1.9


def test_a_failed_record_comes_back_when_its_changed_visibility_says(
    fixture_stack: LocalStack, sink: Sink
) -> None:
    """The worker delays a failed step's retry with ChangeMessageVisibility: the poller must leave a
    reported failure's visibility as the function set it (Lambda does), not reset it."""
    sooner = _send(fixture_stack, fail_times=1, retry_in=0)
    later = _send(fixture_stack, fail_times=1, retry_in=3)  # the queue's own timeout is 1 s
    first, second = _settled(fixture_stack, sink, later, 2)
    assert second["at"] - first["at"] >= 2.9
    assert [e["receives"] for e in _settled(fixture_stack, sink, sooner, 2)] == [1, 2]


def test_past_max_receive_count_a_message_moves_to_the_dead_letter_queue(
    fixture_stack: LocalStack, sink: Sink
) -> None:
    record_id = _send(fixture_stack, fail_times=99)
    dlq_arn = fixture_stack.resources["WorkDeadLetterQueue"].attributes["Arn"]

    def by_queue() -> list[tuple[bool, int]]:
        return [(e["record"]["eventSourceARN"] == dlq_arn, e["receives"]) for e in sink.entries(record_id)]

    wait_for(lambda: any(in_dlq for in_dlq, _ in by_queue()), timeout=15)
    seen = by_queue()
    # maxReceiveCount is 2 in the fixture template: two tries on the work queue, then the DLQ's function.
    assert seen[:2] == [(False, 1), (False, 2)]
    assert seen[2][0] is True
    assert len(seen) == 3


# --- without a server -------------------------------------------------------------------------------


def test_build_sqs_event_copies_md5_of_attributes_and_fifo_fields() -> None:
    message = {
        "MessageId": "m1",
        "ReceiptHandle": "r1",
        "Body": "b",
        "MD5OfBody": "0" * 32,
        "MD5OfMessageAttributes": "1" * 32,
        "Attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1",
            "SenderId": "s",
            "ApproximateFirstReceiveTimestamp": "2",
            "MessageGroupId": "g",
            "SomethingNew": "x",
        },
    }
    record = build_sqs_event([message], "arn:aws:sqs:us-east-1:1:q")["Records"][0]
    assert record["md5OfMessageAttributes"] == "1" * 32
    assert record["attributes"]["MessageGroupId"] == "g"
    assert "SomethingNew" not in record["attributes"]
    assert record["messageAttributes"] == {}


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
    ],
)
def test_partial_batch_responses(response: Any, failed: set[str]) -> None:
    assert failed_message_ids(response, ["a", "b"]) == failed


@pytest.mark.parametrize(
    "response",
    [
        [],
        "ok",
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"id": "a"}]},
        {"batchItemFailures": [{"itemIdentifier": "zzz"}]},
    ],
)
def test_invalid_partial_batch_responses_fail_the_whole_batch(response: Any) -> None:
    with pytest.raises(InvalidBatchResponse):
        failed_message_ids(response, ["a", "b"])
