"""Verify and evict on Dragonfly 2 schedulers, against the reference scheduler over real gRPC:
StatFile + ListHosts judged by the worker's warm rule; a blob deleted behind the service's back
reads gone; evict answers 501 naming the manager (a scheduler's DeleteTask deletes no peer's
data); an unreachable scheduler is named and nothing reads as gone."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterator

import pytest

from local.dragonfly2_scheduler import ReferenceScheduler
from preheat.adapters.dragonfly2_scheduler import Dragonfly2SchedulerDriver
from preheat.errors import NotSupported
from preheat.lifecycle import LifecycleService
from preheat.models import Blob, BlobProgress, BlobState, PreheatType, Targeting, Task, TaskStatus
from preheat.settings import Settings
from tests.support.fakes import Clock, FakeEvents, FakeTaskStore
from tests.support.origin import Origin

pytestmark = pytest.mark.timeout(30)

WAIT = 20  # seconds a test waits for the peers; never reached when all is well
BODY = b"layer " * 2048
DIGEST = f"sha256:{hashlib.sha256(BODY).hexdigest()}"
PATH = f"/v2/team/app/blobs/{DIGEST}"


@pytest.fixture
def origin() -> Iterator[Origin]:
    with contextlib.closing(Origin({PATH: BODY})) as serving:
        yield serving


@pytest.fixture
def scheduler() -> Iterator[ReferenceScheduler]:
    with ReferenceScheduler(seed_peers=1, normal_peers=2) as running:
        yield running


def settings_for(*addresses: str, timeout: float = 2.0) -> Settings:
    return Settings(
        supernodes=addresses,
        supernode_api="dragonfly2-scheduler",
        supernode_timeout_seconds=timeout,
        check_timeout_seconds=timeout,
        allowed_networks=("127.0.0.0/8",),
    )


def driver_for(*addresses: str, timeout: float = 2.0) -> Dragonfly2SchedulerDriver:
    return Dragonfly2SchedulerDriver(
        settings_for(*addresses, timeout=timeout), attempts=1, sleep=lambda _: None
    )


def warm(driver: Dragonfly2SchedulerDriver, scheduler: ReferenceScheduler, url: str) -> BlobProgress:
    """The blob preheated on every normal peer (all_peers) and recorded as the worker records it."""
    sent = Blob(url=url, digest=DIGEST, targeting=Targeting(scope="all_peers"))
    created = driver.create(scheduler.address, sent)
    assert scheduler.wait_finished(created.task_id, 2, WAIT)
    return BlobProgress(
        label=DIGEST,
        target=scheduler.address,
        state=BlobState.SUCCESS,
        digest=DIGEST,
        supernode_task_id=created.task_id,
        url=url,
        node_task_id=driver.node_task_id(sent),
    )


def test_verify_reads_the_peers_then_a_delete_behind_the_back_reads_gone(
    scheduler: ReferenceScheduler, origin: Origin
) -> None:
    driver = driver_for(scheduler.address)
    recorded = warm(driver, scheduler, origin.url(PATH))
    targeting = Targeting(scope="all_peers")

    [seen] = driver.holders([recorded], targeting)
    scheduler.evict(recorded.supernode_task_id or "", "peer-0")
    [one_gone] = driver.holders([recorded], targeting)
    scheduler.evict(recorded.supernode_task_id or "")
    [gone] = driver.holders([recorded], targeting)

    assert seen.warm is True
    assert sorted((p.host, p.finished) for p in seen.peers) == [("peer-0", True), ("peer-1", True)]
    assert one_gone.warm is False  # all_peers asks for both normal peers
    assert [p.host for p in one_gone.peers] == ["peer-1"]
    assert one_gone.error is not None
    assert "peer-0" in one_gone.error
    assert gone.warm is False
    assert gone.peers == ()


def test_evict_answers_not_supported_naming_the_manager_and_stops_nothing(
    scheduler: ReferenceScheduler, origin: Origin
) -> None:
    driver = driver_for(scheduler.address)
    recorded = warm(driver, scheduler, origin.url(PATH))
    clock = Clock()
    task = Task(
        task_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        type=PreheatType.FILE,
        url=origin.url(PATH),
        status=TaskStatus.RUNNING,
        created_at=clock.now,
        deadline=clock.now,
        dispatched=True,
        blobs=(recorded,),
    )
    store = FakeTaskStore()
    store.tasks[task.task_id] = task
    life = LifecycleService(store, driver, settings_for(scheduler.address), events=FakeEvents(), clock=clock)

    with pytest.raises(NotSupported) as refused:
        life.evict(task)

    assert "Dragonfly 2 manager" in str(refused.value)
    assert "delete_task" in str(refused.value)
    assert store.tasks[task.task_id] == task  # not stopped, nothing recorded
    assert scheduler.wait_finished(recorded.supernode_task_id or "", 2, 1)  # still on the peers


def test_an_unreachable_scheduler_is_named_and_its_blobs_are_unknown_not_gone() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    recorded = BlobProgress(label=DIGEST, target=address, url="http://127.0.0.1:9/x", digest=DIGEST)

    [seen] = driver_for(address, timeout=0.5).holders([recorded], Targeting())

    assert seen.unreachable == address
    assert seen.warm is None
