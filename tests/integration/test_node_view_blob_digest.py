"""The node's-eye view, Dragonfly 2, on a cluster whose dfdaemons set enableTaskIDBasedBlobDigest
(``PREHEAT_DRAGONFLY2_TASK_IDS=blob-digest``): after a preheat reaches SUCCESS, does the fake
manager's seed peer hold, as SUCCESS and with the blob's content, the task such a node asks for,
the blob's digest hex? (A module of its own: one local stack per process at a time.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack
from tests.support.local_stack import dragonfly2_stack
from tests.support.node_view import CLUSTER, REPOSITORY, TOKEN, blob_urls, preheat, sha256_of
from tests.support.registry import OciImage

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDragonfly2Manager]:
    # Job states shown as they are: where the blobs land is checked here, not when.
    with FakeDragonfly2Manager(
        tmp_path_factory.mktemp("manager"), TOKEN, clusters={CLUSTER: "cluster-1"}, answer_at_once=True
    ) as running:
        yield running


@pytest.fixture(scope="module")
def dragonfly2_blob_digest(
    manager: FakeDragonfly2Manager, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The stack of a cluster whose dfdaemons set enableTaskIDBasedBlobDigest."""
    with dragonfly2_stack(
        manager,
        TOKEN,
        tmp_path_factory.mktemp("unused-digest"),
        parameters={"Dragonfly2Clusters": str(CLUSTER)},
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1", "PREHEAT_DRAGONFLY2_TASK_IDS": "blob-digest"},
    ) as running:
        yield running


def test_under_blob_digest_ids_a_node_pull_hits_every_blob_by_its_digest(
    dragonfly2_blob_digest: LocalStack,
    manager: FakeDragonfly2Manager,
    node_view_registries: dict[str, Any],
    node_view_image: OciImage,
) -> None:
    # Such a node's id for /v2/<name>/blobs/sha256:<hex> is <hex>, whatever the registry or name.
    registry, header = node_view_registries["filesystem"]
    data = preheat(
        dragonfly2_blob_digest, {"type": "image", "url": registry.image(f"{REPOSITORY}:v1"), "header": header}
    )

    assert data["status"] == "SUCCESS", data
    tasks = manager.tasks()
    for digest in blob_urls(registry, node_view_image):
        task = tasks.get(digest.removeprefix("sha256:"))
        assert task is not None, f"no task a node would ask for by the digest {digest}"
        assert task.status == "SUCCESS"
        assert task.cache_path is not None
        assert sha256_of(task.cache_path) == digest
    shown = {blob["digest"]: blob["nodeTaskId"] for blob in data["blobs"]}
    expected = {digest: digest.removeprefix("sha256:") for digest in blob_urls(registry, node_view_image)}
    assert shown == expected
