"""LifecycleService: verify and evict over the driver port, with the worker's fakes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from preheat.lifecycle import STOPPED_BY_EVICTION, BlobSeen, LifecycleService, PeerSeen, Verification
from preheat.models import TaskStatus
from preheat.ports import EVICTED
from tests.support.fakes import FakeEvents
from tests.unit.test_worker import LAYERS, SETTINGS, TWO_NODES, World


class LifeWorld(World):
    def __init__(self) -> None:
        super().__init__()
        self.events = FakeEvents()
        self.life = LifecycleService(self.store, self.nodes, SETTINGS, events=self.events, clock=self.clock)

    def warm_task(self) -> str:
        task_id = self.submit()
        self.deliver_all()
        self.nodes.finish()
        self.deliver_all()
        assert self.task(task_id).status is TaskStatus.SUCCESS
        return task_id


@pytest.fixture
def life() -> LifeWorld:
    return LifeWorld()


def test_verify_reports_every_blob_on_every_supernode_and_the_summary(life: LifeWorld) -> None:
    task_id = life.warm_task()

    seen = life.life.verify(life.task(task_id))

    assert len(seen.blobs) == len(LAYERS) * len(TWO_NODES)
    assert (seen.layers_total, seen.layers_warm) == (3, 3)
    assert seen.peers_with_every_layer == ("sn1:8002", "sn2:8002")
    assert seen.warm_on(None)
    assert seen.warm_on(2)
    assert not seen.warm_on(3)
    answer = seen.to_api()
    assert answer["summary"] == {
        "layersWarm": 3,
        "layersTotal": 3,
        "peersWithEveryLayer": ["sn1:8002", "sn2:8002"],
    }
    assert answer["pending"] is False
    assert answer["unreachable"] == []
    assert answer["blobs"][0]["peers"] == [{"host": "sn1:8002", "ip": "sn1:8002", "finished": True}]
    assert set(answer["blobs"][0]) >= {"digest", "nodeTaskId", "target", "peers", "warm"}


def test_an_unreachable_supernode_is_named_and_its_blobs_unknown_never_gone(life: LifeWorld) -> None:
    task_id = life.warm_task()
    life.nodes.down.add(TWO_NODES[1])

    seen = life.life.verify(life.task(task_id))

    assert seen.unreachable == (TWO_NODES[1],)
    down = [blob for blob in seen.blobs if blob.target == TWO_NODES[1]]
    assert down
    assert all(blob.warm is None for blob in down)
    assert all(peer.finished is None for blob in down for peer in blob.peers)
    assert seen.layers_warm == 0  # not warm on every target it went to, as far as anyone knows
    assert not seen.warm_on(None)
    assert seen.warm_on(1)  # sn1 answered: each blob is finished on at least one peer


def test_evict_removes_every_blob_records_it_announces_it_and_a_verify_shows_them_gone(
    life: LifeWorld,
) -> None:
    task_id = life.warm_task()

    evicted = life.life.evict(life.task(task_id))

    assert evicted.evicted_at == life.clock.now
    assert {e.outcome for e in evicted.evictions} == {EVICTED}
    assert len(evicted.evictions) == 6
    assert life.task(task_id).evicted_at == life.clock.now
    assert [t.task_id for t in life.events.evicted] == [task_id]
    assert life.task(task_id).to_api()["evictedAt"] == "2026-01-01T00:00:00.000Z"
    after = life.life.verify(life.task(task_id))
    assert after.layers_warm == 0
    assert after.peers_with_every_layer == ()
    assert all(blob.warm is False and blob.peers == () for blob in after.blobs)


def test_a_second_evict_changes_nothing(life: LifeWorld) -> None:
    task_id = life.warm_task()
    first = life.life.evict(life.task(task_id))
    life.clock.advance(60)
    deletes = len(life.nodes.evicted)

    second = life.life.evict(life.task(task_id))

    assert second == first
    assert len(life.nodes.evicted) == deletes
    assert len(life.events.evicted) == 1


def test_evicting_a_running_task_stops_its_worker_so_nothing_rewarms_it(life: LifeWorld) -> None:
    task_id = life.submit()
    life.deliver_all()  # started: blobs sent, a check queued
    assert life.task(task_id).status is TaskStatus.RUNNING
    creates = len(life.nodes.creates)

    evicted = life.life.evict(life.task(task_id))
    life.nodes.finish()
    for _ in range(3):
        life.deliver_all()

    assert evicted.status is TaskStatus.FAIL
    assert evicted.message == STOPPED_BY_EVICTION
    assert life.task(task_id).status is TaskStatus.FAIL
    assert life.task(task_id).evicted_at is not None
    assert len(life.nodes.creates) == creates  # no step sent anything again
    assert [t.status for t in life.events.finished][:1] == [TaskStatus.FAIL]


def test_an_unreachable_supernode_keeps_its_outcome_per_blob(life: LifeWorld) -> None:
    task_id = life.warm_task()
    life.nodes.down.add(TWO_NODES[0])

    evicted = life.life.evict(life.task(task_id))

    outcomes = {(e.target, e.outcome) for e in evicted.evictions}
    assert outcomes == {(TWO_NODES[1], EVICTED), (TWO_NODES[0], f"supernode {TWO_NODES[0]} unreachable")}


def test_a_verification_is_not_warm_while_pending() -> None:
    blob = BlobSeen("sha256:aa", "sha256:aa", "id", "http://m", (PeerSeen("h", "1.2.3.4", True),), True, None)
    seen = Verification(datetime(2026, 1, 1, tzinfo=UTC), (blob,), pending=True, unreachable=())
    assert not seen.warm_on(None)
    assert not seen.warm_on(1)
    assert Verification(seen.checked_at, (blob,), pending=False, unreachable=()).warm_on(1)
    assert not Verification(seen.checked_at, (), pending=False, unreachable=()).warm_on(None)
