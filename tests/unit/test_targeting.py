"""Per-request targeting (scope, clusterIds, ips, count, percentage): validated as the Dragonfly 2
manager validates a job, carried from the request through the task to the job body, winning over the
deployment's defaults, refused against Dragonfly 1, and part of the deduplication key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from preheat.adapters.dragonfly2 import Dragonfly2Driver, job_targeting
from preheat.errors import InvalidRequest
from preheat.models import Blob, BlobState, PreheatRequest, Targeting, TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore

IMAGE = "h.io/app:v1"
LAYERS = [Blob(url=f"https://h.io/v2/app/blobs/sha256:{c * 64}", digest=f"sha256:{c * 64}") for c in "ab"]
# No watch window: the fake clock does not move, so a worker step must not wait on it.
DF2 = Settings(
    supernode_api="dragonfly2",
    dragonfly2_scope="single_seed_peer",
    dragonfly2_clusters=(7,),
    check_window_seconds=0,
)

pytestmark = pytest.mark.timeout(60)
TOKEN = "df2-token-targeting"


def body(**fields: Any) -> dict[str, Any]:
    return {"type": "image", "url": IMAGE, **fields}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"scope": "everyone"}, "'scope'"),
        ({"scope": 3}, "'scope'"),
        ({"clusterIds": []}, "'clusterIds'"),
        ({"clusterIds": [0]}, "'clusterIds'"),
        ({"clusterIds": ["1"]}, "'clusterIds'"),
        ({"clusterIds": 1}, "'clusterIds'"),
        ({"ips": []}, "'ips'"),
        ({"ips": "10.0.0.1"}, "'ips'"),
        ({"ips": ["10.0.0.300"]}, "'ips'"),
        ({"ips": ["node-1"]}, "'ips'"),
        ({"ips": [f"10.0.{i // 250}.{i % 250}" for i in range(101)]}, "at most 100"),
        ({"count": 0}, "'count'"),
        ({"count": 201}, "'count'"),
        ({"count": 1.5}, "'count'"),
        ({"count": True}, "'count'"),
        ({"count": "5"}, "'count'"),
        ({"percentage": 0}, "'percentage'"),
        ({"percentage": 101}, "'percentage'"),
        ({"ips": ["10.0.0.1"], "count": 3}, "only one of"),
        ({"count": 3, "percentage": 50}, "only one of"),
        ({"ips": ["10.0.0.1"], "percentage": 50}, "only one of"),
    ],
)
def test_bad_targeting_is_refused_as_the_manager_would(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        PreheatRequest.parse(body(**fields))


def test_good_targeting_is_parsed_and_unknown_fields_are_ignored() -> None:
    request = PreheatRequest.parse(
        body(
            scope="all_peers",
            clusterIds=[2, 1, 2],
            ips=["10.0.0.1", "::1", "10.0.0.1"],
            somethingHarborAdds={"x": 1},
            concurrent_count=4,
        )
    )
    assert request.targeting == Targeting("all_peers", (2, 1), ("10.0.0.1", "::1"))
    assert PreheatRequest.parse(body(count=200)).targeting.count == 200
    assert PreheatRequest.parse(body(percentage=1)).targeting.percentage == 1
    assert not PreheatRequest.parse(body()).targeting
    file = PreheatRequest.parse({"type": "file", "url": "https://f.example.com/x", "scope": "all_seed_peers"})
    assert file.targeting.scope == "all_seed_peers"


def test_dragonfly1_refuses_targeting_saying_the_target_has_no_such_feature() -> None:
    store = FakeTaskStore()
    service = PreheatService(store, FakeQueue(), Settings(supernode_api="dragonfly1"))
    for fields in ({"ips": ["10.0.0.1"]}, {"scope": "all_peers", "clusterIds": [1]}, {"count": 3}):
        with pytest.raises(InvalidRequest, match="the target has no such feature") as refused:
            service.submit(PreheatRequest.parse(body(**fields)))
        for name in fields:
            assert f"'{name}'" in str(refused.value)
    assert store.tasks == {}
    # Without targeting, Dragonfly 1 takes the request as before.
    assert service.submit(PreheatRequest.parse(body(somethingElse=1))).status is TaskStatus.RUNNING


def test_schedulers_take_scope_and_peers_but_refuse_cluster_ids() -> None:
    store = FakeTaskStore()
    settings = Settings(supernode_api="dragonfly2-scheduler", supernodes=("scheduler-0:8002",))
    service = PreheatService(store, FakeQueue(), settings)
    with pytest.raises(InvalidRequest, match="'clusterIds': the target has no such feature"):
        service.submit(PreheatRequest.parse(body(scope="all_peers", clusterIds=[1])))
    assert store.tasks == {}

    task = service.submit(PreheatRequest.parse(body(scope="all_peers", percentage=30)))

    assert task.targeting == Targeting("all_peers", percentage=30)


def test_targeting_is_shown_in_the_status_answer_and_takes_part_in_deduplication() -> None:
    store = FakeTaskStore()
    service = PreheatService(store, FakeQueue(), DF2, clock=Clock(), dedup_key=lambda: b"k" * 32)

    def submit(**fields: Any) -> str:
        return service.submit(PreheatRequest.parse(body(**fields))).task_id

    plain = submit()
    to_all = submit(scope="all_peers", clusterIds=[1, 2])
    assert to_all != plain
    assert submit(clusterIds=[1, 2], scope="all_peers", unknown=True) == to_all  # the same targeting
    assert submit(scope="all_peers", clusterIds=[1]) != to_all
    counted = submit(count=5)
    assert counted not in (plain, to_all)
    assert submit(count=6) != counted
    assert submit(percentage=5) != counted
    assert submit() == plain  # a request without targeting still joins its twin
    answer = service.get(to_all).to_api()
    assert (answer["scope"], answer["clusterIds"]) == ("all_peers", [1, 2])
    assert service.get(counted).to_api()["count"] == 5
    assert not {"scope", "clusterIds", "ips", "count", "percentage"} & set(service.get(plain).to_api())


def test_the_worker_hands_each_blob_to_the_driver_with_the_tasks_targeting() -> None:
    store, queue, clock = FakeTaskStore(), FakeQueue(), Clock()
    nodes = FakeSupernodes(("http://manager:8080",))
    service = PreheatService(store, queue, DF2, clock=clock)
    worker = Worker(store, queue, FakeRegistry(images={IMAGE: LAYERS}), nodes, DF2, clock=clock)
    targeted = service.submit(PreheatRequest.parse(body(scope="all_seed_peers", ips=["10.1.2.3"])))
    for message in queue.take():
        worker.handle(message)
    assert len(nodes.creates) == len(LAYERS)
    assert {blob.targeting for _, blob in nodes.creates} == {Targeting("all_seed_peers", ips=("10.1.2.3",))}
    assert store.tasks[targeted.task_id].status is TaskStatus.RUNNING


def test_job_targeting_wins_over_the_deployment_defaults() -> None:
    assert job_targeting(DF2, Targeting()) == ({"scope": "single_seed_peer"}, [7])
    assert job_targeting(DF2, Targeting("all_peers", (1, 2), count=9)) == (
        {"scope": "all_peers", "count": 9},
        [1, 2],
    )
    assert job_targeting(DF2, Targeting(percentage=40)) == (
        {"scope": "single_seed_peer", "percentage": 40},
        [7],
    )
    assert job_targeting(Settings(), Targeting(ips=("10.0.0.1",))) == (
        {"scope": "single_seed_peer", "ips": ["10.0.0.1"]},
        [],
    )


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeDragonfly2Manager]:
    started = FakeDragonfly2Manager(
        tmp_path / "cache", TOKEN, clusters={1: "east", 2: "west", 7: "default"}, answer_at_once=True
    )
    started.start()
    yield started
    started.stop()


def test_the_manager_gets_a_job_carrying_the_requests_targeting(
    manager: FakeDragonfly2Manager, tmp_path: Path
) -> None:
    settings = Settings(
        supernodes=(manager.url,),
        supernode_api="dragonfly2",
        dragonfly2_token=TOKEN,
        dragonfly2_clusters=(7,),
        dragonfly2_scope="single_seed_peer",
    )
    driver = Dragonfly2Driver(settings, backoff_seconds=0.01, sleep=lambda _: None)
    url = "http://127.0.0.1:9/v2/app/blobs/sha256:" + "c" * 64
    targeting = Targeting("all_peers", (1, 2), percentage=30)
    created = driver.create(manager.url, Blob(url=url, targeting=targeting))
    assert created.state in (BlobState.PENDING, BlobState.FAILED)  # the fake manager took the job
    sent = manager.requests_seen[0]["body"]
    assert sent["args"]["scope"] == "all_peers"
    assert sent["args"]["percentage"] == 30
    assert "ips" not in sent["args"]
    assert "count" not in sent["args"]
    assert sent["scheduler_cluster_ids"] == [1, 2]
    job = manager.job(int(created.task_id))
    assert job is not None
    assert [cluster["id"] for cluster in job["scheduler_clusters"]] == [1, 2]


def test_the_fake_manager_refuses_what_the_real_one_refuses(manager: FakeDragonfly2Manager) -> None:
    """So the driver tests above would notice a job body the manager would not take."""
    settings = Settings(supernodes=(manager.url,), supernode_api="dragonfly2", dragonfly2_token=TOKEN)
    driver: Callable[[Targeting], Any] = lambda targeting: Dragonfly2Driver(  # noqa: E731
        settings, backoff_seconds=0.01, sleep=lambda _: None
    ).create(manager.url, Blob(url="http://127.0.0.1:9/x", targeting=targeting))
    from preheat.errors import PermanentFailure

    with pytest.raises(PermanentFailure, match="only one of"):
        driver(Targeting(count=3, percentage=4))
    with pytest.raises(PermanentFailure, match="Count"):
        driver(Targeting(count=201))
