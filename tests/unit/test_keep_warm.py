"""Keep warm: a kept task's blob deleted behind the service's back is re-warmed by the next due
check, driven by sweeps on a fake clock (never by waiting hours).

The real pieces: the template's table with its KeepWarmIndex (moto in-process), EventBridge (a rule
sending the service's events to a queue the test reads), the Dragonfly 1 driver and the reference
supernode (local/supernode.py, which downloads from a scripted origin), LifecycleService.verify,
and the worker that preheats the task in the first place.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

from local.aws import provision
from local.schedules import RateExpression
from local.supernode import ReferenceSupernode
from local.template import Template
from preheat.adapters.dragonfly1 import Dragonfly1Driver
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.dynamodb_keepwarm import DynamoDBKeepWarmStore
from preheat.adapters.eventbridge import EventBridgePublisher
from preheat.errors import InvalidRequest
from preheat.keepwarm import CHECKED, SKIPPED, DriverRewarmer, KeepWarmer
from preheat.lifecycle import BlobSeen, LifecycleService, Verification
from preheat.models import Blob, PreheatRequest, Task, TaskStatus, isoformat, utcnow
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeRegistry
from tests.unit.test_dragonfly1_driver import Fake

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
SWEEP_EVERY = RateExpression.parse(
    TEMPLATE.raw["Resources"]["SweeperFunction"]["Properties"]["Events"]["Sweep"]["Properties"][
        "ScheduleExpression"
    ]
).period
BUS = "keep-warm"
FILE_URL = "https://files.example.com/model.bin"
DATA = b"weights" * 4000
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"
# The reference supernode downloads on a thread of its own: how many short looks a test gives it.
LOOKS = 500

pytestmark = pytest.mark.timeout(60)


def aws(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1")


class World:
    def __init__(self, node: ReferenceSupernode, origin: Fake) -> None:
        resources = provision(TEMPLATE, None, {"Supernodes": node.url})  # type: ignore[arg-type]
        events, sqs = aws("events"), aws("sqs")
        events.create_event_bus(Name=BUS)
        self._seen = sqs.create_queue(QueueName="keep-warm-seen")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self._seen, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(Name="all", EventBusName=BUS, EventPattern=json.dumps({"source": ["preheat"]}))
        events.put_targets(Rule="all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
        self.node, self.origin = node, origin
        # keepWarm's bounds are checked against the real time; the clock starts there.
        self.clock = Clock(utcnow())
        self.settings = settings = Settings(
            table_name=resources["TasksTable"].ref,
            supernodes=(node.url,),
            check_window_seconds=0,
            event_bus=BUS,
        )
        dynamodb = aws("dynamodb")
        self.store = DynamoDBTaskStore(settings, client=dynamodb)
        self.schedule = DynamoDBKeepWarmStore(settings, client=dynamodb)
        self.publisher = EventBridgePublisher(settings, client=events)
        self.driver = Dragonfly1Driver(settings)
        self.queue = FakeQueue()
        registry = FakeRegistry(files={FILE_URL: Blob(url=f"{origin.url}/model.bin", digest=DIGEST)})
        self.service = PreheatService(
            self.store, self.queue, settings, clock=self.clock, events=self.publisher
        )
        self.worker = Worker(
            self.store, self.queue, registry, self.driver, settings, clock=self.clock, events=self.publisher
        )
        self.lifecycle = LifecycleService(
            self.store, self.driver, settings, events=self.publisher, clock=self.clock
        )
        self.keeper = self.keeper_on(self.store)

    def keeper_on(self, store: Any) -> KeepWarmer:
        """What bootstrap.keep_warmer() builds for Dragonfly 1, on the test's clock."""
        return KeepWarmer(
            store,
            self.schedule,
            self.lifecycle,
            DriverRewarmer(self.driver, evict_first=True),
            self.publisher,
            clock=self.clock,
        )

    def preheated(self, keep_warm: dict[str, str]) -> str:
        """A file preheated to SUCCESS through the worker, kept warm as ``keep_warm`` asks."""
        task_id = self.service.submit(
            PreheatRequest.parse({"type": "file", "url": FILE_URL, "keepWarm": keep_warm})
        ).task_id
        for _ in range(LOOKS):
            for message in self.queue.take():
                self.worker.handle(message)
            if self.task(task_id).status is not TaskStatus.RUNNING:
                break
            time.sleep(0.01)
        assert self.task(task_id).status is TaskStatus.SUCCESS
        self.events()  # the completion event: not what these tests look at
        return task_id

    def task(self, task_id: str) -> Task:
        task = self.store.get(task_id)
        assert task is not None
        return task

    def warm_now(self, task_id: str) -> bool | None:
        [blob] = self.lifecycle.verify(self.task(task_id)).blobs
        return blob.warm

    def warm_again(self, task_id: str) -> bool:
        """Whether the supernode finishes its download within the looks given (it runs on its own)."""
        for _ in range(LOOKS):
            if self.warm_now(task_id):
                return True
            time.sleep(0.01)
        return False

    def delete_behind_the_services_back(self, task_id: str) -> None:
        [blob] = self.task(task_id).blobs
        answer = requests.delete(f"{self.node.url}/api/v1/tasks/{blob.supernode_task_id}", timeout=5)
        assert answer.status_code == 200
        assert self.warm_now(task_id) is False

    def events(self) -> list[dict[str, Any]]:
        sqs, bodies = aws("sqs"), []
        while messages := sqs.receive_message(QueueUrl=self._seen, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self._seen, ReceiptHandle=message["ReceiptHandle"])
        return bodies

    def sweep_at(self, moment: Any) -> Any:
        """Sweeps every SWEEP_EVERY up to ``moment``, as the schedule would; the last one's result."""
        result = None
        while self.clock.now < moment:
            self.clock.advance(min(SWEEP_EVERY, moment - self.clock.now).total_seconds())
            result = self.keeper.run_due()
        return result


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    origin = Fake({("GET", "/model.bin"): [(200, DATA)]})
    try:
        with ReferenceSupernode(tmp_path) as node, mock_aws():
            yield World(node, origin)
    finally:
        origin.close()


def until_in(world: World, delta: timedelta) -> str:
    return isoformat(world.clock.now + delta) or ""


def test_a_blob_deleted_behind_the_services_back_is_rewarmed_at_the_next_check(world):
    task_id = world.preheated({"every": "PT6H", "until": until_in(world, timedelta(days=2))})
    shown = world.task(task_id).to_api()["keepWarm"]
    assert shown["every"] == "PT6H"
    assert shown["nextCheckAt"] == isoformat(world.task(task_id).created_at + timedelta(hours=6))
    assert shown["lastCheck"] is None
    world.delete_behind_the_services_back(task_id)

    # The sweeps before the check is due leave it alone.
    before = world.sweep_at(world.task(task_id).created_at + timedelta(hours=6) - SWEEP_EVERY)
    assert before.checked == ()
    assert world.warm_now(task_id) is False

    # The first sweep at or past the due time runs the check: it finds the blob missing, re-creates it.
    result = world.sweep_at(world.task(task_id).created_at + timedelta(hours=6))
    missing = f"{DIGEST}@{world.node.url}"
    assert result.checked == (task_id,)
    assert result.rewarmed == ((task_id, (missing,)),)
    assert world.warm_again(task_id)
    assert DIGEST in world.node.cached_digests()
    [event] = world.events()
    assert event["detail-type"] == "Preheat Task Rewarmed"
    assert event["detail"]["taskId"] == task_id
    assert event["detail"]["missing"] == [missing]
    assert event["detail"]["failed"] == []
    kept = world.task(task_id).to_api()["keepWarm"]
    assert kept["lastCheck"] == {"at": isoformat(world.clock.now), "result": "rewarmed", "missing": [missing]}
    assert kept["nextCheckAt"] == isoformat(world.clock.now + timedelta(hours=6))

    # The check after finds it warm: nothing re-created, no event.
    again = world.sweep_at(world.clock.now + timedelta(hours=6))
    assert again.checked == (task_id,)
    assert again.rewarmed == ()
    assert world.events() == []
    assert world.task(task_id).to_api()["keepWarm"]["lastCheck"]["result"] == "warm"


def test_two_sweeps_that_find_the_same_due_check_run_it_once(world):
    task_id = world.preheated({"every": "PT5M", "until": until_in(world, timedelta(hours=1))})
    world.delete_behind_the_services_back(task_id)
    world.clock.advance(SWEEP_EVERY.total_seconds())
    stale = world.task(task_id)  # what a second sweep read before the first moved the check on

    class ReadBeforeTheFirstSweepClaimed(DynamoDBTaskStore):
        def get(self, task_id: str) -> Task | None:
            return stale

    first = world.keeper.check(task_id, world.clock.now)
    second = world.keeper_on(ReadBeforeTheFirstSweepClaimed(world.settings, client=aws("dynamodb"))).check(
        task_id, world.clock.now
    )

    assert first[0] == CHECKED
    assert second == (SKIPPED, ())
    assert len(world.events()) == 1


def test_a_task_past_until_or_evicted_stops_being_kept_and_leaves_the_index(world):
    ends = world.preheated({"every": "PT5M", "until": until_in(world, timedelta(minutes=12))})
    evicted = world.preheated({"every": "PT5M", "until": until_in(world, timedelta(days=1))})
    world.lifecycle.evict(world.task(evicted))

    world.sweep_at(world.clock.now + timedelta(minutes=20))

    assert world.task(evicted).to_api()["keepWarm"]["stopped"] == "evicted"
    assert world.task(evicted).to_api()["keepWarm"]["nextCheckAt"] is None
    assert world.task(ends).to_api()["keepWarm"]["stopped"] == "until reached"
    assert world.task(ends).to_api()["keepWarm"]["nextCheckAt"] is None
    # Out of the index: no sweep finds them again, whatever the time.
    assert world.schedule.due(world.clock.now + timedelta(days=40), 100) == ()
    # No check ran on the evicted task. (The other task's checks, of the same file, may re-warm it:
    # that one is still kept.)
    assert world.task(evicted).to_api()["keepWarm"]["lastCheck"] is None


@pytest.mark.parametrize(
    ("keep_warm", "says"),
    [
        ({"every": "PT4M", "until": "+1d"}, "shorter than the least period, 5 minutes"),
        ({"every": "6 hours", "until": "+1d"}, "is not an ISO 8601 duration"),
        ({"every": "P1M", "until": "+1d"}, "is not an ISO 8601 duration"),
        ({"every": "PT", "until": "+1d"}, "is not an ISO 8601 duration"),
        ({"every": 3600, "until": "+1d"}, "must be an ISO 8601 duration"),
        ({"every": "PT6H", "until": "+31d"}, "more than 30 days ahead"),
        ({"every": "PT6H", "until": "-1h"}, "is not in the future"),
        ({"every": "PT6H", "until": "tomorrow"}, "must be an RFC 3339 time"),
        ({"every": "PT6H", "until": "2026-12-31T00:00:00"}, "must be an RFC 3339 time"),
        ({"every": "P2D", "until": "+1d"}, "no check would run"),
        ({"every": "PT6H"}, "must be an RFC 3339 time"),
        ({"every": "PT6H", "until": "+1d", "at": "noon"}, "must be an object like"),
        ("PT6H", "must be an object like"),
    ],
)
def test_bad_keep_warm_values_are_refused_with_a_message(keep_warm: Any, says: str):
    now = utcnow()
    if isinstance(keep_warm, dict) and str(keep_warm.get("until", "")).startswith(("+", "-")):
        offset = keep_warm["until"]
        amount = (
            timedelta(days=int(offset[1:-1])) if offset.endswith("d") else timedelta(hours=int(offset[1:-1]))
        )
        keep_warm = {**keep_warm, "until": isoformat(now + amount if offset[0] == "+" else now - amount)}
    with pytest.raises(InvalidRequest) as refused:
        PreheatRequest.parse({"type": "file", "url": FILE_URL, "keepWarm": keep_warm})
    assert says in str(refused.value)


def test_good_keep_warm_values_are_taken_in_their_canonical_form():
    now = utcnow()
    request = PreheatRequest.parse(
        {
            "type": "file",
            "url": FILE_URL,
            "keepWarm": {"every": "P1DT12H", "until": isoformat(now + timedelta(days=30))},
        }
    )
    assert request.keep_warm is not None
    assert request.keep_warm.to_api()["every"] == "P1DT12H"
    assert replace(request.keep_warm, every=timedelta(minutes=5)).to_api()["every"] == "PT5M"


def test_a_check_the_cluster_cannot_answer_yet_is_unknown_and_looked_at_again_next_sweep(world):
    """A Dragonfly 2 manager answers a verify through jobs its next refresh writes: pending, never
    "gone". Nothing is re-created; the check comes back at the next sweep, not a period later."""
    task_id = world.preheated({"every": "PT6H", "until": until_in(world, timedelta(days=2))})

    class Pending:
        def verify(self, task: Task) -> Verification:
            [blob] = task.blobs
            seen = BlobSeen(blob.label, blob.digest, blob.node_task_id, blob.target, (), None, None)
            return Verification(world.clock.now, (seen,), pending=True, unreachable=())

    keeper = KeepWarmer(
        world.store,
        world.schedule,
        Pending(),
        DriverRewarmer(world.driver, True),
        world.publisher,
        world.clock,
    )
    world.clock.advance(timedelta(hours=6).total_seconds())

    result = keeper.run_due()

    assert result.checked == (task_id,)
    assert result.rewarmed == ()
    kept = world.task(task_id).to_api()["keepWarm"]
    assert kept["lastCheck"] == {"at": isoformat(world.clock.now), "result": "unknown", "missing": []}
    assert kept["nextCheckAt"] == isoformat(world.clock.now + SWEEP_EVERY)
    assert world.events() == []


def test_bad_keep_warm_through_the_api_is_code_400_and_writes_nothing(monkeypatch: pytest.MonkeyPatch):
    from preheat import bootstrap
    from preheat.entrypoints.api import build_resolver, preheat_routes
    from tests.support.fakes import FakeTaskStore
    from tests.support.lambda_context import LambdaContext

    store = FakeTaskStore()
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: PreheatService(store, FakeQueue(), Settings()))
    event = json.loads((ROOT / "events" / "preheat-file.json").read_text())
    body = json.loads(event["body"]) | {"keepWarm": {"every": "PT1M", "until": "2099-01-01T00:00:00Z"}}

    answer = build_resolver(preheat_routes()).resolve(event | {"body": json.dumps(body)}, LambdaContext())

    assert answer["statusCode"] == 200  # the spec's envelope: the outcome is in code
    assert json.loads(answer["body"]) == {
        "code": 400,
        "msg": "'keepWarm.every' 'PT1M' is shorter than the least period, 5 minutes (PT5M)",
    }
    assert store.tasks == {}
