"""Verify and evict through a Dragonfly 2 manager (get_task and delete_task jobs) against the fake
manager (local/dragonfly2_manager.py): pending until the manager's refresh writes the job, the job
reused by repeated verifies, a delete that a later verify shows, an unreachable manager named."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from preheat.adapters.dragonfly2 import Dragonfly2Driver
from preheat.models import BlobProgress, BlobState, Targeting
from preheat.ports import EVICTED
from tests.support.origin import Origin
from tests.unit.test_dragonfly2_driver import DATA, DIGEST, TOKEN, blob, driver, settle
from tests.unit.test_fake_dragonfly2_manager import Clock

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with closing(Origin({f"/v2/app/blobs/{DIGEST}": DATA})) as server:
        yield server


def preheated(subject: Dragonfly2Driver, manager: FakeDragonfly2Manager, origin: Origin) -> BlobProgress:
    """The blob preheated through ``subject`` and recorded as the worker records it."""
    sent = blob(origin.url(f"/v2/app/blobs/{DIGEST}"))
    created = subject.create(manager.url, sent)
    done = settle(subject, manager.url, subject.status(manager.url, created.task_id))
    assert done.state is BlobState.SUCCESS
    return BlobProgress(
        label=DIGEST,
        target=manager.url,
        state=BlobState.SUCCESS,
        digest=DIGEST,
        supernode_task_id=created.task_id,
        node_task_id=subject.node_task_id(sent),
    )


def jobs_of(manager: FakeDragonfly2Manager, job_type: str) -> list[dict[str, Any]]:
    return [
        seen["body"]
        for seen in manager.requests_seen
        if seen["method"] == "POST"
        and isinstance(seen["body"], dict)
        and seen["body"].get("type") == job_type
    ]


def test_verify_evict_verify_and_a_preheat_warms_again(tmp_path: Path, origin: Origin) -> None:
    with FakeDragonfly2Manager(tmp_path, TOKEN, answer_at_once=True) as manager:
        subject = driver(manager.url)
        recorded = preheated(subject, manager, origin)

        [seen] = subject.holders([recorded], Targeting())
        [again] = subject.holders([recorded], Targeting())

        assert seen.warm is True
        assert [(p.host, p.ip, p.finished) for p in seen.peers] == [("seed-peer-1", "127.0.0.1", True)]
        assert again == seen
        # One get_task job, by the node task id, reused by the second verify.
        assert [body["args"] for body in jobs_of(manager, "get_task")] == [{"task_id": recorded.node_task_id}]

        assert subject.evict([recorded]) == [EVICTED]
        assert jobs_of(manager, "delete_task")[0]["args"] == {"task_id": recorded.node_task_id}
        assert manager.cached_digests() == set()
        [after] = subject.holders([recorded], Targeting())
        assert after.warm is False
        assert after.peers == ()
        assert len(jobs_of(manager, "get_task")) == 2  # the evict dropped the answer read before it

        preheated(subject, manager, origin)
        assert manager.cached_digests() == {DIGEST}


def test_verify_is_pending_until_the_managers_refresh_writes_the_job(tmp_path: Path, origin: Origin) -> None:
    clock = Clock()
    with FakeDragonfly2Manager(tmp_path, TOKEN, clock=clock) as manager:
        subject = driver(manager.url)
        # Preheated with the state shown live, then verified on the manager's real schedule.
        manager.answer_at_once = True
        recorded = preheated(subject, manager, origin)
        manager.answer_at_once = False

        [first] = subject.holders([recorded], Targeting())
        manager.run_due_refreshes()  # the try right after the create: still PENDING
        [second] = subject.holders([recorded], Targeting())
        clock.now += 30
        manager.run_due_refreshes()  # 30 s later: the answer
        [third] = subject.holders([recorded], Targeting())

        assert first.pending
        assert first.warm is None
        assert second.pending
        assert third.pending is False
        assert third.warm is True
        assert len(jobs_of(manager, "get_task")) == 1  # one job, read three times


def test_an_unreachable_manager_is_named_and_nothing_reads_as_gone(closed_port_url: str) -> None:
    recorded = BlobProgress(label=DIGEST, target=closed_port_url, digest=DIGEST, node_task_id="a" * 64)

    [seen] = driver(closed_port_url, timeout=0.5).holders([recorded], Targeting())
    outcome = driver(closed_port_url, timeout=0.5).evict([recorded])

    assert seen.unreachable == closed_port_url
    assert seen.warm is None
    assert outcome != [EVICTED]
    assert closed_port_url.removeprefix("http://") in outcome[0]


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"
