"""A preheat request's Step Functions task token is answered when its task ends, then forgotten.

Against moto in-process: a real state machine waiting with ``.waitForTaskToken`` (moto's executor;
the token reaches the test through an SQS queue, as a caller's state machine would hand it over),
the template's table, and the service's own end paths (the worker's verdict, the sweeper's deadline).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local.aws import provision
from local.template import Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.dynamodb_keepwarm import DynamoDBKeepWarmStore
from preheat.adapters.eventbridge import EventBridgePublisher
from preheat.adapters.stepfunctions import StepFunctionsCallbacks
from preheat.callbacks import FAILURE_ERROR, CallbackPublisher
from preheat.models import PreheatRequest, Task, TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.sweeper import Sweeper
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
TASK_TIMEOUT = int(TEMPLATE.raw["Parameters"]["TaskTimeoutSeconds"]["Default"])
REGION = "us-east-1"
# moto's executor runs the state machine on a thread of its own: how many short looks a test gives it.
LOOKS = 200


def aws(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


@dataclass
class Waiting:
    """A Step Functions execution waiting at a ``.waitForTaskToken`` state for ``token``."""

    execution: str
    token: str

    def outcome(self) -> dict[str, Any]:
        """The execution once it has left RUNNING (moto's executor thread gets a few looks)."""
        sfn = aws("stepfunctions")
        for _ in range(LOOKS):
            described: dict[str, Any] = sfn.describe_execution(executionArn=self.execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.01)
        raise AssertionError(f"the execution still waits after {LOOKS} looks")


class World:
    def __init__(self) -> None:
        resources = provision(TEMPLATE, None, {"Supernodes": "http://127.0.0.1:8002"})  # type: ignore[arg-type]
        aws("events").create_event_bus(Name="callbacks")
        self.clock = Clock(datetime(2026, 3, 1, tzinfo=UTC))
        self.settings = Settings(
            table_name=resources["TasksTable"].ref,
            task_timeout_seconds=TASK_TIMEOUT,
            check_window_seconds=0,
            event_bus="callbacks",
        )
        self.dynamodb = aws("dynamodb")
        self.store = DynamoDBTaskStore(self.settings, client=self.dynamodb)
        # What bootstrap.event_publisher() builds: the event, then the callback.
        self.publisher = CallbackPublisher(
            EventBridgePublisher(self.settings, client=aws("events")),
            StepFunctionsCallbacks(client=self._recorded_stepfunctions()),
            DynamoDBKeepWarmStore(self.settings, client=self.dynamodb),
        )
        self.queue, self.nodes = FakeQueue(), FakeSupernodes()
        self.service = PreheatService(
            self.store, self.queue, self.settings, clock=self.clock, events=self.publisher
        )
        self.worker = Worker(
            self.store,
            self.queue,
            FakeRegistry(),
            self.nodes,
            self.settings,
            clock=self.clock,
            events=self.publisher,
        )
        self.sweeper = Sweeper(self.store, self.queue, self.publisher, self.settings, clock=self.clock)
        self._tokens = aws("sqs").create_queue(QueueName="tokens")["QueueUrl"]
        definition = {
            "StartAt": "Preheat",
            "States": {
                "Preheat": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                    "Parameters": {"QueueUrl": self._tokens, "MessageBody": {"token.$": "$$.Task.Token"}},
                    "End": True,
                }
            },
        }
        self._machine = aws("stepfunctions").create_state_machine(
            name="rollout", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]

    def _recorded_stepfunctions(self) -> Any:
        """A Step Functions client that also records each SendTask* call (moto's executor keeps a
        failure's error but drops its cause)."""
        self.sent: list[tuple[str, dict[str, Any]]] = []
        sfn = aws("stepfunctions")

        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            self.sent.append((model.name, dict(params)))

        sfn.meta.events.register("provide-client-params.stepfunctions.*", record)
        return sfn

    def waiting_execution(self) -> Waiting:
        execution = aws("stepfunctions").start_execution(stateMachineArn=self._machine, input="{}")[
            "executionArn"
        ]
        sqs = aws("sqs")
        for _ in range(LOOKS):
            messages = sqs.receive_message(QueueUrl=self._tokens).get("Messages")
            if messages:
                sqs.delete_message(QueueUrl=self._tokens, ReceiptHandle=messages[0]["ReceiptHandle"])
                return Waiting(execution, json.loads(messages[0]["Body"])["token"])
            time.sleep(0.01)
        raise AssertionError("the state machine never handed its token over")

    def submit(self, url: str, token: str) -> str:
        request = PreheatRequest.parse({"type": "file", "url": url, "taskToken": token})
        return self.service.submit(request).task_id

    def item(self, task_id: str) -> dict[str, Any]:
        item: dict[str, Any] = self.dynamodb.get_item(
            TableName=self.settings.table_name, Key={"pk": {"S": task_id}}
        )["Item"]
        return item

    def shown(self, task_id: str) -> str:
        """Everything a caller can see of the task: its status answer, its listing entry, its repr."""
        task = self.service.get(task_id)
        listed, _ = self.service.list_tasks(limit="100")
        return json.dumps(task.to_api(detail=True)) + json.dumps([t.to_api() for t in listed]) + repr(task)


@pytest.fixture
def world() -> Iterator[World]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield World()


def test_a_task_that_succeeds_answers_its_token_with_its_final_status_and_forgets_it(world):
    waiting = world.waiting_execution()
    url = "https://files.example.com/model.bin"
    task_id = world.submit(url, waiting.token)
    # Held while the task runs, and shown nowhere.
    assert world.item(task_id)["callbackToken"] == {"S": waiting.token}
    assert waiting.token not in world.shown(task_id)

    world.nodes.warm.add(url)
    [start] = world.queue.take()
    world.worker.handle(start)

    ended = waiting.outcome()
    assert ended["status"] == "SUCCEEDED"
    output = json.loads(ended["output"])
    assert output == world.service.get(task_id).to_api()
    assert (output["taskId"], output["status"]) == (task_id, "SUCCESS")
    # Used, then gone from the item; still shown nowhere.
    assert "callbackToken" not in world.item(task_id)
    assert waiting.token not in world.shown(task_id)
    assert waiting.token not in json.dumps(output)
    assert [operation for operation, _ in world.sent] == ["SendTaskSuccess"]  # once


def test_a_task_ended_at_its_deadline_by_the_sweeper_answers_its_token_with_a_failure(world):
    waiting = world.waiting_execution()
    task_id = world.submit("https://files.example.com/never.bin", waiting.token)
    [start] = world.queue.take()
    world.worker.handle(start)
    world.queue.take()  # its check chain dies: only the sweeper will end it

    world.clock.advance(TASK_TIMEOUT + 60)
    assert world.sweeper.sweep().ended == (task_id,)

    ended = waiting.outcome()
    task: Task = world.service.get(task_id)
    assert task.status is TaskStatus.FAIL
    assert ended["status"] == "FAILED"
    assert ended["error"] == FAILURE_ERROR
    [(operation, params)] = world.sent
    assert operation == "SendTaskFailure"
    assert (params["taskToken"], params["error"], params["cause"]) == (
        waiting.token,
        FAILURE_ERROR,
        task.message,
    )
    assert "callbackToken" not in world.item(task_id)
    assert waiting.token not in world.shown(task_id)


def test_a_token_nobody_waits_for_any_more_is_dropped_and_the_task_still_ends(world):
    waiting = world.waiting_execution()
    aws("stepfunctions").stop_execution(executionArn=waiting.execution)
    url = "https://files.example.com/late.bin"
    task_id = world.submit(url, waiting.token)
    world.nodes.warm.add(url)
    [start] = world.queue.take()

    world.worker.handle(start)

    assert world.service.get(task_id).status is TaskStatus.SUCCESS
    assert "callbackToken" not in world.item(task_id)


def test_a_request_with_a_token_starts_a_task_of_its_own_and_a_bad_token_is_refused_unechoed(world):
    url = "https://files.example.com/shared.bin"
    # An identical running request would be answered with the first task: its token would then never
    # be answered. So each request with a token gets its own task.
    assert world.submit(url, "token-of-execution-1") != world.submit(url, "token-of-execution-2")

    from preheat.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        PreheatRequest.parse({"type": "file", "url": url, "taskToken": "x" * 1025})
    assert "xxxx" not in str(refused.value)
