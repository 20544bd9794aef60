"""Keep warm through Dragonfly 2 schedulers: a peer that lost a blob behind the service's back (the
reference scheduler's ``evict``) has it re-warmed by the next due check, over real gRPC, with the
schedule in the template's table (moto in-process) and the check driven by a sweep on a fake clock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from local.aws import provision
from local.dragonfly2_scheduler import ReferenceScheduler
from local.template import Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.dynamodb_keepwarm import DynamoDBKeepWarmStore
from preheat.keepwarm import DriverRewarmer, KeepWarmer
from preheat.lifecycle import LifecycleService
from preheat.models import PreheatType, Targeting, Task, TaskStatus, utcnow
from preheat.models.keepwarm import KeepWarm
from tests.support.fakes import Clock
from tests.support.origin import Origin
from tests.unit.test_dragonfly2_scheduler_lifecycle import PATH, WAIT, driver_for, settings_for, warm

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
TASK_ID = "5f0c6b7e-3f0e-4b55-9a43-6c2d4a1e9b10"

pytestmark = pytest.mark.timeout(60)


class Rewarms:
    """The re-warm events, as put."""

    def __init__(self) -> None:
        self.put: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []

    def task_rewarmed(self, task: Task, missing: Sequence[str], failed: Sequence[str] = ()) -> None:
        self.put.append((task.task_id, tuple(missing), tuple(failed)))


@pytest.fixture
def origin() -> Iterator[Origin]:
    with contextlib.closing(Origin({PATH: b"layer " * 2048})) as serving:
        yield serving


def test_a_peer_that_lost_a_blob_gets_it_again_at_the_next_check(origin: Origin) -> None:
    with ReferenceScheduler(seed_peers=1, normal_peers=2) as scheduler, mock_aws():
        settings = replace(
            settings_for(scheduler.address),
            table_name=provision(TEMPLATE, None, {"Supernodes": scheduler.address})["TasksTable"].ref,  # type: ignore[arg-type]
        )
        driver = driver_for(scheduler.address)
        recorded = warm(driver, scheduler, origin.url(PATH))
        clock = Clock(utcnow())
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        store = DynamoDBTaskStore(settings, client=dynamodb)
        every = timedelta(hours=1)
        kept = KeepWarm(every, clock.now + timedelta(days=1), next_check_at=clock.now + every)
        task = Task(
            TASK_ID,
            PreheatType.FILE,
            origin.url(PATH),
            TaskStatus.RUNNING,
            clock.now,
            clock.now + timedelta(minutes=30),
            targeting=Targeting(scope="all_peers"),
            keep_warm=kept,
        )
        store.create(task)
        assert store.save(
            replace(task, status=TaskStatus.SUCCESS, finished_at=clock.now, blobs=(recorded,), check_seq=1), 0
        )
        lifecycle = LifecycleService(store, driver, settings, clock=clock)
        events = Rewarms()
        keeper = KeepWarmer(
            store,
            DynamoDBKeepWarmStore(settings, client=dynamodb),
            lifecycle,
            DriverRewarmer(driver, False),
            events,
            clock,
        )
        # Behind the service's back, one of the two peers loses it.
        scheduler.evict(recorded.supernode_task_id or "", "peer-0")
        [seen] = lifecycle.verify(store.get(TASK_ID)).blobs  # type: ignore[arg-type]
        assert seen.warm is False

        clock.advance(every.total_seconds())
        result = keeper.run_due()

        missing = (f"{recorded.label}@{scheduler.address}",)
        assert result.rewarmed == ((TASK_ID, missing),)
        assert events.put == [(TASK_ID, missing, ())]
        assert scheduler.wait_finished(recorded.supernode_task_id or "", 2, WAIT)
        [again] = lifecycle.verify(store.get(TASK_ID)).blobs  # type: ignore[arg-type]
        assert again.warm is True
        assert sorted(peer.host for peer in again.peers if peer.finished) == ["peer-0", "peer-1"]
