"""Verify and evict through the local stack's API on each target: a file preheated by the worker,
then GET /api/preheat/{taskId}/peers, DELETE /api/preheat/{taskId}, and a verify showing the blob
gone; an unreachable supernode named, never "gone"; the scheduler's evict refused (501) with the
task left as it was, and a blob deleted behind the service's back read as gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import SCHEDULER_TARGET, LocalStack
from local.supernode import ReferenceSupernode
from tests.support.http_server import QuietHandler, serve
from tests.support.local_stack import dragonfly2_stack, preheated

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

TOKEN = "pat-lifecycle-0123456789abcdef"


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    class Files(QuietHandler):
        def do_GET(self) -> None:
            self.answer(self.path.encode() * 1000)

    with serve(Files) as server:
        yield server.url


def peers(stack: LocalStack, task_id: str) -> dict[str, Any]:
    answer = requests.get(f"{stack.api_url}/api/preheat/{task_id}/peers", timeout=30).json()
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def evict(stack: LocalStack, task_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = requests.delete(f"{stack.api_url}/api/preheat/{task_id}", timeout=30).json()
    return answer


def status(stack: LocalStack, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()["data"]
    return data


def test_dragonfly1_verify_evict_verify_then_an_unreachable_supernode_is_unknown(
    tmp_path: Path, files: str
) -> None:
    with (
        ReferenceSupernode(tmp_path / "cache").start() as supernode,
        LocalStack(supernodes=[supernode.url], cache_dir=tmp_path / "unused") as stack,
    ):
        done = preheated(stack, {"type": "file", "url": f"{files}/df1.bin"})
        assert done["status"] == "SUCCESS", done
        task_id = done["taskId"]

        warm = peers(stack, task_id)
        evicted = evict(stack, task_id)
        gone = peers(stack, task_id)
        again = preheated(stack, {"type": "file", "url": f"{files}/df1.bin"})

        host = supernode.url.removeprefix("http://")
        assert warm["summary"] == {"layersWarm": 1, "layersTotal": 1, "peersWithEveryLayer": [host]}
        assert warm["blobs"][0]["peers"] == [{"host": host, "ip": "127.0.0.1", "finished": True}]
        assert evicted["code"] == 200
        assert [e["outcome"] for e in evicted["data"]["evictions"]] == ["evicted"]
        assert status(stack, task_id)["evictedAt"] == evicted["data"]["evictedAt"]
        assert gone["summary"]["layersWarm"] == 0
        assert gone["blobs"][0]["peers"] == []
        assert gone["blobs"][0]["warm"] is False
        # The preheat record went too: the same URL warms again (not a 208 that downloads nothing).
        assert again["status"] == "SUCCESS"
        assert peers(stack, again["taskId"])["summary"]["layersWarm"] == 1

        url = supernode.url
        supernode.stop()
        unknown = peers(stack, again["taskId"])
        assert unknown["unreachable"] == [url], unknown
        assert unknown["blobs"][0]["warm"] is None
        assert unknown["blobs"][0]["peers"][0]["finished"] is None
        assert unknown["summary"]["layersWarm"] == 0


def test_scheduler_verify_reads_the_peers_evict_is_refused_and_a_delete_behind_the_back_reads_gone(
    tmp_path: Path, files: str
) -> None:
    with LocalStack(cache_dir=tmp_path / "unused", target=SCHEDULER_TARGET) as stack:
        reference = stack.reference_scheduler
        assert reference is not None
        done = preheated(stack, {"type": "file", "url": f"{files}/df2s.bin", "scope": "all_seed_peers"})
        assert done["status"] == "SUCCESS", done
        task_id = done["taskId"]

        warm = peers(stack, task_id)
        refused = evict(stack, task_id)
        reference.evict(warm["blobs"][0]["nodeTaskId"])
        gone = peers(stack, task_id)

        seeds = sorted(host.hostname for host in reference.hosts if host.is_seed)
        assert warm["summary"] == {"layersWarm": 1, "layersTotal": 1, "peersWithEveryLayer": seeds}
        assert refused["code"] == 501
        assert "Dragonfly 2 manager" in refused["msg"]
        assert "evictedAt" not in status(stack, task_id)
        assert gone["summary"]["layersWarm"] == 0
        assert gone["blobs"][0]["peers"] == []


def test_manager_verify_evict_verify(tmp_path: Path, files: str) -> None:
    # Job states shown as they are (answer_at_once); the pending answer on the manager's real
    # schedule has its own test (tests/unit/test_dragonfly2_lifecycle.py) and benchmark.
    with (
        FakeDragonfly2Manager(tmp_path / "manager", TOKEN, answer_at_once=True) as manager,
        dragonfly2_stack(manager, TOKEN, tmp_path / "unused") as stack,
    ):
        done = preheated(stack, {"type": "file", "url": f"{files}/df2.bin"})
        assert done["status"] == "SUCCESS", done
        task_id = done["taskId"]

        warm = peers(stack, task_id)
        evicted = evict(stack, task_id)
        gone = peers(stack, task_id)

        assert warm["pending"] is False
        assert warm["summary"]["layersWarm"] == 1
        assert warm["blobs"][0]["peers"] == [{"host": "seed-peer-1", "ip": "127.0.0.1", "finished": True}]
        assert [e["outcome"] for e in evicted["data"]["evictions"]] == ["evicted"]
        assert manager.cached_digests() == set()
        assert gone["summary"]["layersWarm"] == 0
        assert gone["blobs"][0]["peers"] == []
