"""Completion events through moto's EventBridge: the adapter puts them on a bus of their own, a rule
sends them to an SQS queue the test reads. Every way a task ends gives its event (at least once),
with the documented fields and never a credential."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.aws import MotoServer, provision
from local.template import Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.eventbridge import EventBridgePublisher
from preheat.errors import DependencyFailure
from preheat.models import BlobState, PreheatRequest, TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker, give_up
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes

ROOT = Path(__file__).resolve().parents[2]
# moto's state is one per process, shared with every other module: names of this module's own.
BUS = f"preheat-events-{secrets.token_hex(4)}"
SEEN_QUEUE = f"events-seen-{secrets.token_hex(4)}"
CANARY = "Basic Y2FuYXJ5LWV2ZW50YnJpZGdlLTk5OQ=="
FIELDS = {"taskId", "status", "type", "url", "platforms", "layers", "startTime", "finishTime"}

pytestmark = pytest.mark.xdist_group("moto")


class Bus:
    """moto's EventBridge with a rule sending the service's events on ``BUS`` to a queue."""

    def __init__(self, url: str) -> None:
        def client(service: str) -> Any:
            return boto3.client(
                service,
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )

        self.events, self.sqs, self.dynamodb = client("events"), client("sqs"), client("dynamodb")
        self.events.create_event_bus(Name=BUS)
        self.queue = self.sqs.create_queue(QueueName=SEEN_QUEUE)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        pattern = {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}
        self.events.put_rule(Name="finished", EventBusName=BUS, EventPattern=json.dumps(pattern))
        self.events.put_targets(Rule="finished", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])

    def received(self) -> list[dict[str, Any]]:
        bodies = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return bodies
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, dict[str, Any]]]:
    with MotoServer() as server:
        template = Template.load(ROOT / "template.yaml")
        resources = provision(template, server.url, {"Supernodes": "http://127.0.0.1:8002"})
        yield server.url, resources


class World:
    def __init__(self, bus: Bus, table: str) -> None:
        self.bus = bus
        bus.received()  # what earlier tests left
        self.clock = Clock()
        settings = Settings(table_name=table, task_timeout_seconds=600, check_window_seconds=0, event_bus=BUS)
        self.store = DynamoDBTaskStore(settings, client=self.bus.dynamodb)
        self.publisher = EventBridgePublisher(settings, client=self.bus.events)
        self.queue, self.nodes = FakeQueue(), FakeSupernodes()
        self.service = PreheatService(
            self.store, self.queue, settings, clock=self.clock, events=self.publisher
        )
        self.worker = Worker(
            self.store,
            self.queue,
            FakeRegistry(),
            self.nodes,
            settings,
            clock=self.clock,
            events=self.publisher,
        )

    def submit(self, url: str) -> str:
        body = {"type": "file", "url": url, "header": {"Authorization": CANARY}}
        return self.service.submit(PreheatRequest.parse(body)).task_id

    def deliver(self) -> None:
        for message in self.queue.take():
            self.worker.handle(message)


@pytest.fixture(scope="module")
def bus(moto) -> Bus:
    return Bus(moto[0])


@pytest.fixture
def world(moto, bus) -> World:
    return World(bus, moto[1]["TasksTable"].ref)


def test_every_terminal_task_gives_one_event_with_its_fields_and_no_credential(world):
    succeeded = world.submit("https://files.example.com/ok.bin")
    failed = world.submit("https://files.example.com/broken.bin")
    by_worker_deadline = world.submit("https://files.example.com/slow.bin")
    read_past_deadline = world.submit("https://files.example.com/stuck.bin")
    dead_letter = world.submit("https://files.example.com/poison.bin")
    starts = {m.task_id: m for m in world.queue.take()}
    for task_id in (succeeded, failed, by_worker_deadline, read_past_deadline):
        world.worker.handle(starts[task_id])  # dispatched: checks queued
    checks = {m.task_id: m for m in world.queue.take()}
    world.nodes.finish("https://files.example.com/ok.bin")
    world.nodes.finish("https://files.example.com/broken.bin", BlobState.FAILED, "disk full")
    for task_id in (succeeded, failed):
        world.worker.handle(checks[task_id])
    # The dead-letter consumer ends a task whose message exhausted its receives.
    give_up(world.store, starts[dead_letter], 5, clock=world.clock, events=world.publisher)
    world.clock.advance(601)
    world.worker.handle(checks[by_worker_deadline])
    assert world.service.get(read_past_deadline).status is TaskStatus.FAIL

    events = world.bus.received()
    by_task = {event["detail"]["taskId"]: event for event in events}
    assert len(events) == len(by_task) == 5
    expected = {
        succeeded: "SUCCESS",
        failed: "FAIL",
        by_worker_deadline: "FAIL",
        read_past_deadline: "FAIL",
        dead_letter: "FAIL",
    }
    assert {task_id: event["detail"]["status"] for task_id, event in by_task.items()} == expected
    for task_id, event in by_task.items():
        assert (event["source"], event["detail-type"]) == ("preheat", "Preheat Task Finished")
        detail = event["detail"]
        task = world.store.get(task_id)
        assert task is not None
        assert detail == {**{k: v for k, v in task.to_api().items() if k in FIELDS}, **detail}
        assert set(detail) == FIELDS | ({"msg"} if expected[task_id] == "FAIL" else set())
    assert "disk full" in by_task[failed]["detail"]["msg"]
    assert by_task[by_worker_deadline]["detail"]["msg"].startswith("timed out")
    assert by_task[read_past_deadline]["detail"]["msg"].startswith("timed out")
    assert "gave up" in by_task[dead_letter]["detail"]["msg"]
    text = json.dumps(events)
    assert CANARY not in text
    assert CANARY.split()[1] not in text


def test_a_redelivered_end_is_announced_again_for_consumers_to_dedupe(world):
    task_id = world.submit("https://files.example.com/twice.bin")
    world.nodes.warm.add("https://files.example.com/twice.bin")
    [start] = world.queue.take()
    world.worker.handle(start)
    world.worker.handle(start)  # SQS delivered it twice
    events = world.bus.received()
    assert [event["detail"]["taskId"] for event in events] == [task_id, task_id]
    assert events[0]["id"] != events[1]["id"]  # distinct events: the task id is the key to dedupe on


def test_an_event_the_bus_refuses_is_an_error_not_a_silent_loss(world):
    missing = EventBridgePublisher(Settings(event_bus="no-such-bus"), client=world.bus.events)
    task_id = world.submit("https://files.example.com/refused.bin")
    world.clock.advance(timedelta(minutes=11).total_seconds())
    task = world.service.get(task_id)
    with pytest.raises(DependencyFailure, match="completion event"):
        missing.task_finished(task)
