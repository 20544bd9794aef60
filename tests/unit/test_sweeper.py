"""The sweeper ends the tasks whose check chain died, at their deadline, and announces them.

Against moto's DynamoDB (the template's table and its listing index) and EventBridge (a rule sending
the service's events to a queue the tests read), on production's clock: the task timeout is the
template's TaskTimeoutSeconds default and sweeps come at the rate of its SweeperSchedule, on a fake
clock the tests advance."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.aws import MotoServer, provision
from local.schedules import RateExpression
from local.template import Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.eventbridge import EventBridgePublisher
from preheat.errors import DependencyFailure
from preheat.models import PreheatRequest, Step, Task, TaskStatus
from preheat.ports import OverdueQuery
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.sweeper import LOOKBACK, Sweeper
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeEvents, FakeQueue, FakeRegistry, FakeSupernodes

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
BUS = "sweeper-events"
# Production's timings, from the template.
TASK_TIMEOUT = int(TEMPLATE.raw["Parameters"]["TaskTimeoutSeconds"]["Default"])
SWEEP_EVERY = RateExpression.parse(
    TEMPLATE.raw["Resources"]["SweeperFunction"]["Properties"]["Events"]["Sweep"]["Properties"][
        "ScheduleExpression"
    ]
).period

pytestmark = pytest.mark.xdist_group("moto")

# Each test's clock starts on a day of its own: the table is the module's, and no test may find
# another's tasks in its window.
_DAYS = itertools.count()


def client(url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, str]]:
    with MotoServer() as server:
        resources = provision(TEMPLATE, server.url, {"Supernodes": "http://127.0.0.1:8002"})
        events, sqs = client(server.url, "events"), client(server.url, "sqs")
        events.create_event_bus(Name=BUS)
        queue = sqs.create_queue(QueueName="sweeper-events-seen")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        pattern = {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}
        events.put_rule(Name="finished", EventBusName=BUS, EventPattern=json.dumps(pattern))
        events.put_targets(Rule="finished", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
        yield server.url, resources["TasksTable"].ref


class World:
    """The service, the worker and the sweeper on one table and one bus, the queue a fake whose
    messages the test delivers (or drops), all on one fake clock."""

    def __init__(self, url: str, table: str) -> None:
        self._sqs = client(url, "sqs")
        self._seen = self._sqs.get_queue_url(QueueName="sweeper-events-seen")["QueueUrl"]
        self.received()  # what earlier tests left
        self.clock = Clock(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=next(_DAYS)))
        self.settings = settings = Settings(
            table_name=table, task_timeout_seconds=TASK_TIMEOUT, check_window_seconds=0, event_bus=BUS
        )
        self.dynamodb = client(url, "dynamodb")
        self.store = DynamoDBTaskStore(settings, client=self.dynamodb)
        self.publisher = EventBridgePublisher(settings, client=client(url, "events"))
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
        self.sweeper = Sweeper(self.store, self.queue, self.publisher, settings, clock=self.clock)

    def submit(self, url: str) -> str:
        return self.service.submit(PreheatRequest.parse({"type": "file", "url": url})).task_id

    def received(self) -> list[dict[str, Any]]:
        bodies = []
        while messages := self._sqs.receive_message(QueueUrl=self._seen, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                self._sqs.delete_message(QueueUrl=self._seen, ReceiptHandle=message["ReceiptHandle"])
        return bodies

    def dispatched_with_its_chain_killed(self, url: str) -> str:
        """A task whose start step ran and handed over to check 1, a message then lost."""
        task_id = self.submit(url)
        [start] = self.queue.take()
        self.worker.handle(start)
        [check] = self.queue.take()  # dropped: nobody will ever look at the task again
        assert (check.task_id, check.step) == (task_id, Step.CHECK)
        task = self.store.get(task_id)
        assert task is not None
        assert task.status is TaskStatus.RUNNING
        assert task.dispatched
        return task_id


@pytest.fixture
def world(moto) -> World:
    return World(*moto)


def test_a_task_whose_check_chain_died_is_ended_by_the_first_sweep_past_its_deadline_and_announced(world):
    task_id = world.dispatched_with_its_chain_killed("https://files.example.com/stuck.bin")

    # Sweeps before the deadline leave it alone.
    world.clock.advance(TASK_TIMEOUT - SWEEP_EVERY.total_seconds())
    assert world.sweeper.sweep().ended == ()
    assert world.store.get(task_id).status is TaskStatus.RUNNING  # type: ignore[union-attr]
    assert world.received() == []

    # The first sweep at or past the deadline (sweeps come every SWEEP_EVERY) ends it.
    world.clock.advance(SWEEP_EVERY.total_seconds())
    before = world.store.get(task_id)
    assert before is not None
    result = world.sweeper.sweep()

    assert result.ended == (task_id,)
    task = world.store.get(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert task.finished_at == task.deadline
    assert task.message == before.timed_out_message()
    assert task.message.startswith(f"timed out: still RUNNING at the deadline {task.deadline.isoformat()}")
    [event] = world.received()
    assert event["detail"]["taskId"] == task_id
    assert event["detail"]["status"] == "FAIL"
    assert event["detail"]["msg"] == task.message
    # Ended once: the next sweep finds nothing, and announces nothing again.
    world.clock.advance(SWEEP_EVERY.total_seconds())
    assert world.sweeper.sweep().ended == ()
    assert world.received() == []


def test_tasks_that_ended_or_are_alive_are_left_alone(world):
    alive = world.submit("https://files.example.com/alive.bin")
    world.clock.advance(SWEEP_EVERY.total_seconds())
    succeeded = world.submit("https://files.example.com/ok.bin")
    world.nodes.warm.add("https://files.example.com/ok.bin")
    for message in world.queue.take():
        if message.task_id == succeeded:
            world.worker.handle(message)
    assert world.store.get(succeeded).status is TaskStatus.SUCCESS  # type: ignore[union-attr]
    world.received()
    # Past the deadline of the first, not of the second (created a sweep later).
    world.clock.advance(TASK_TIMEOUT - SWEEP_EVERY.total_seconds() / 2)

    result = world.sweeper.sweep()

    assert result.ended == (alive,)
    assert world.store.get(succeeded).status is TaskStatus.SUCCESS  # type: ignore[union-attr]
    assert [event["detail"]["taskId"] for event in world.received()] == [alive]


def test_a_worker_that_concludes_meanwhile_keeps_its_verdict_and_the_sweeper_announces_nothing(world):
    task_id = world.dispatched_with_its_chain_killed("https://files.example.com/late.bin")
    world.clock.advance(TASK_TIMEOUT + SWEEP_EVERY.total_seconds())

    class ConcludedBetweenReadAndWrite(DynamoDBTaskStore):
        def get(self, task_id: str) -> Task | None:
            read = super().get(task_id)
            assert read is not None
            # A late check delivery concludes the task after the sweeper read it.
            done = replace(
                read, status=TaskStatus.SUCCESS, finished_at=read.deadline, check_seq=read.check_seq + 1
            )
            assert world.store.save(done, expected_check_seq=read.check_seq)
            return read

    racing = ConcludedBetweenReadAndWrite(world.settings, client=world.dynamodb)
    sweeper = Sweeper(
        racing, world.queue, world.publisher, Settings(task_timeout_seconds=TASK_TIMEOUT), world.clock
    )

    result = sweeper.sweep()

    assert result.ended == ()
    assert result.skipped == (task_id,)
    assert world.store.get(task_id).status is TaskStatus.SUCCESS  # type: ignore[union-attr]
    assert world.received() == []


def test_an_event_the_bus_refuses_goes_out_through_the_worker(world):
    task_id = world.dispatched_with_its_chain_killed("https://files.example.com/unannounced.bin")
    world.clock.advance(TASK_TIMEOUT + SWEEP_EVERY.total_seconds())
    refusing = FakeEvents()
    refusing.fail_next = 1
    settings = Settings(task_timeout_seconds=TASK_TIMEOUT)

    result = Sweeper(world.store, world.queue, refusing, settings, clock=world.clock).sweep()

    assert result.ended == result.handed_to_worker == (task_id,)
    assert world.store.get(task_id).status is TaskStatus.FAIL  # type: ignore[union-attr]
    assert world.received() == []
    # The message it queued makes a worker announce the ended task.
    [message] = world.queue.take()
    world.worker.handle(message)
    [event] = world.received()
    assert (event["detail"]["taskId"], event["detail"]["status"]) == (task_id, "FAIL")


def test_a_task_that_cannot_be_ended_fails_the_sweep_after_the_others(world):
    first = world.dispatched_with_its_chain_killed("https://files.example.com/a.bin")
    world.clock.advance(1)
    second = world.dispatched_with_its_chain_killed("https://files.example.com/b.bin")
    world.clock.advance(TASK_TIMEOUT + SWEEP_EVERY.total_seconds())
    refusing, queue = FakeEvents(), FakeQueue()
    refusing.fail_next, queue.fail_next = 1, 1  # the first's event and its hand-over both refused
    settings = Settings(task_timeout_seconds=TASK_TIMEOUT)

    with pytest.raises(DependencyFailure, match=f"1 overdue task.*{first}"):
        Sweeper(world.store, queue, refusing, settings, clock=world.clock).sweep()

    assert [task.task_id for task in refusing.finished] == [second]
    assert world.store.get(second).status is TaskStatus.FAIL  # type: ignore[union-attr]


def test_the_index_read_covers_the_window_of_creation_times_and_is_bounded(world):
    sweeper = Sweeper(world.store, world.queue, world.publisher, Settings(task_timeout_seconds=TASK_TIMEOUT))
    # Tasks created every 10 minutes over two timeouts and the look-back; none is ever worked.
    created = []
    for _ in range(int((2 * TASK_TIMEOUT + LOOKBACK.total_seconds()) // 600)):
        created.append(world.submit(f"https://files.example.com/{len(created)}.bin"))
        world.clock.advance(600)
    world.queue.take()
    now = world.clock()
    window = sweeper.window(now)

    found = world.store.overdue(window)

    tasks = {task_id: world.store.get(task_id) for task_id in created}
    expected = [
        task_id
        for task_id, task in tasks.items()
        if task is not None and window.created_from <= task.created_at < window.created_before
    ]
    assert found.complete
    assert expected
    assert list(found.task_ids) == expected  # oldest first
    assert all(task.deadline <= now for task_id, task in tasks.items() if task and task_id in expected)
    # Older tasks (their deadline over an hour gone: earlier sweeps' business) and younger ones
    # (their deadline to come) are not read.
    assert tasks[created[0]].deadline < now - LOOKBACK  # type: ignore[union-attr]
    assert created[0] not in found.task_ids
    assert tasks[created[-1]].deadline > now  # type: ignore[union-attr]
    assert created[-1] not in found.task_ids
    # A read bounded below what its window holds (more tasks than shards, one item a shard) says so.
    everything = OverdueQuery(now, now - timedelta(days=1), now, examine=8)
    overdue = [task_id for task_id, task in tasks.items() if task and task.deadline <= now]
    assert world.store.overdue(replace(everything, examine=5000)).task_ids == tuple(overdue)
    assert len(overdue) > 8
    bounded = world.store.overdue(everything)
    assert not bounded.complete
    assert len(bounded.task_ids) <= 8
