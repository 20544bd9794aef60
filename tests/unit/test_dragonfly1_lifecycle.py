"""Verify and evict on Dragonfly 1 supernodes: the driver's task-API calls against the reference
supernode (local/supernode.py) and against scripted answers for what it never says."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from local.supernode import ReferenceSupernode
from preheat.models import BlobProgress, BlobState, Targeting
from preheat.ports import EVICTED
from tests.unit import test_dragonfly1_driver as d1
from tests.unit.test_dragonfly1_driver import Fake, blob, driver

# The scripted supernodes and the closed port of the driver's own tests.
fakes, fake, closed_port_url = d1.fakes, d1.fake, d1.closed_port_url

pytestmark = pytest.mark.timeout(20)


def warm_blob(node: ReferenceSupernode, origin: Fake, data: bytes) -> BlobProgress:
    """A blob preheated on ``node`` through the driver, waited for until SUCCESS."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    origin.routes[("GET", f"/v2/app/blobs/{digest}")] = [(200, data)]
    subject = driver(node.url)
    created = subject.create(node.url, blob(f"{origin.url}/v2/app/blobs/{digest}", digest=digest))
    state = created
    deadline = time.monotonic() + 5
    while state.state is BlobState.PENDING:
        assert time.monotonic() < deadline, "the preheat did not finish"
        time.sleep(0.01)
        state = subject.status(node.url, created.task_id)
    assert state.state is BlobState.SUCCESS
    return BlobProgress(
        label=digest,
        target=node.url,
        state=BlobState.SUCCESS,
        digest=digest,
        supernode_task_id=created.task_id,
    )


def test_verify_then_evict_then_verify_shows_it_gone_and_a_preheat_warms_again(
    tmp_path: Path, closed_port_url: str
) -> None:
    origin = Fake({})
    try:
        with ReferenceSupernode(tmp_path / "a") as node_a, ReferenceSupernode(tmp_path / "b") as node_b:
            on_a = warm_blob(node_a, origin, b"layer" * 1000)
            # The same blob recorded on a supernode that never got it, and on one that is down.
            on_b = BlobProgress(**{**on_a.__dict__, "target": node_b.url})
            on_down = BlobProgress(**{**on_a.__dict__, "target": closed_port_url})
            subject = driver(node_a.url, node_b.url, closed_port_url, timeout=0.5)

            seen = subject.holders([on_a, on_b, on_down], Targeting())

            host_a = node_a.url.removeprefix("http://")
            assert seen[0].warm is True
            assert [(p.host, p.finished) for p in seen[0].peers] == [(host_a, True)]
            assert seen[0].unreachable is None
            # "data not found" (HTTP 500): not there, known.
            assert seen[1].warm is False
            assert seen[1].peers == ()
            assert seen[1].unreachable is None
            # No answer: unknown, named, never "gone".
            assert seen[2].warm is None
            assert seen[2].unreachable == closed_port_url
            assert [p.finished for p in seen[2].peers] == [None]

            outcomes = subject.evict([on_a, on_b])

            assert outcomes == [EVICTED, EVICTED]  # a DELETE of a task it lacks answers 200 too
            after = subject.holders([on_a], Targeting())
            assert after[0].warm is False
            assert after[0].peers == ()
            assert node_a.cached_digests() == set()
            # The preheat record went too, so a preheat downloads it again (not a 208).
            again = warm_blob(node_a, origin, b"layer" * 1000)
            assert subject.holders([again], Targeting())[0].warm is True
    finally:
        origin.close()


def test_the_reference_supernode_keeps_the_preheat_record_after_a_task_delete(tmp_path: Path) -> None:
    origin = Fake({})
    try:
        with ReferenceSupernode(tmp_path) as node:
            warm = warm_blob(node, origin, b"x" * 5000)
            task_id = warm.supernode_task_id
            base = f"{node.url}/api/v1/tasks/{task_id}"

            assert requests.get(base, timeout=5).json()["cdnStatus"] == "SUCCESS"
            assert requests.get(f"{node.url}/tasks/{task_id}", timeout=5).status_code == 404  # no bare route
            assert requests.delete(base, timeout=5).status_code == 200
            assert requests.delete(f"{node.url}/api/v1/tasks/{'f' * 64}", timeout=5).status_code == 200
            gone = requests.get(base, timeout=5)
            assert gone.status_code == 500
            assert "data not found" in gone.json()["message"]
            repeat = requests.post(
                f"{node.url}/preheats",
                json={"type": "file", "url": node.tasks()[str(task_id)].url},
                timeout=5,
            )
            assert repeat.status_code == 208  # nothing downloaded until the record goes
            assert node.cached_digests() == set()
    finally:
        origin.close()


@pytest.mark.parametrize(
    ("answers", "expected_error"),
    [
        ([(500, {"code": 500, "message": "internal: etcd down"})], "etcd down"),
        ([(404, {"code": 404, "message": "no route"})], "HTTP 404"),
        ([(200, b"not json")], "HTTP 200"),
    ],
)
def test_any_other_failure_is_unknown_never_gone(fake: Any, answers: list[Any], expected_error: str) -> None:
    scripted = fake({("GET", f"/api/v1/tasks/{'a' * 64}"): answers})
    recorded = BlobProgress(label="sha256:aa", target=scripted.url, supernode_task_id="a" * 64)

    [seen] = driver(scripted.url).holders([recorded], Targeting())

    assert seen.warm is None
    assert [p.finished for p in seen.peers] == [None]
    assert seen.error is not None
    assert expected_error in seen.error
