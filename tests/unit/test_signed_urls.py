"""A file preheat of a presigned URL: the supernode gets the URL whole, and nothing else does. The
task item, the listing, the status answer (with detail), the completion event and every log record
show its signature and token parameters as REDACTED. Through moto's DynamoDB and EventBridge."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.aws import MotoServer, provision
from local.template import Template
from preheat import bootstrap
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.eventbridge import EventBridgePublisher
from preheat.adapters.storage_signatures import redact_url
from preheat.entrypoints import resolver
from preheat.models import Step, TaskStatus, WorkerMessage
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes

ROOT = Path(__file__).resolve().parents[2]
BUS = "signed-url-events"
SIGNATURE = "5ig0a9f8e7d6c5b4"
SESSION_TOKEN = "sesstok1a2b3c4d"
SIGNED = (
    "https://bucket.s3.eu-west-1.amazonaws.com/models/weights.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    f"&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token={SESSION_TOKEN}"
    f"&X-Amz-Signature={SIGNATURE}&versionId=3"
)
LEAKS = (SIGNATURE, SESSION_TOKEN, "AKIAEXAMPLE")

pytestmark = pytest.mark.xdist_group("moto")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.__dict__!r}")


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(), logging.getLogger("preheat")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.DEBUG)
    yield handler
    for each, level in zip(loggers, levels, strict=True):
        each.removeHandler(handler)
        each.setLevel(level)


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, str]]:
    with MotoServer() as server:
        resources = provision(
            Template.load(ROOT / "template.yaml"), server.url, {"Supernodes": "http://sn:8002"}
        )
        yield server.url, resources["TasksTable"].ref


def client(url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def assert_clean(where: str, text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"the URL's {leak!r} leaked into {where}"


def test_a_presigned_file_url_reaches_the_supernode_whole_and_is_stored_and_shown_redacted(
    moto: tuple[str, str], records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, table = moto
    dynamodb, events, sqs = client(url, "dynamodb"), client(url, "events"), client(url, "sqs")
    events.create_event_bus(Name=BUS)
    seen = sqs.create_queue(QueueName="signed-url-events-seen")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=seen, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName=BUS, EventPattern=json.dumps({"source": ["preheat"]}))
    events.put_targets(Rule="all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
    settings = Settings(table_name=table, check_window_seconds=0, event_bus=BUS)
    clock, queue, nodes = Clock(), FakeQueue(), FakeSupernodes()
    store = DynamoDBTaskStore(settings, client=dynamodb)
    publisher = EventBridgePublisher(settings, client=events)
    service = PreheatService(store, queue, settings, clock=clock, events=publisher)
    worker = Worker(store, queue, FakeRegistry(), nodes, settings, clock=clock, events=publisher)
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: service)

    # Given a file preheat of a presigned URL, submitted as the API submits it (and logs it)
    task_id = resolver.submit({"type": "file", "url": SIGNED}).task_id
    # When the worker starts it, and a check finds it warm
    [start] = queue.take()
    assert WorkerMessage.from_json(start.to_json()).url == SIGNED  # the one copy, in SQS like headers
    worker.handle(start)
    nodes.finish()
    for message in queue.take():
        assert message.step is Step.CHECK
        assert SIGNATURE not in message.to_json()
        worker.handle(message)

    # Then the supernode was handed the URL whole
    assert [blob.url for _, blob in nodes.creates] == [SIGNED]
    # ... and every other copy is redacted
    task = service.get(task_id)
    assert task.status is TaskStatus.SUCCESS
    assert task.url == redact_url(SIGNED)
    assert "X-Amz-Signature=REDACTED" in task.url
    assert "versionId=3" in task.url
    items = dynamodb.scan(TableName=table)["Items"]
    # Blob progress is stored as compressed JSON: read it as the store would.
    stored = [zlib.decompress(v["B"]).decode() for item in items for v in item.values() if "B" in v]
    assert any(redact_url(SIGNED) in text for text in stored)
    assert_clean("the DynamoDB items (task, listing index)", repr(items) + "".join(stored))
    answer = task.to_api(detail=True)
    assert answer["blobs"][0]["preheatedUrl"] == redact_url(SIGNED)
    assert_clean("the status answer", json.dumps(answer))
    listed, _ = service.list_tasks()
    assert_clean("the listing", json.dumps([each.to_api() for each in listed]))
    received = sqs.receive_message(QueueUrl=seen, MaxNumberOfMessages=10).get("Messages", [])
    assert [json.loads(m["Body"])["detail"]["url"] for m in received] == [redact_url(SIGNED)]
    assert_clean("the completion event", json.dumps(received))
    assert any("preheat task submitted" in line for line in records.lines)
    assert_clean("the logs", "\n".join(records.lines))


def test_a_file_task_from_before_the_start_message_carried_its_url_still_runs() -> None:
    """A start message queued by an older deployment has no 'url': the task's own is used."""
    from preheat.models import PreheatRequest
    from tests.support.fakes import FakeTaskStore

    settings = Settings(check_window_seconds=0)
    store, queue, nodes = FakeTaskStore(), FakeQueue(), FakeSupernodes()
    task = PreheatService(store, queue, settings, clock=Clock()).submit(
        PreheatRequest.parse({"type": "file", "url": "https://files.example.com/plain.bin"})
    )
    [start] = queue.take()
    assert start.url == ""  # nothing to redact: nothing extra in the message
    Worker(store, queue, FakeRegistry(), nodes, settings, clock=Clock()).handle(
        WorkerMessage(task.task_id, Step.START)
    )
    assert [blob.url for _, blob in nodes.creates] == ["https://files.example.com/plain.bin"]
