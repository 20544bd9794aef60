"""The node's-eye view, Dragonfly 2, for nodes that set a task tag, an application and a piece
length, and a service told so (``PREHEAT_DRAGONFLY2_TAG``, ``PREHEAT_DRAGONFLY2_APPLICATION``,
``PREHEAT_DRAGONFLY2_PIECE_LENGTH``): after a preheat reaches SUCCESS, does the fake manager's seed
peer hold the task such a node computes for each blob? A module of its own: one LocalStack runs at
a time in a process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack
from tests.support.local_stack import dragonfly2_stack
from tests.support.node_view import (
    CLUSTER,
    REPOSITORY,
    TOKEN,
    blob_urls,
    dragonfly2_task_id,
    preheat,
    sha256_of,
)
from tests.support.registry import OciImage

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

TAG = "node-view-tag"
APPLICATION = "node-view-app"
PIECE_LENGTH = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDragonfly2Manager]:
    with FakeDragonfly2Manager(
        tmp_path_factory.mktemp("manager"), TOKEN, clusters={CLUSTER: "cluster-1"}, max_concurrent_downloads=8
    ) as running:
        yield running


@pytest.fixture(scope="module")
def dragonfly2(
    manager: FakeDragonfly2Manager, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    with dragonfly2_stack(
        manager,
        TOKEN,
        tmp_path_factory.mktemp("unused"),
        parameters={"Dragonfly2Clusters": str(CLUSTER)},
        extra_env={
            "PREHEAT_POLL_MAX_DELAY": "1",
            "PREHEAT_DRAGONFLY2_TAG": TAG,
            "PREHEAT_DRAGONFLY2_APPLICATION": APPLICATION,
            "PREHEAT_DRAGONFLY2_PIECE_LENGTH": str(PIECE_LENGTH),
        },
    ) as running:
        yield running


@pytest.mark.parametrize("kind", ["htpasswd", "token-s3"])
def test_with_a_tag_an_application_and_a_piece_length_a_node_pull_hits_every_blob(
    dragonfly2: LocalStack,
    manager: FakeDragonfly2Manager,
    node_view_registries: dict[str, Any],
    node_view_image: OciImage,
    kind: str,
) -> None:
    registry, header = node_view_registries[kind]
    data = preheat(dragonfly2, {"type": "image", "url": registry.image(f"{REPOSITORY}:v1"), "header": header})

    assert data["status"] == "SUCCESS", data
    tasks = manager.tasks()
    for digest, url in blob_urls(registry, node_view_image).items():
        node_id = dragonfly2_task_id(url, TAG, APPLICATION, PIECE_LENGTH)
        task = tasks.get(node_id)
        assert task is not None, (
            f"no task a node with tag {TAG}, application {APPLICATION} computes for {url}"
        )
        assert task.status == "SUCCESS"
        assert task.cache_path is not None
        assert sha256_of(task.cache_path) == digest
        # Not the out-of-the-box id: a node without them would miss this cache.
        assert dragonfly2_task_id(url) not in tasks
    shown = {blob["digest"]: blob["nodeTaskId"] for blob in data["blobs"]}
    assert shown == {
        d: dragonfly2_task_id(u, TAG, APPLICATION, PIECE_LENGTH)
        for d, u in blob_urls(registry, node_view_image).items()
    }
    # The job carried them, as the manager's open API takes them.
    creates = [request["body"]["args"] for request in manager.requests_seen if request["method"] == "POST"]
    assert creates
    assert all(
        (args.get("tag"), args.get("application"), args.get("piece_length"))
        == (TAG, APPLICATION, PIECE_LENGTH)
        for args in creates
    ), creates
