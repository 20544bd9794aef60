"""Dragonfly 2 at scale: one job per task with ``args.urls`` (``PREHEAT_DRAGONFLY2_JOB_URLS=batch``,
the default), each URL warm only with a success task on every cluster; one job per URL for older
managers (``single``); and the manager's job rate limit (429 ``rate limit exceeded``) waited out with
backoff, never a failed blob. Against the fake manager with its rate limit on."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from local import dragonfly2_manager
from local.dragonfly2_manager import FakeDragonfly2Manager
from preheat.adapters.dragonfly2 import MAX_CACHED_JOBS, Dragonfly2Driver
from preheat.errors import RateLimited
from preheat.models import Blob, BlobState, Credentials, PreheatRequest
from preheat.ports import SupernodeTask
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.dragonfly2 import manager_starter
from tests.support.fakes import FakeQueue, FakeRegistry, FakeTaskStore
from tests.support.origin import Origin
from tests.unit.test_dragonfly2_driver import TOKEN, Sleeps

BLOBS = {
    f"/v2/app/blobs/sha256:{hashlib.sha256(f'b{n}'.encode()).hexdigest()}": f"b{n}".encode()
    for n in range(30)
}


@pytest.fixture
def origin() -> Iterator[Origin]:
    with closing(Origin(BLOBS)) as server:
        yield server


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator[Callable[..., FakeDragonfly2Manager]]:
    with manager_starter(tmp_path, TOKEN, clusters={1: "east", 2: "west"}, answer_at_once=True) as start:
        yield start


def driver(target: str, sleep: Callable[[float], None], **settings: Any) -> Dragonfly2Driver:
    config = Settings(
        supernodes=(target,),
        supernode_api="dragonfly2",
        dragonfly2_token=TOKEN,
        dragonfly2_clusters=(1, 2),
        **settings,
    )
    return Dragonfly2Driver(config, backoff_seconds=0.01, sleep=sleep)


def blobs(origin: Origin) -> list[Blob]:
    return [
        Blob(
            url=origin.url(path),
            digest=path.rsplit("/", 1)[1],
            headers=Credentials({"Authorization": "Bearer x"}),
        )
        for path in BLOBS
    ]


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def settle(
    subject: Dragonfly2Driver,
    target: str,
    tasks: list[SupernodeTask],
    tick: Callable[[float], None] | None = None,
) -> list[SupernodeTask]:
    """The tasks once none is PENDING (``tick`` moves a manual clock between reads)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tasks = [subject.status(target, t.task_id) if t.state is BlobState.PENDING else t for t in tasks]
        if all(t.state is not BlobState.PENDING for t in tasks):
            return tasks
        if tick is not None:
            tick(0.05)
        time.sleep(0.02)
    raise AssertionError("jobs stayed PENDING")


def test_one_job_carries_every_url_and_each_is_read_from_its_result(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager()
    subject = driver(manager.url, Sleeps())
    items = blobs(origin)

    tasks = settle(subject, manager.url, subject.create_batch(manager.url, items))

    assert [t.state for t in tasks] == [BlobState.SUCCESS] * len(items)
    assert [t.task_id for t in tasks] == [f"1#{n}" for n in range(len(items))]
    creates = [r for r in manager.requests_seen if r["method"] == "POST"]
    assert len(creates) == 1
    assert creates[0]["body"]["args"]["urls"] == [blob.url for blob in items]
    assert manager.admitted == 1
    assert manager.rate_limited == 0
    # Every URL is read from one job: far fewer status reads than URLs.
    reads = [r for r in manager.requests_seen if r["method"] == "GET"]
    assert len(reads) < len(items)


def test_a_url_missing_from_a_cluster_result_is_not_warm_though_the_others_are(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    items = blobs(origin)[:3]
    manager = start_manager(drop_urls=[items[1].url])
    subject = driver(manager.url, Sleeps())

    tasks = settle(subject, manager.url, subject.create_batch(manager.url, items))

    assert [t.state for t in tasks] == [BlobState.SUCCESS, BlobState.FAILED, BlobState.SUCCESS]
    assert "lists no seed peer that downloaded the file" in (tasks[1].error or "")


def test_a_manager_that_does_not_list_urls_is_named_as_too_old(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager()
    subject = driver(manager.url, Sleeps())
    subject.create_batch(manager.url, blobs(origin)[:2])
    job = manager.job(1)
    assert job is not None
    del manager._jobs[1].request.args["urls"]  # as a manager before v2.2.3 would store it

    answer = subject.status(manager.url, "1#1")

    assert answer.state is BlobState.FAILED
    assert "PREHEAT_DRAGONFLY2_JOB_URLS=single" in (answer.error or "")


def test_single_jobs_through_the_rate_limit_are_waited_out_not_failed(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager's token buckets run on a clock that only the driver's waits move: 30 creates
    # against bursts of 10 meet the limit whatever the machine's load, and every wait refills it.
    clock = ManualClock()
    monkeypatch.setattr(dragonfly2_manager, "monotonic", clock)
    manager = start_manager(job_rate_limit=10)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    subject = driver(manager.url, wait, dragonfly2_job_urls="single")
    items = blobs(origin)

    tasks = settle(subject, manager.url, subject.create_batch(manager.url, items), tick=clock.advance)

    assert [t.state for t in tasks] == [BlobState.SUCCESS] * len(items)
    assert manager.admitted == len(items)
    # 30 creates against 10 a second in bursts of 10, with no time passing but the waits: at least
    # the 11th was refused, and every refusal was waited out.
    assert manager.rate_limited > 0
    assert subject.rate_limited == manager.rate_limited
    assert len(waits) >= manager.rate_limited
    assert all(0 <= w <= 8 for w in waits)


def test_a_rate_limit_that_outlasts_the_patience_retries_the_step(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager()
    manager.inject_errors("POST", 50, status=429)
    config = Settings(supernodes=(manager.url,), supernode_api="dragonfly2", dragonfly2_token=TOKEN)
    subject = Dragonfly2Driver(config, sleep=lambda seconds: None, rate_limit_patience=5.0)

    with pytest.raises(RateLimited, match="kept answering 429"):
        subject.create(manager.url, blobs(origin)[0])


def test_blobs_needing_other_headers_go_in_a_job_of_their_own(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager()
    subject = driver(manager.url, Sleeps())
    items = blobs(origin)[:4]
    # A foreign layer is downloaded from elsewhere, without the registry's credentials.
    items[2] = Blob(url=items[2].url, digest=items[2].digest)

    tasks = settle(subject, manager.url, subject.create_batch(manager.url, items))

    assert [t.state for t in tasks] == [BlobState.SUCCESS] * 4
    creates = [r["body"]["args"] for r in manager.requests_seen if r["method"] == "POST"]
    assert len(creates) == 2
    assert creates[0]["urls"] == [items[0].url, items[1].url, items[3].url]
    assert creates[0]["headers"] == {"Authorization": "Bearer x"}
    assert creates[1]["url"] == items[2].url
    assert "headers" not in creates[1]


def test_a_warm_driver_keeps_no_more_job_answers_than_it_reuses(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager(job_rate_limit=None)
    subject = driver(manager.url, Sleeps())
    for _ in range(80):
        subject.create_batch(manager.url, blobs(origin)[:2])

    for job in range(1, 81):
        assert subject.status(manager.url, f"{job}#0").task_id == f"{job}#0"

    assert len(subject._answers) == MAX_CACHED_JOBS


def test_a_retried_start_does_not_create_again_the_jobs_it_created(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    # Issue 22 item 10: one job per URL under the manager's rate limit. The first try of the start
    # step gets a burst of creates through, then a 429 it will not wait out (no patience here): the
    # step is retried, and its retry must create only the blobs the first one did not.
    manager = start_manager(job_rate_limit=10)
    settings = Settings(
        supernodes=(manager.url,),
        supernode_api="dragonfly2",
        dragonfly2_token=TOKEN,
        dragonfly2_clusters=(1, 2),
        dragonfly2_job_urls="single",
    )
    items = blobs(origin)
    subject = Dragonfly2Driver(settings, backoff_seconds=0.01, sleep=lambda _: None, rate_limit_patience=0)
    store, queue = FakeTaskStore(), FakeQueue()
    registry = FakeRegistry(images={"registry.test/app:v1": items})
    worker = Worker(store, queue, registry, subject, settings)
    PreheatService(store, queue, settings).submit(
        PreheatRequest.parse({"type": "image", "url": "registry.test/app:v1"})
    )
    (start,) = queue.take()

    with pytest.raises(RateLimited):
        worker.handle(start)
    first_try = manager.admitted
    assert 0 < first_try < len(items)
    recorded = store.tasks[start.task_id].blobs

    manager.job_rate_limit = None  # the bucket refilled meanwhile
    task = worker.handle(start)

    assert task is not None
    creates = [r for r in manager.requests_seen if r["method"] == "POST"]
    # Every blob created exactly once (the 429s created nothing), not once per try.
    assert len(creates) - manager.rate_limited == len(items)
    # The first try recorded the jobs it created, for the retry to find.
    assert len(recorded) == first_try
    assert all(blob.supernode_task_id for blob in recorded)
    created_urls = [r["body"]["args"]["url"] for r in creates]
    assert sorted(set(created_urls)) == sorted(blob.url for blob in items)
    assert {blob.label for blob in task.blobs if blob.supernode_task_id} == {blob.label for blob in items}
