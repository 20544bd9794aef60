"""Scheduled preheats and preheat on ECR push through the local stack: the real handler, moto, the
worker and the reference supernode; tasks read back through the status API, as a user would."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from local.schedules import Firing
from local.stack import LocalStack
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.models import PreheatType, Task, TaskStatus
from preheat.settings import Settings
from tests.local.support import wait_for
from tests.support.http_server import serve_directory
from tests.support.local_stack import ended
from tests.support.registry import OciImage, RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

EVENTS = Path(__file__).resolve().parents[2] / "events"
FUNCTION = "ScheduledPreheatFunction"
SCHEDULE = "ScheduledPreheatsSchedule"
SWEEPER_SCHEDULE = "SweeperFunctionSweep"
DIGEST = "sha256:" + hashlib.sha256(b"pushed").hexdigest()


class Clock:
    """The scheduler's time source: real time until a test moves it on."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("files")
    for name in ("scheduled.bin", "mixed.bin", "single.bin"):
        (root / name).write_bytes(name.encode() * 10_000)
    with serve_directory(root) as server:
        yield server.url


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, file_server: str, clock: Clock) -> Iterator[LocalStack]:
    scheduled = [{"type": "file", "url": f"{file_server}/scheduled.bin"}]
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("supernode-cache"),
        parameters={"ScheduledPreheats": json.dumps(scheduled), "PreheatSchedule": "rate(1 minute)"},
        schedules=True,
        schedule_clock=clock,
        visibility_timeout=5,
        extra_env={
            "PREHEAT_POLL_MAX_DELAY": "1",
            "PREHEAT_REGISTRY_TIMEOUT": "2",
            # EMF on stdout, so the tests can read the metrics the handler records.
            "POWERTOOLS_METRICS_DISABLED": "false",
        },
    ) as running:
        # The first invocation imports the layer, whose logger keeps the stdout of that moment: let
        # that be pytest's own, not a capsys stream that a test closes when it ends.
        assert running.invoke(FUNCTION, {"preheats": []}) == {"taskIds": [], "rejected": [], "failed": []}
        yield running


def status(stack: LocalStack, task_id: str) -> dict[str, Any]:
    response = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["code"] == 200, body
    data: dict[str, Any] = body["data"]
    return data


def emf_total(output: str, metric: str) -> float:
    """The sum of ``metric`` over every EMF document printed in ``output``."""
    total = 0.0
    for line in output.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        value = json.loads(line).get(metric)
        if value is not None:
            total += sum(value) if isinstance(value, list) else value
    return total


def task_count(stack: LocalStack) -> int:
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    count: int = client.scan(TableName=stack.table_name("TasksTable"), Select="COUNT")["Count"]
    return count


def test_good_entries_become_tasks_and_bad_ones_are_rejected_and_counted(
    stack: LocalStack, file_server: str, capsys: pytest.CaptureFixture[str]
):
    capsys.readouterr()
    answer = stack.invoke(
        FUNCTION,
        {
            "preheats": [
                {"type": "file", "url": f"{file_server}/mixed.bin"},
                {"type": "image", "url": "registry.example.com/UPPER:case"},
                {"type": "image", "url": "127.0.0.1:1/team/app:v1", "platform": "linux/arm64"},
                {"type": "file"},
            ]
        },
    )
    assert [problem["index"] for problem in answer["rejected"]] == [1, 3]
    assert "invalid repository name" in answer["rejected"][0]["reason"]
    assert "'url' must be a non-empty string" in answer["rejected"][1]["reason"]
    assert answer["failed"] == []
    file_task, image_task = answer["taskIds"]
    assert emf_total(capsys.readouterr().out, "ScheduledPreheatsRejected") == 2

    image = status(stack, image_task)
    assert (image["type"], image["url"], image["platform"]) == (
        "image",
        "127.0.0.1:1/team/app:v1",
        ["linux/arm64"],
    )
    done = ended(stack, file_task)
    assert (done["type"], done["url"], done["status"]) == ("file", f"{file_server}/mixed.bin", "SUCCESS")


def test_a_single_request_object_is_one_task(stack: LocalStack, file_server: str):
    answer = stack.invoke(FUNCTION, {"type": "file", "url": f"{file_server}/single.bin"})
    (task_id,) = answer["taskIds"]
    assert answer["rejected"] == []
    assert ended(stack, task_id)["status"] == "SUCCESS"


def test_an_ecr_push_event_preheats_the_image_by_digest(stack: LocalStack):
    event = json.loads((EVENTS / "ecr-push.json").read_text())
    event["detail"].update({"repository-name": "team/pushed", "image-digest": DIGEST})
    event.update(account="210987654321", region="eu-west-1")
    (task_id,) = stack.invoke(FUNCTION, event)["taskIds"]
    data = status(stack, task_id)
    assert data["type"] == "image"
    assert data["url"] == f"210987654321.dkr.ecr.eu-west-1.amazonaws.com/team/pushed@{DIGEST}"


@pytest.mark.parametrize(("action", "result"), [("DELETE", "SUCCESS"), ("PUSH", "FAILURE")])
def test_other_ecr_events_are_ignored_and_create_nothing(stack: LocalStack, action: str, result: str):
    event = json.loads((EVENTS / "ecr-push.json").read_text())
    event["detail"].update({"action-type": action, "result": result})
    before = task_count(stack)
    answer = stack.invoke(FUNCTION, event)
    assert answer["taskIds"] == []
    assert answer["ignored"].startswith(f"ECR {action} {result}")
    assert task_count(stack) == before


def test_the_template_schedule_fires_when_its_time_comes(stack: LocalStack, clock: Clock, file_server: str):
    scheduler = stack.scheduler
    assert scheduler is not None
    assert set(scheduler.schedules) == {SCHEDULE, SWEEPER_SCHEDULE}
    assert scheduler.schedules[SCHEDULE].function == FUNCTION
    fired_before = len(scheduler.history)

    due = scheduler.next_due(SCHEDULE)
    assert due is not None
    assert due - clock() <= timedelta(minutes=1)
    clock.offset += timedelta(minutes=1, seconds=1)  # the background thread sees a minute pass

    def fired() -> list[Firing]:
        return list(scheduler.history)[fired_before:]

    (firing,) = wait_for(fired, timeout=10)
    assert firing.schedule == SCHEDULE
    assert firing.due == due
    assert firing.error is None, firing.error
    assert firing.result["rejected"] == []
    (task_id,) = firing.result["taskIds"]
    done = ended(stack, task_id)
    assert (done["url"], done["status"]) == (f"{file_server}/scheduled.bin", "SUCCESS")
    next_due = scheduler.next_due(SCHEDULE)
    assert next_due is not None
    assert next_due > clock()


def test_a_schedule_can_be_fired_on_demand(stack: LocalStack, file_server: str):
    assert stack.scheduler is not None
    firing = stack.scheduler.fire(SCHEDULE)
    assert firing.error is None, firing.error
    (task_id,) = firing.result["taskIds"]
    assert status(stack, task_id)["url"] == f"{file_server}/scheduled.bin"


def test_the_sweeper_schedule_ends_a_task_left_running_past_its_deadline(stack: LocalStack):
    """A task dispatched whose check message never came (its chain died), its deadline two minutes
    gone: the sweeper's schedule, fired, ends it FAIL "timed out" (read from the table, not through a
    status read, which would end it too)."""
    assert stack.scheduler is not None
    assert stack.scheduler.schedules[SWEEPER_SCHEDULE].function == "SweeperFunction"
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    store = DynamoDBTaskStore(Settings(table_name=stack.table_name("TasksTable")), client=client)
    timeout = timedelta(seconds=int(stack.template.raw["Parameters"]["TaskTimeoutSeconds"]["Default"]))
    created = datetime.now(UTC) - timeout - timedelta(minutes=2)
    task_id = str(uuid.uuid4())
    store.create(
        Task(
            task_id=task_id,
            type=PreheatType.FILE,
            url="https://files.example.com/orphan.bin",
            status=TaskStatus.RUNNING,
            created_at=created,
            deadline=created + timeout,
            dispatched=True,
            check_seq=1,
        )
    )

    firing = stack.scheduler.fire(SWEEPER_SCHEDULE)

    assert firing.error is None, firing.error
    assert task_id in firing.result["ended"]
    task = store.get(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert (task.message or "").startswith("timed out: still RUNNING at the deadline")


def test_a_scheduled_image_is_preheated_like_one_from_the_api(
    stack: LocalStack, registry: RegistryServer, oci_image: OciImage
):
    registry.push(oci_image, "scheduled/app:nightly")
    answer = stack.invoke(
        FUNCTION, {"preheats": [{"type": "image", "url": f"{registry.host}/scheduled/app:nightly"}]}
    )
    (task_id,) = answer["taskIds"]
    done = ended(stack, task_id)
    assert done["status"] == "SUCCESS", done
    assert done["layers"]["succeeded"] == done["layers"]["total"] == 3  # config and two layers


def test_secrets_manager_and_ecr_are_served_by_the_local_moto(stack: LocalStack):
    """What the worker's credentials code calls: no endpoint of its own, the stack's environment."""
    from aws_lambda_powertools.utilities import parameters

    secrets = boto3.client("secretsmanager")
    stored = {"registry.example.com": {"username": "robot", "password": "s3cret"}}
    secrets.create_secret(Name="preheat/test-registries", SecretString=json.dumps(stored))
    assert parameters.get_secret("preheat/test-registries", transform="json", force_fetch=True) == stored
    token = boto3.client("ecr").get_authorization_token()["authorizationData"][0]
    assert token["proxyEndpoint"].startswith("https://")
    assert secrets.meta.endpoint_url == stack.moto_url
