"""The fake Dragonfly 2 manager itself (local/dragonfly2_manager.py): a job's state is what the
manager's poller last wrote, on manager/service/job.go's schedule; what arrived is recorded as it
arrived; tasks are keyed by the id a node computes, in both task id modes.

The schedule is driven by an injected clock (its own tests only) and ``run_due_refreshes``; the
downloads are held by an origin that answers only once the test lets it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager, refresh_offsets
from preheat.task_ids import dragonfly2_task_id
from tests.support.http_server import QuietHandler, serve

TOKEN = "df2-fake-manager-token"
PAYLOAD = b"layer bytes\n" * 64
DIGEST_HEX = hashlib.sha256(PAYLOAD).hexdigest()


class Clock:
    """Seconds, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Origin:
    """Serves PAYLOAD at any path, each answer held until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.url = ""


@pytest.fixture
def origin() -> Iterator[Origin]:
    held = Origin()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            held.release.wait(30)
            self.answer(PAYLOAD)

    with serve(Handler) as server:
        held.url = server.url
        yield held
        held.release.set()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(tmp_path: Path, clock: Clock) -> Iterator[FakeDragonfly2Manager]:
    with FakeDragonfly2Manager(tmp_path / "cache", TOKEN, clock=clock) as running:
        yield running


def create(manager: FakeDragonfly2Manager, url: str, **args: Any) -> int:
    status, answer = manager.create({"type": "preheat", "args": {"type": "file", "url": url, **args}})
    assert status == 200, answer
    job_id: int = answer["id"]
    return job_id


def state(manager: FakeDragonfly2Manager, job_id: int) -> str:
    job = manager.job(job_id)
    assert job is not None
    return str(job["state"])


def downloaded(manager: FakeDragonfly2Manager) -> bool:
    """Wait (30 s at most) until the seed peer holds the payload."""
    for _ in range(600):
        if f"sha256:{DIGEST_HEX}" in manager.cached_digests():
            return True
        time.sleep(0.05)
    return False


def test_the_schedule_is_the_managers_pollingjob() -> None:
    # pollingJob(ctx, ..., 30*time.Second, 300*time.Second, 16): 0, 30, 90, 210, 450, 750, then +300.
    offsets = refresh_offsets()
    assert offsets[:7] == (0.0, 30.0, 90.0, 210.0, 450.0, 750.0, 1050.0)
    assert len(offsets) == 16
    assert offsets[-1] == 750.0 + 300.0 * 10


def test_a_job_reads_pending_until_the_refresh_after_its_download(
    manager: FakeDragonfly2Manager, clock: Clock, origin: Origin
) -> None:
    job_id = create(manager, f"{origin.url}/blob")
    # The create answers PENDING with no result; the poller's first try, right after, sees the
    # download still held.
    manager.run_due_refreshes()
    assert manager.refreshes == 1
    assert state(manager, job_id) == "PENDING"

    origin.release.set()
    assert downloaded(manager)
    # The blob is warm, yet GET shows what the last refresh saw.
    assert state(manager, job_id) == "PENDING"
    clock.now += 29.9
    manager.run_due_refreshes()
    assert manager.refreshes == 1
    assert state(manager, job_id) == "PENDING"

    clock.now += 0.1  # 30 s after the create
    manager.run_due_refreshes()
    assert manager.refreshes == 2
    assert state(manager, job_id) == "SUCCESS"
    # A finished job is not polled again.
    clock.now += 3600
    manager.run_due_refreshes()
    assert manager.refreshes == 2


def test_a_download_done_after_40_s_reads_success_at_90_s(
    manager: FakeDragonfly2Manager, clock: Clock, origin: Origin
) -> None:
    job_id = create(manager, f"{origin.url}/blob")
    manager.run_due_refreshes()
    clock.now += 30
    manager.run_due_refreshes()
    assert (manager.refreshes, state(manager, job_id)) == (2, "PENDING")

    origin.release.set()  # done at about 40 s
    assert downloaded(manager)
    clock.now += 59.9
    manager.run_due_refreshes()
    assert (manager.refreshes, state(manager, job_id)) == (2, "PENDING")
    clock.now += 0.1
    manager.run_due_refreshes()
    assert (manager.refreshes, state(manager, job_id)) == (3, "SUCCESS")


def test_a_job_unfinished_after_the_16th_try_is_failure(
    manager: FakeDragonfly2Manager, clock: Clock, origin: Origin
) -> None:
    job_id = create(manager, f"{origin.url}/blob")
    clock.now += refresh_offsets()[-1] - 1
    manager.run_due_refreshes()
    assert (manager.refreshes, state(manager, job_id)) == (15, "PENDING")
    clock.now += 1
    manager.run_due_refreshes()
    assert (manager.refreshes, state(manager, job_id)) == (16, "FAILURE")


def test_answer_at_once_shows_the_state_as_it_is(tmp_path: Path, clock: Clock, origin: Origin) -> None:
    with FakeDragonfly2Manager(tmp_path / "cache", TOKEN, clock=clock, answer_at_once=True) as manager:
        job_id = create(manager, f"{origin.url}/blob")
        assert state(manager, job_id) in ("PENDING", "STARTED")
        origin.release.set()
        assert downloaded(manager)
        assert state(manager, job_id) == "SUCCESS"
        assert manager.refreshes == 0


def test_requests_are_recorded_as_they_arrived(manager: FakeDragonfly2Manager, origin: Origin) -> None:
    origin.release.set()
    body = {"type": "preheat", "args": {"type": "file", "url": f"{origin.url}/b", "headers": {"X-K": "v"}}}
    manager.record("POST", "/oapi/v1/jobs", f"Bearer {TOKEN}", body)
    # Nothing redacted: a test asserting that no credential reached the manager can fail.
    assert manager.requests_seen == [
        {"method": "POST", "path": "/oapi/v1/jobs", "authorization": f"Bearer {TOKEN}", "body": body}
    ]


def test_tasks_are_keyed_by_the_id_a_node_computes_in_either_mode(
    manager: FakeDragonfly2Manager, origin: Origin
) -> None:
    origin.release.set()
    by_url = f"{origin.url}/v2/team/app/blobs/sha256:{DIGEST_HEX}?X-Amz-Signature=s&keep=1"
    by_digest = f"{origin.url}/v2/other/blobs/sha256:{DIGEST_HEX}"
    create(manager, by_url, tag="t")
    create(manager, by_digest, enable_task_id_based_blob_digest=True)
    assert downloaded(manager)

    tasks = manager.tasks()
    assert dragonfly2_task_id(by_url, ("X-Amz-Signature",), "t") in tasks
    assert DIGEST_HEX in tasks


def test_a_blob_url_whose_digest_a_node_refuses_fails_under_blob_digest(
    tmp_path: Path, origin: Origin
) -> None:
    with FakeDragonfly2Manager(tmp_path / "cache", TOKEN, answer_at_once=True) as manager:
        job_id = create(
            manager,
            f"{origin.url}/v2/app/blobs/md5:8a04994a666b4e4b20a2fd9e5a44f44c",
            scope="all_seed_peers",
            enable_task_id_based_blob_digest=True,
        )
        job = manager.job(job_id)
        assert job is not None
        assert job["state"] == "FAILURE"
        assert "refuses the blob URL's digest" in job["result"]["job_states"][0]["error"]
        assert manager.tasks() == {}


def test_a_flag_that_is_not_a_boolean_is_refused(manager: FakeDragonfly2Manager, origin: Origin) -> None:
    status, answer = manager.create(
        {
            "type": "preheat",
            "args": {"type": "file", "url": origin.url, "enable_task_id_based_blob_digest": "yes"},
        }
    )
    assert status == 422
    assert "enable_task_id_based_blob_digest" in answer["errors"]


def test_a_time_scale_shrinks_the_schedule_for_this_fakes_own_tests(
    tmp_path: Path, clock: Clock, origin: Origin
) -> None:
    origin.release.set()
    with FakeDragonfly2Manager(tmp_path / "cache", TOKEN, clock=clock, time_scale=0.5) as manager:
        job_id = create(manager, f"{origin.url}/blob")
        manager.run_due_refreshes()
        assert downloaded(manager)
        clock.now += 14.9
        manager.run_due_refreshes()
        assert (manager.refreshes, state(manager, job_id)) == (1, "PENDING")
        clock.now += 0.1  # the 30 s refresh, halved
        manager.run_due_refreshes()
        assert (manager.refreshes, state(manager, job_id)) == (2, "SUCCESS")
