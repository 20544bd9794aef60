"""Every function invoked with every sample in events/, the way `sam local invoke` would: the
function is the one the template routes the event to, and its resources are the local stack's."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from local.template import GetAtt, Resolver, Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.models import PreheatType, Task, TaskStatus
from preheat.service import JOB_ALIAS_PREFIX
from preheat.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
EVENTS = sorted((ROOT / "events").glob("*.json"))

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

# Parameter values under which every trigger of the template exists (conditions are not evaluated when
# routing: the question is where the template can send an event, not whether the defaults do).
ROUTING = Resolver(
    TEMPLATE,
    TEMPLATE.parameter_values({"Supernodes": "http://supernode:8002", "ScheduledPreheats": "[]"}),
    {},
    "us-east-1",
    "123456789012",
)


def _target(arn: Any) -> str | None:
    if isinstance(arn, GetAtt) and arn.attribute == "Arn" and arn.resource in TEMPLATE.functions:
        return arn.resource
    return None


def _matches(pattern: Any, value: Any) -> bool:
    """EventBridge pattern matching, as far as the template's rules use it."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches(p, value.get(key)) for key, p in pattern.items())
    return any(
        value.startswith(option["prefix"]) if isinstance(option, dict) else value == option
        for option in pattern
    )


def _eventbridge_targets(event: dict[str, Any]) -> set[str]:
    """Functions an EventBridge rule of the template sends ``event`` to."""
    targets = set()
    for logical_id, resource in TEMPLATE.resources.items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Events::Rule" and _matches(
            ROUTING.resolve(props["EventPattern"]), event
        ):
            targets |= {_target(target["Arn"]) for target in props.get("Targets") or ()} - {None}
        for event_source in (props.get("Events") or {}).values():
            if event_source.get("Type") == "EventBridgeRule":
                source_props = event_source["Properties"]
                if _matches(ROUTING.resolve(source_props["Pattern"]), event):
                    targets.add(logical_id)
    return {target for target in targets if target in TEMPLATE.functions}


def _schedule_targets(event: dict[str, Any]) -> set[str]:
    """Functions a schedule of the template invokes with input shaped like ``event``."""
    targets = set()
    for logical_id, resource in TEMPLATE.resources.items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Scheduler::Schedule":
            target = props["Target"]
            if set(json.loads(ROUTING.resolve(target["Input"]))) == set(event):
                targets.add(_target(target["Arn"]))
        for event_source in (props.get("Events") or {}).values():
            if event_source.get("Type") == "ScheduleV2":
                schedule_input = ROUTING.resolve(event_source["Properties"].get("Input", "{}"))
                if set(json.loads(schedule_input)) == set(event):
                    targets.add(logical_id)
    return {target for target in targets if target is not None}


def _authorizer_targets() -> set[str]:
    """Functions an Api of the template names as a Lambda authorizer (in its DefinitionBody)."""
    targets = set()
    for resource in TEMPLATE.resources.values():
        if resource.get("Type") != "AWS::Serverless::Api":
            continue
        body = (resource.get("Properties") or {}).get("DefinitionBody") or {}
        for definition in (body.get("securityDefinitions") or {}).values():
            uri = json.dumps(definition, default=lambda fn: getattr(fn, "args", str(fn)))
            targets |= {name for name in TEMPLATE.functions if "${" + name + ".Arn}" in uri}
    return targets


def target_function(event: dict[str, Any]) -> str:
    """The logical id of the function the template sends ``event`` to."""
    if event.get("type") == "REQUEST" and "methodArn" in event:  # a Lambda authorizer's event
        (authorizer,) = _authorizer_targets()
        return authorizer
    if "httpMethod" in event:
        for function in TEMPLATE.functions.values():
            for api in function.api_events:
                if api.path == event["resource"] and api.method in (event["httpMethod"], "ANY"):
                    return function.logical_id
    elif event.get("Records") and event["Records"][0].get("eventSource") == "aws:sqs":
        queue_name = event["Records"][0]["eventSourceARN"].rsplit(":", 1)[-1]
        for function in TEMPLATE.functions.values():
            for sqs in function.sqs_events:
                # CloudFormation names a queue <stack>-<LogicalId>-<suffix>.
                if f"-{sqs.queue}-" in queue_name:
                    return function.logical_id
    else:
        targets = _eventbridge_targets(event) if "detail-type" in event else _schedule_targets(event)
        if len(targets) == 1:
            return targets.pop()
    raise AssertionError(f"no function of the template takes {event.get('resource') or 'this event'}")


# The task behind the Dragonfly 2 job status sample's job id (any task will do: its alias names it).
JOB_TASK_ID = "2c5ea4c0-4067-4b1d-9f3a-6c1e8b7d5a90"
# A SUCCESS task the listing sample (filtered by status=SUCCESS) must show.
LISTED_TASK_ID = "5d0b2f7e-1c3a-4e8f-9b6d-2a4c6e8f0a1b"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with (
        ReferenceSupernode(tmp_path_factory.mktemp("cache")).start() as supernode,
        LocalStack(supernodes=[supernode.url], cache_dir=tmp_path_factory.mktemp("unused")) as running,
    ):
        yield running


@pytest.fixture
def store(stack: LocalStack) -> DynamoDBTaskStore:
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    return DynamoDBTaskStore(Settings(table_name=stack.table_name("TasksTable")), client=client)


def api_body(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["statusCode"] == 200
    headers = {
        **answer.get("headers", {}),
        **{k: v[-1] for k, v in answer.get("multiValueHeaders", {}).items()},
    }
    assert headers["Content-Type"] == "application/json"
    return json.loads(answer["body"])


def running_task(task_id: str, *, dispatched: bool = False, check_seq: int = 0) -> Task:
    now = datetime.now(UTC)
    return Task(
        task_id=task_id,
        type=PreheatType.IMAGE,
        url="127.0.0.1:5001/demo/app:v1",
        status=TaskStatus.RUNNING,
        created_at=now,
        deadline=now + timedelta(minutes=30),
        dispatched=dispatched,
        check_seq=check_seq,
    )


def given_running(
    stack: LocalStack, store: DynamoDBTaskStore, task_id: str, *, dispatched: bool = False
) -> Task:
    """A fresh RUNNING task of that id, whatever an earlier test left under it."""
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    client.delete_item(TableName=stack.table_name("TasksTable"), Key={"pk": {"S": task_id}})
    task = running_task(task_id, dispatched=dispatched)
    store.create(task)
    return task


def given_succeeded(stack: LocalStack, store: DynamoDBTaskStore, task_id: str) -> Task:
    """A task of that id that already ended SUCCESS, whatever an earlier test left under it."""
    given_absent(stack, task_id)
    task = replace(running_task(task_id, dispatched=True), status=TaskStatus.SUCCESS)
    task = replace(task, finished_at=task.created_at + timedelta(seconds=5))
    store.create(task)
    return task


def given_absent(stack: LocalStack, task_id: str) -> None:
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    client.delete_item(TableName=stack.table_name("TasksTable"), Key={"pk": {"S": task_id}})


def given_state_for(stack: LocalStack, store: DynamoDBTaskStore, event: dict[str, Any]) -> None:
    """What a sample that reads a task needs: the task it names, RUNNING (and, for a Dragonfly 2
    job, the job id's alias), so its answer is exact."""
    resource = event.get("resource")
    if resource == "/api/preheat" and event.get("httpMethod") == "GET":  # the listing of SUCCESS tasks
        given_succeeded(stack, store, LISTED_TASK_ID)
    elif resource in ("/api/preheat/{taskId}", "/api/preheat/{taskId}/peers", "/api/preheat/{taskId}/gate"):
        given_running(stack, store, event["pathParameters"]["taskId"])
    elif resource == "/preheats/{id}":
        given_running(stack, store, event["pathParameters"]["id"], dispatched=True)
    elif resource == "/oapi/v1/jobs/{id}":
        task = given_running(stack, store, JOB_TASK_ID)
        assert store.put_alias(f"{JOB_ALIAS_PREFIX}{int(event['pathParameters']['id'])}", task)
    elif target_function(event) == "DeadLetterFunction":
        for task_id in queued_task_ids(event):
            given_running(stack, store, task_id)
    elif target_function(event) == "WorkerFunction":
        # Late deliveries for tasks that already ended: acknowledged, the tasks left as they are.
        for task_id in queued_task_ids(event):
            given_succeeded(stack, store, task_id)


def queued_task_ids(event: dict[str, Any]) -> list[str]:
    return [json.loads(record["body"])["taskId"] for record in event["Records"]]


def test_every_function_has_a_sample_event_and_every_sample_a_function():
    targets = {path.name: target_function(load(path)) for path in EVENTS}
    assert set(targets.values()) == set(TEMPLATE.functions), targets


@pytest.mark.parametrize("path", EVENTS, ids=lambda p: p.name)
def test_every_sample_event_is_handled(stack: LocalStack, store: DynamoDBTaskStore, path: Path):
    event = load(path)
    function = target_function(event)
    given_state_for(stack, store, event)
    answer = stack.invoke(function, event)
    if function == "CheckFunction":
        assert api_body(answer) == {"code": 200}
    elif function == "ApiKeyAuthorizerFunction":
        # The password of the sample's Basic header is the key API Gateway checks against the plan.
        assert answer["usageIdentifierKey"] == "sampleKey0123456789abcdefghijKLMNOPQRSTuv"
        (statement,) = answer["policyDocument"]["Statement"]
        assert statement["Effect"] == "Allow"
        assert statement["Resource"] == "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/v1/*"
    elif function == "OpenApiFunction":
        check_static_document(event, answer)
    elif function == "PreheatFunction":
        body = api_body(answer)
        if path.name == "preheat-invalid.json":
            assert body["code"] == 400
            assert "'type' must be" in body["msg"]
        else:
            assert body["code"] == 200, body
            task = store.get(body["data"]["taskId"])
            assert task is not None
            assert task.url == json.loads(event["body"])["url"]
    elif function == "StatusFunction":
        check_status_answer(event, answer)
    elif function == "LifecycleFunction":
        check_lifecycle_answer(event, answer, store)
    elif function == "ScheduledPreheatFunction":
        check_scheduled_answer(path, event, answer, store)
    elif function in ("SweeperFunction", "GateFunction"):
        check_keep_warm_and_gate_answer(function, answer)
    elif function in ("HarborDragonfly1Function", "HarborDragonfly2Function"):
        check_harbor_answer(function, event, answer, store)
    else:  # the SQS consumers, with the tasks given_state_for made
        check_queue_answer(function, event, answer, store)


def check_keep_warm_and_gate_answer(function: str, answer: Any) -> None:
    if function == "SweeperFunction":
        # The stack's tasks are younger than a timeout (none overdue: see the sweeper test below), and
        # none is kept warm.
        assert answer == {
            "ended": [],
            "skipped": 0,
            "handedToWorker": [],
            "complete": True,
            "keepWarm": {"checked": [], "rewarmed": {}, "stopped": [], "postponed": [], "failed": []},
        }
    else:
        # A RUNNING task: not ready, said with HTTP 412 (rollout tools read the status).
        assert answer["statusCode"] == 412
        body = json.loads(answer["body"])
        assert body["ready"] is False
        assert body["reason"] == "the preheat task is not SUCCESS: it is still RUNNING"


def check_queue_answer(function: str, event: dict[str, Any], answer: Any, store: DynamoDBTaskStore) -> None:
    assert answer == {"batchItemFailures": []}
    for task_id in queued_task_ids(event):
        task = store.get(task_id)
        assert task is not None
        if function == "DeadLetterFunction":
            assert task.status is TaskStatus.FAIL
            assert "gave up on its 'start' step after 50 attempts" in (task.message or "")
        else:
            assert task.status is TaskStatus.SUCCESS


def check_scheduled_answer(path: Path, event: dict[str, Any], answer: Any, store: DynamoDBTaskStore) -> None:
    assert answer["rejected"] == []
    assert answer["failed"] == []
    tasks = [store.get(task_id) for task_id in answer["taskIds"]]
    urls = [task.url if task else None for task in tasks]
    if path.name == "ecr-push.json":
        detail = event["detail"]
        assert urls == [
            f"{event['account']}.dkr.ecr.{event['region']}.amazonaws.com/"
            f"{detail['repository-name']}@{detail['image-digest']}"
        ]
    else:
        assert urls == [entry["url"] for entry in event["preheats"]]


def check_static_document(event: dict[str, Any], answer: Any) -> None:
    if event["resource"] == "/console":
        assert answer["statusCode"] == 200
        assert answer["headers"]["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src 'sha256-" in answer["headers"]["Content-Security-Policy"]
        assert 'id="preheat-form"' in answer["body"]
    else:
        assert api_body(answer)["paths"]


def check_status_answer(event: dict[str, Any], answer: Any) -> None:
    body = api_body(answer)
    if event["resource"] == "/api/preheat":  # the listing, filtered by the sample's query
        assert body["code"] == 200, body
        assert all(task["status"] == "SUCCESS" for task in body["data"]["tasks"])
        assert LISTED_TASK_ID in [task["taskId"] for task in body["data"]["tasks"]]
        assert "next" in body["data"]
    else:  # a task's status: given_state_for made it RUNNING
        assert body["code"] == 200, body
        assert body["data"]["taskId"] == event["pathParameters"]["taskId"]
        assert body["data"]["status"] == "RUNNING"


def check_lifecycle_answer(event: dict[str, Any], answer: Any, store: DynamoDBTaskStore) -> None:
    body = api_body(answer)
    assert body["code"] == 200, body
    task_id = event["pathParameters"]["taskId"]
    if event["httpMethod"] == "GET":  # a verify of a task that sent nothing yet: nothing to ask about
        assert body["data"]["blobs"] == []
        assert body["data"]["summary"] == {"layersWarm": 0, "layersTotal": 0, "peersWithEveryLayer": []}
    else:  # an evict of the RUNNING task given_state_for made: stopped, then recorded
        assert body["data"]["taskId"] == task_id
        assert body["data"]["evictedAt"]
        task = store.get(task_id)
        assert task is not None
        assert task.status is TaskStatus.FAIL
        assert task.evicted_at is not None


def check_harbor_answer(function: str, event: dict[str, Any], answer: Any, store: DynamoDBTaskStore) -> None:
    # Harbor's providers answer with real HTTP status codes.
    if event["httpMethod"] == "POST":
        # Dragonfly 1's supernode answers a create 201, Dragonfly 2's manager 200.
        assert answer["statusCode"] == (201 if function == "HarborDragonfly1Function" else 200), answer
        created = json.loads(answer["body"])
        if function == "HarborDragonfly1Function":
            task = store.get(created["ID"])
        else:
            assert isinstance(created["id"], int)
            task = store.get(created["task_id"])
            assert "example-pull-token" not in answer["body"]
        assert task is not None
        sent = json.loads(event["body"])
        assert task.url == sent.get("url", sent.get("args", {}).get("url"))
    elif event["resource"] in ("/_ping", "/healthy"):
        assert (answer["statusCode"], answer["body"]) == (200, "OK")
    elif function == "HarborDragonfly1Function":  # GET /preheats/{id}: a dispatched RUNNING task
        assert answer["statusCode"] == 200, answer
        status = json.loads(answer["body"])
        assert (status["ID"], status["status"]) == (event["pathParameters"]["id"], "RUNNING")
    else:  # GET /oapi/v1/jobs/{id}: the job of a RUNNING task
        assert answer["statusCode"] == 200, answer
        job = json.loads(answer["body"])
        assert (job["id"], job["task_id"], job["state"]) == (
            int(event["pathParameters"]["id"]),
            JOB_TASK_ID,
            "PENDING",
        )


def test_status_sample_reads_the_task_it_names(stack: LocalStack, store: DynamoDBTaskStore):
    event = load(ROOT / "events" / "status.json")
    task_id = event["pathParameters"]["taskId"]
    given_absent(stack, task_id)
    assert api_body(stack.invoke("StatusFunction", event))["code"] == 404
    given_running(stack, store, task_id)
    body = api_body(stack.invoke("StatusFunction", event))
    assert body["code"] == 200
    assert body["data"]["taskId"] == task_id
    assert body["data"]["status"] == "RUNNING"


def test_dead_letter_sample_ends_its_task_as_fail_with_the_reason(
    stack: LocalStack, store: DynamoDBTaskStore
):
    event = load(ROOT / "events" / "deadletter-sqs.json")
    task_id = json.loads(event["Records"][0]["body"])["taskId"]
    given_running(stack, store, task_id)
    assert stack.invoke("DeadLetterFunction", event) == {"batchItemFailures": []}
    task = store.get(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert "gave up on its 'start' step after 50 attempts" in (task.message or "")


def test_worker_reports_a_malformed_message_as_a_batch_item_failure(stack: LocalStack):
    event = load(ROOT / "events" / "worker-sqs.json")
    event["Records"][0]["body"] = "not json"
    answer = stack.invoke("WorkerFunction", event)
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_invalid_preheat_writes_nothing(stack: LocalStack):
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    table = stack.table_name("TasksTable")
    before = client.scan(TableName=table, Select="COUNT")["Count"]
    event = load(ROOT / "events" / "preheat-invalid.json")
    for body in ("not json", "[]", '{"type":"image"}', '{"type":"image","url":"h.io/a","header":[]}'):
        answer = api_body(stack.invoke("PreheatFunction", dict(event, body=body)))
        assert answer["code"] == 400
        assert answer["msg"]
    assert client.scan(TableName=table, Select="COUNT")["Count"] == before


def test_sweeper_sample_ends_a_task_left_running_past_its_deadline(
    stack: LocalStack, store: DynamoDBTaskStore
):
    """A task whose check chain died (dispatched, its check message gone) and whose deadline passed
    a minute ago: the schedule's invocation ends it FAIL "timed out", and says so."""
    # The stack runs with the template's default timeout, as a deployment does.
    timeout = timedelta(seconds=int(TEMPLATE.raw["Parameters"]["TaskTimeoutSeconds"]["Default"]))
    created = datetime.now(UTC) - timeout - timedelta(minutes=1)
    task_id = "5d3c8a1e-9b7f-4c2a-8e61-0f4b2d9a7c14"
    store.create(
        replace(
            running_task(task_id, dispatched=True, check_seq=1),
            created_at=created,
            deadline=created + timeout,
        )
    )

    answer = stack.invoke("SweeperFunction", load(ROOT / "events" / "sweeper-schedule.json"))

    assert answer["ended"] == [task_id]
    task = store.get(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert (task.message or "").startswith("timed out: still RUNNING at the deadline")
