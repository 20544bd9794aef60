"""The Dragonfly 2 scheduler driver against a real gRPC scheduler double in-process (tests/support)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from preheat import bootstrap
from preheat.adapters.dragonfly2_peers import Host, judge
from preheat.adapters.dragonfly2_scheduler import (
    HOSTS_REUSE_SECONDS,
    LOOKS_PER_ROUND,
    Dragonfly2SchedulerDriver,
)
from preheat.entrypoints.api import build_resolver, check_routes
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import (
    Blob,
    BlobProgress,
    BlobState,
    Credentials,
    PeerCopy,
    PreheatType,
    Step,
    Targeting,
    Task,
    TaskStatus,
    WorkerMessage,
)
from preheat.settings import Settings
from preheat.task_ids import dragonfly2_task_id
from preheat.worker import FIRST_RELOOK_SECONDS, QUICK_WATCH_SECONDS, Worker
from tests.support.fakes import Clock, FakeEvents, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore
from tests.support.lambda_context import LambdaContext
from tests.support.scheduler_servicer import Peer, RunningScheduler, SchedulerDouble, running_scheduler

pytestmark = pytest.mark.timeout(30)

SECRET = "Bearer s3cr3t-token-9f2b"
PEERS = [
    Peer("seed-1", "10.0.0.1", seed=True),
    Peer("seed-2", "10.0.0.2", seed=True),
    Peer("node-1", "10.0.1.1"),
    Peer("node-2", "10.0.1.2"),
    Peer("node-3", "10.0.1.3"),
    Peer("node-4", "10.0.1.4"),
]


def digest(n: int) -> str:
    return f"sha256:{hashlib.sha256(str(n).encode()).hexdigest()}"


def blob_url(n: int) -> str:
    return f"https://reg.example.com/v2/team/app/blobs/{digest(n)}"


MANIFEST = f"https://reg.example.com/v2/team/app/manifests/{digest(1000)}"


def a_blob(n: int = 1, **fields: object) -> Blob:
    base = Blob(
        url=blob_url(n),
        digest=digest(n),
        size=10,
        headers=Credentials({"Authorization": SECRET}),
        manifest_url=MANIFEST,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
def scheduler() -> Iterator[RunningScheduler]:
    with running_scheduler(SchedulerDouble(peers=list(PEERS))) as running:
        yield running


def settings_for(address: str, **fields: object) -> Settings:
    base = Settings(
        supernodes=(address,),
        supernode_api="dragonfly2-scheduler",
        supernode_timeout_seconds=2.0,
        check_timeout_seconds=1.0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def driver_for(address: str, **fields: object) -> Dragonfly2SchedulerDriver:
    return Dragonfly2SchedulerDriver(settings_for(address, **fields), sleep=lambda _: None)


def progress_of(driver: Dragonfly2SchedulerDriver, target: str, blob: Blob) -> BlobProgress:
    created = driver.create(target, blob)
    return BlobProgress(
        label=blob.label,
        target=target,
        digest=blob.digest,
        supernode_task_id=created.task_id,
        url=blob.url,
        node_task_id=driver.node_task_id(blob),
        manifest_url=blob.manifest_url,
    )


# -- preheat ---------------------------------------------------------------------------------------


def test_every_targeting_field_and_task_id_setting_reaches_the_preheat_file(scheduler: RunningScheduler):
    driver = driver_for(
        scheduler.address,
        dragonfly2_tag="t1",
        dragonfly2_application="app1",
        dragonfly2_piece_length=4194304,
        dragonfly2_filtered_query_params=("X-Sig",),
    )
    aims = [
        Targeting(scope="all_peers", ips=("10.0.1.1", "10.0.1.2")),
        Targeting(scope="all_seed_peers", count=2),
        Targeting(scope="all_peers", percentage=30),
    ]
    for n, targeting in enumerate(aims):
        task = driver.create(scheduler.address, a_blob(n, filter=("Sig2",), targeting=targeting))
        assert task.state is BlobState.PENDING

    sent = scheduler.servicer.sent("PreheatFile")
    assert [request.url for request in sent] == [blob_url(n) for n in range(3)]
    assert [request.scope for request in sent] == ["all_peers", "all_seed_peers", "all_peers"]
    assert list(sent[0].ips) == ["10.0.1.1", "10.0.1.2"]
    assert sent[1].count == 2
    assert not sent[1].HasField("percentage")
    assert sent[2].percentage == 30
    assert not sent[2].HasField("count")
    for request in sent:
        assert request.tag == "t1"
        assert request.application == "app1"
        assert request.piece_length == 4194304
        assert list(request.filtered_query_params) == ["X-Sig", "Sig2"]
        assert dict(request.header) == {"Authorization": SECRET}
    # The id the scheduler computes from that request is the one a node computes.
    assert task.task_id == dragonfly2_task_id(blob_url(2), ("X-Sig", "Sig2"), "t1", "app1", 4194304)


def test_scope_is_always_sent_the_deployment_default_when_the_request_names_none(scheduler: RunningScheduler):
    driver = driver_for(scheduler.address, dragonfly2_scope="all_seed_peers")
    driver.create(scheduler.address, a_blob())
    driver_for(scheduler.address).create(scheduler.address, a_blob(2))

    scopes = [request.scope for request in scheduler.servicer.sent("PreheatFile")]
    assert scopes == ["all_seed_peers", "single_seed_peer"]


def test_blob_digest_mode_preheats_each_manifest_once_and_ids_are_the_digests(scheduler: RunningScheduler):
    driver = driver_for(scheduler.address, dragonfly2_task_ids="blob-digest")
    other = MANIFEST.replace(digest(1000), digest(2000))
    tasks = [driver.create(scheduler.address, a_blob(n)) for n in range(3)]
    tasks.append(driver.create(scheduler.address, a_blob(3, manifest_url=other)))
    # Another task's preheat of the same manifest, aimed elsewhere, is sent too.
    driver.create(scheduler.address, a_blob(0, targeting=Targeting(scope="all_peers")))

    sent = scheduler.servicer.sent("PreheatImage")
    assert [request.url for request in sent] == [MANIFEST, other, MANIFEST]
    assert [request.scope for request in sent] == ["single_seed_peer", "single_seed_peer", "all_peers"]
    assert all(request.enable_task_id_based_blob_digest for request in sent)
    assert dict(sent[0].header) == {"Authorization": SECRET}
    assert not scheduler.servicer.sent("PreheatFile")
    assert [task.task_id for task in tasks] == [digest(n).removeprefix("sha256:") for n in range(4)]


def test_blob_digest_mode_keeps_url_ids_for_a_blob_without_a_manifest(scheduler: RunningScheduler):
    driver = driver_for(scheduler.address, dragonfly2_task_ids="blob-digest")
    task = driver.create(scheduler.address, a_blob(manifest_url=None))

    assert [request.url for request in scheduler.servicer.sent("PreheatFile")] == [blob_url(1)]
    assert task.task_id == dragonfly2_task_id(blob_url(1))


# -- truth per peer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targeting", "finished_on", "warm"),
    [
        (Targeting(), [], False),
        (Targeting(), ["node-1", "node-2"], False),  # normal peers are no seed peer
        (Targeting(), ["seed-2"], True),
        (Targeting(scope="all_seed_peers"), ["seed-1"], False),
        (Targeting(scope="all_seed_peers"), ["seed-1", "seed-2"], True),
        (Targeting(scope="all_seed_peers", ips=("10.0.0.2",)), ["seed-2"], True),
        (Targeting(scope="all_seed_peers", count=1), ["seed-1"], True),
        (Targeting(scope="all_peers"), ["seed-1", "seed-2", "node-1", "node-2", "node-3"], False),
        (Targeting(scope="all_peers"), ["node-1", "node-2", "node-3", "node-4"], True),
        (Targeting(scope="all_peers", ips=("10.0.1.3",)), ["node-1"], False),
        (Targeting(scope="all_peers", ips=("10.0.1.3",)), ["node-3"], True),
        (Targeting(scope="all_peers", count=3), ["node-1", "node-4"], False),
        (Targeting(scope="all_peers", count=3), ["node-1", "node-2", "node-4"], True),
        (Targeting(scope="all_peers", count=3), ["seed-1", "seed-2", "node-4"], False),
        # 4 normal peers: 30% rounds down to 1, 50% is 2, 1% is at least 1.
        (Targeting(scope="all_peers", percentage=30), ["node-2"], True),
        (Targeting(scope="all_peers", percentage=50), ["node-2"], False),
        (Targeting(scope="all_peers", percentage=50), ["node-2", "node-3"], True),
        (Targeting(scope="all_peers", percentage=1), ["node-4"], True),
    ],
)
def test_a_blob_is_warm_when_the_peers_its_scope_asks_for_have_finished(
    scheduler: RunningScheduler, targeting: Targeting, finished_on: list[str], warm: bool
):
    driver = driver_for(scheduler.address)
    progress = progress_of(driver, scheduler.address, a_blob(targeting=targeting))
    for hostname in finished_on:
        scheduler.servicer.hold(blob_url(1), hostname)

    answer = driver.look(progress, targeting)

    assert answer.state is (BlobState.SUCCESS if warm else BlobState.PENDING)
    assert {peer.hostname for peer in answer.peers} == set(finished_on)


def test_a_pending_blob_names_its_digest_prefix_and_the_peers_it_waits_for(scheduler: RunningScheduler):
    driver = driver_for(scheduler.address)
    targeting = Targeting(scope="all_peers")
    progress = progress_of(driver, scheduler.address, a_blob(targeting=targeting))
    scheduler.servicer.hold(blob_url(1), "node-1")
    scheduler.servicer.hold(blob_url(1), "node-2", finished=False)

    answer = driver.look(progress, targeting)

    assert answer.state is BlobState.PENDING
    assert answer.error is not None
    assert answer.error.startswith(f"{digest(1)[:19]} not finished on ")
    assert "node-2 (10.0.1.2)" in answer.error
    assert "node-4 (10.0.1.4)" in answer.error
    assert "node-1 (10.0.1.1)" not in answer.error
    assert set(answer.peers) == {PeerCopy("node-1", "10.0.1.1", True), PeerCopy("node-2", "10.0.1.2", False)}


def test_blob_digest_looks_share_one_stat_image_per_manifest(scheduler: RunningScheduler):
    driver = driver_for(scheduler.address, dragonfly2_task_ids="blob-digest")
    scheduler.servicer.images[MANIFEST] = [blob_url(n) for n in range(5)]
    progress = [progress_of(driver, scheduler.address, a_blob(n)) for n in range(5)]
    for n in range(4):
        scheduler.servicer.hold(blob_url(n), "seed-1")

    answers = [driver.look(item, Targeting()) for item in progress]

    assert [answer.state for answer in answers] == [BlobState.SUCCESS] * 4 + [BlobState.PENDING]
    stats = scheduler.servicer.sent("StatImage")
    assert len(stats) == 1
    assert stats[0].enable_task_id_based_blob_digest
    assert stats[0].url == MANIFEST
    assert stats[0].scope == "single_seed_peer"
    # The manifest's preheat headers serve its looks, from memory only.
    assert dict(stats[0].header) == {"Authorization": SECRET}
    assert driver.calls["ListHosts"] == 1


# -- errors ----------------------------------------------------------------------------------------


def test_unavailable_is_retried(scheduler: RunningScheduler):
    scheduler.servicer.failures["PreheatFile"] = [(grpc.StatusCode.UNAVAILABLE, "busy")] * 2
    driver = driver_for(scheduler.address)

    assert driver.create(scheduler.address, a_blob()).state is BlobState.PENDING
    assert driver.calls["PreheatFile"] == 3


def test_unavailable_past_the_attempts_is_a_transient_failure_naming_the_scheduler(
    scheduler: RunningScheduler,
):
    scheduler.servicer.failures["PreheatFile"] = [(grpc.StatusCode.UNAVAILABLE, SECRET)] * 3
    driver = driver_for(scheduler.address)

    with pytest.raises(TransientFailure) as raised:
        driver.create(scheduler.address, a_blob())

    assert f"Dragonfly 2 scheduler {scheduler.address}" in str(raised.value)
    assert "UNAVAILABLE" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_invalid_argument_is_permanent_and_quotes_the_scheduler_scrubbed(scheduler: RunningScheduler):
    scheduler.servicer.failures["PreheatFile"] = [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"bad header Authorization={SECRET}: token s3cr3t-token-9f2b refused",
        )
    ]
    driver = driver_for(scheduler.address)

    with pytest.raises(PermanentFailure) as raised:
        driver.create(scheduler.address, a_blob())

    message = str(raised.value)
    assert "INVALID_ARGUMENT" in message
    assert "bad header Authorization=" in message
    assert "s3cr3t" not in message
    assert driver.calls["PreheatFile"] == 1


def test_a_scheduler_that_never_answers_is_a_transient_failure_after_each_calls_deadline(
    scheduler: RunningScheduler,
):
    driver = driver_for(scheduler.address, supernode_timeout_seconds=0.2)
    progress = progress_of(driver, scheduler.address, a_blob())
    scheduler.servicer.hang.add("StatFile")

    with pytest.raises(TransientFailure) as raised:
        driver.look(progress, Targeting())

    assert f"Dragonfly 2 scheduler {scheduler.address}" in str(raised.value)
    assert "DEADLINE_EXCEEDED" in str(raised.value)
    assert driver.calls["StatFile"] == 3


# -- check -----------------------------------------------------------------------------------------


def test_ping_asks_each_schedulers_health_service(scheduler: RunningScheduler):
    with running_scheduler(SchedulerDouble(peers=list(PEERS))) as sick:
        sick.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        dead = "127.0.0.1:1"
        driver = driver_for(scheduler.address, supernodes=(scheduler.address, sick.address, dead))

        answer = driver.ping()

    assert answer[scheduler.address] is None
    assert answer[sick.address] == "health NOT_SERVING"
    assert answer[dead] == "UNAVAILABLE"


# -- the bound -------------------------------------------------------------------------------------


def test_one_look_round_of_a_large_task_asks_about_a_bounded_number_of_blobs(scheduler: RunningScheduler):
    settings = settings_for(scheduler.address, check_window_seconds=0.0)
    driver = Dragonfly2SchedulerDriver(settings, sleep=lambda _: None)
    registry = FakeRegistry(images={"reg.example.com/team/app:v1": [a_blob(n) for n in range(20)]})
    store, clock = FakeTaskStore(), Clock()
    worker = Worker(store, FakeQueue(), registry, driver, settings, clock=clock, sleep=lambda _: None)
    task = Task(
        task_id="t-1",
        type=PreheatType.IMAGE,
        url="reg.example.com/team/app:v1",
        status=TaskStatus.RUNNING,
        created_at=clock(),
        deadline=clock() + timedelta(minutes=5),
    )
    store.create(task)
    worker.handle(WorkerMessage(task.task_id, Step.START, headers=Credentials({"Authorization": SECRET})))
    # Each create is looked at once (20), the first look round is bounded.
    assert driver.calls["PreheatFile"] == 20
    before = driver.calls["StatFile"]
    started = store.tasks[task.task_id]

    worker.handle(WorkerMessage(task.task_id, Step.CHECK, seq=started.check_seq, chain=started.check_chain))

    assert driver.calls["StatFile"] - before == LOOKS_PER_ROUND
    assert driver.calls["ListHosts"] == 1  # read once, reused


def test_the_worker_takes_pending_blobs_in_turn_when_rounds_are_bounded():
    supernodes = FakeSupernodes()
    supernodes.looks_per_round = 3
    settings = Settings(supernodes=supernodes.targets, check_window_seconds=0.0)
    registry = FakeRegistry(
        images={"reg.example.com/app:v1": [Blob(url=blob_url(n), digest=digest(n)) for n in range(7)]}
    )
    store, clock, queue = FakeTaskStore(), Clock(), FakeQueue()
    worker = Worker(store, queue, registry, supernodes, settings, clock=clock, sleep=lambda _: None)
    task = Task(
        "t-2",
        PreheatType.IMAGE,
        "reg.example.com/app:v1",
        TaskStatus.RUNNING,
        clock(),
        clock() + timedelta(hours=1),
    )
    store.create(task)
    worker.handle(WorkerMessage(task.task_id, Step.START))
    supernodes.looked.clear()

    for _ in range(3):
        current = store.tasks[task.task_id]
        worker.handle(
            WorkerMessage(task.task_id, Step.CHECK, seq=current.check_seq, chain=current.check_chain)
        )

    rounds = [supernodes.looked[i : i + 3] for i in range(0, 9, 3)]
    assert all(len(one) == 3 for one in rounds)
    assert {task_id for one in rounds for task_id, _ in one} == {f"id-{digest(n)}" for n in range(7)}


# -- the worker records peers, and names them at the deadline --------------------------------------


def test_the_worker_records_the_peers_and_the_deadline_names_the_missing_ones():
    supernodes = FakeSupernodes()
    settings = Settings(supernodes=supernodes.targets, check_window_seconds=0.0)
    registry = FakeRegistry(images={"reg.example.com/app:v1": [Blob(url=blob_url(1), digest=digest(1))]})
    store, clock, events = FakeTaskStore(), Clock(), FakeEvents()
    worker = Worker(
        store, FakeQueue(), registry, supernodes, settings, clock=clock, sleep=lambda _: None, events=events
    )
    targeting = Targeting(scope="all_peers")
    task = Task(
        "t-3",
        PreheatType.IMAGE,
        "reg.example.com/app:v1",
        TaskStatus.RUNNING,
        clock(),
        clock() + timedelta(minutes=1),
        targeting=targeting,
    )
    store.create(task)
    worker.handle(WorkerMessage(task.task_id, Step.START))
    holders = (PeerCopy("node-1", "10.0.1.1", True), PeerCopy("node-2", "10.0.1.2", False))
    waiting = f"{digest(1)[:19]} not finished on node-2 (10.0.1.2)"
    supernodes.finish(digest(1), BlobState.PENDING, waiting, holders)
    current = store.tasks[task.task_id]
    worker.handle(WorkerMessage(task.task_id, Step.CHECK, seq=current.check_seq, chain=current.check_chain))

    running = store.tasks[task.task_id]
    assert running.status is TaskStatus.RUNNING
    assert running.blobs[0].peers == holders
    assert running.to_api(detail=True)["blobs"][0]["peers"] == [
        {"hostname": "node-1", "ip": "10.0.1.1", "finished": True},
        {"hostname": "node-2", "ip": "10.0.1.2", "finished": False},
    ]
    assert supernodes.looked[-1][1] == targeting

    clock.advance(61)
    worker.handle(WorkerMessage(task.task_id, Step.CHECK, seq=running.check_seq, chain=running.check_chain))

    ended = store.tasks[task.task_id]
    assert ended.status is TaskStatus.FAIL
    assert waiting in (ended.message or "")
    assert events.finished[-1].task_id == task.task_id


def test_api_check_answers_503_naming_each_scheduler_not_serving(
    scheduler: RunningScheduler, monkeypatch: pytest.MonkeyPatch
):

    def check() -> dict[str, object]:
        bootstrap.reset_execution_environment()
        event = {"httpMethod": "GET", "path": "/api/check", "resource": "/api/check", "headers": {}}
        answer = build_resolver(check_routes()).resolve(event, LambdaContext())
        body: dict[str, object] = json.loads(answer["body"])
        return body

    monkeypatch.setenv("PREHEAT_SUPERNODE_API", "dragonfly2-scheduler")
    monkeypatch.setenv("PREHEAT_SUPERNODES", scheduler.address)
    monkeypatch.setenv("PREHEAT_CHECK_TIMEOUT", "1")
    try:
        assert check() == {"code": 200}
        scheduler.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        answer = check()
    finally:
        bootstrap.reset_execution_environment()

    assert answer["code"] == 503
    assert f"{scheduler.address}: health NOT_SERVING" in str(answer["msg"])


class _Recorded(Dragonfly2SchedulerDriver):
    """The driver, each StatFile stamped with the (fake) clock's time, to count calls per second."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        super().__init__(settings, sleep=lambda _: None)
        self.clock = clock
        self.stamps: list[float] = []
        self._start = clock()

    def _call(self, target: str, method: str, request: object, what: str, secrets: Sequence[str]) -> object:
        if method == "StatFile":
            self.stamps.append((self.clock() - self._start).total_seconds())
        return super()._call(target, method, request, what, secrets)


def test_scheduler_calls_per_second_of_a_watched_task_stay_within_the_bound(scheduler: RunningScheduler):
    """A 100-layer image whose blobs never finish, watched for a minute on a fake clock (each pause
    advances it) against the real gRPC double: a look round asks about LOOKS_PER_ROUND blobs, rounds
    come FIRST_RELOOK_SECONDS apart at the soonest (only while blobs keep finishing), so no second
    has more than LOOKS_PER_ROUND / FIRST_RELOOK_SECONDS calls; after the watch's quick first
    seconds, LOOKS_PER_ROUND every watch interval. The counts are printed for the README."""
    clock = Clock()

    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    settings = settings_for(scheduler.address, check_window_seconds=60.0)
    driver = _Recorded(settings, clock)
    registry = FakeRegistry(images={"reg.example.com/team/app:v1": [a_blob(n) for n in range(100)]})
    store = FakeTaskStore()
    worker = Worker(store, FakeQueue(), registry, driver, settings, clock=clock, sleep=sleep)
    task = Task(
        "t-9",
        PreheatType.IMAGE,
        "reg.example.com/team/app:v1",
        TaskStatus.RUNNING,
        clock(),
        clock() + timedelta(hours=1),
    )
    store.create(task)

    worker.handle(WorkerMessage(task.task_id, Step.START))

    watched = [stamp for stamp in driver.stamps if stamp > 0]  # the creates' own first looks excluded
    per_second = Counter(int(stamp) for stamp in watched)
    steady = [per_second[second] for second in range(int(QUICK_WATCH_SECONDS) + 2, 59)]
    first = [per_second[second] for second in range(int(QUICK_WATCH_SECONDS) + 2)]
    print(f"\nStatFile calls/s of a watched 100-layer task: {first} in its first seconds, then {max(steady)}")
    assert max(per_second.values()) <= LOOKS_PER_ROUND / FIRST_RELOOK_SECONDS
    assert max(steady) <= LOOKS_PER_ROUND / settings.watch_interval_seconds
    assert driver.calls["ListHosts"] <= 60 / HOSTS_REUSE_SECONDS + 1
    # Every pending blob is still looked at: taken in turn.
    assert len(watched) >= 100


def test_a_refused_manifest_preheat_fails_each_of_its_blobs_with_one_call(scheduler: RunningScheduler):
    scheduler.servicer.failures["PreheatImage"] = [
        (grpc.StatusCode.INVALID_ARGUMENT, f"failed to resolve manifests: 401 for {SECRET}")
    ]
    driver = driver_for(scheduler.address, dragonfly2_task_ids="blob-digest")

    for n in range(3):
        with pytest.raises(PermanentFailure, match="failed to resolve manifests: 401") as raised:
            driver.create(scheduler.address, a_blob(n))
        assert "s3cr3t" not in str(raised.value)

    assert driver.calls["PreheatImage"] == 1


@pytest.mark.parametrize(
    ("hosts", "targeting", "waiting"),
    [
        ([Host("node-1", "10.0.1.1", seed=False)], Targeting(), "the scheduler lists no seed peers"),
        (
            [Host("seed-1", "10.0.0.1", seed=True)],
            Targeting(scope="all_seed_peers", ips=("10.9.9.9",)),
            "the scheduler lists no seed peers with the IPs 10.9.9.9",
        ),
        (
            [Host("seed-1", "10.0.0.1", seed=True)],
            Targeting(scope="all_peers"),
            "the scheduler lists no peers",
        ),
    ],
)
def test_a_scope_no_listed_peer_can_meet_stays_pending_saying_so(
    hosts: list[Host], targeting: Targeting, waiting: str
):
    verdict = judge(
        digest(1),
        [PeerCopy("seed-1", "10.0.0.1", True)],
        hosts,
        targeting.scope or "single_seed_peer",
        targeting,
    )

    assert verdict.state is BlobState.PENDING
    assert verdict.waiting == f"{digest(1)[:19]} has no peer to wait for: {waiting}"


def test_count_and_percentage_name_how_many_finished_and_who_is_missing():
    hosts = [Host(f"node-{n}", f"10.0.1.{n}", seed=False) for n in range(1, 8)]
    holders = [PeerCopy("node-1", "10.0.1.1", True)]

    verdict = judge(digest(1), holders, hosts, "all_peers", Targeting(scope="all_peers", count=3))

    assert verdict.state is BlobState.PENDING
    assert verdict.waiting is not None
    assert verdict.waiting.startswith(
        f"{digest(1)[:19]} finished on 1 of the 3 peers it needs; not on node-2 (10.0.1.2)"
    )
    assert verdict.waiting.endswith("and 1 more")
    # A hostname that differs between ListHosts and a stat (FQDN or not) is matched by its IP.
    fqdn = [PeerCopy(f"node-{n}.cluster.local", f"10.0.1.{n}", True) for n in (1, 2, 3)]
    assert (
        judge(digest(1), fqdn, hosts, "all_peers", Targeting(scope="all_peers", count=3)).state
        is BlobState.SUCCESS
    )


class _TimedScheduler(SchedulerDouble):
    """A double whose peers finish each URL at a time of the test's fake clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(peers=list(PEERS))
        self.clock = clock
        self.finish_at: dict[str, datetime] = {}

    def StatFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        when = self.finish_at.get(request.url)
        if when is not None and self.clock() >= when:
            self.hold(request.url, "seed-1")
        return super().StatFile(request, context)


@pytest.mark.parametrize("finishes_in", [5, 40, 180])
def test_the_last_layer_of_a_20_layer_image_is_noticed_within_a_watch_interval_despite_the_bound(
    finishes_in: int,
):
    """On a fake clock (pauses advance it; a hand-over between steps costs 0.3 s), through the real
    driver and a real gRPC double: 20 layers finish together, more than a look round asks about, and
    the verdict still comes within one watch interval of the last one (the stragglers are few by
    then, and every look covers them)."""
    clock = Clock()
    servicer = _TimedScheduler(clock)
    with running_scheduler(servicer) as running:
        settings = settings_for(running.address, check_window_seconds=90.0)
        driver = Dragonfly2SchedulerDriver(settings, sleep=lambda _: None)
        queue, store = FakeQueue(), FakeTaskStore()
        registry = FakeRegistry(images={"reg.example.com/team/app:v1": [a_blob(n) for n in range(20)]})
        worker = Worker(store, queue, registry, driver, settings, clock=clock, sleep=clock.advance)
        task = Task(
            "t-n",
            PreheatType.IMAGE,
            "reg.example.com/team/app:v1",
            TaskStatus.RUNNING,
            clock(),
            clock() + timedelta(hours=1),
        )
        store.create(task)
        finished = clock() + timedelta(seconds=finishes_in)
        for n in range(20):
            servicer.finish_at[blob_url(n)] = finished

        worker.handle(WorkerMessage(task.task_id, Step.START))
        for _ in range(10):
            if not queue.sent:
                break
            clock.advance(0.3)
            worker.handle(queue.take()[0])

    ended = store.tasks[task.task_id]
    assert ended.status is TaskStatus.SUCCESS, ended.message
    assert ended.finished_at is not None
    notice = (ended.finished_at - finished).total_seconds()
    print(f"\nscheduler driver, 20 layers done at {finishes_in}s: verdict {notice:.2f}s later")
    assert 0 <= notice <= settings.watch_interval_seconds + 0.3
