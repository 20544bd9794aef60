"""The node's-eye view, Dragonfly 2: after a preheat reaches SUCCESS, does the fake manager's seed
peer hold, as SUCCESS and with the blob's content, the very task a node computes for each blob's
registry URL? Against every kind of registry, for a file URL that redirects, and for a 120-layer
image with the manager's job rate limit on (10 creates a second per named cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack
from tests.support.local_stack import dragonfly2_stack
from tests.support.node_view import (
    CLUSTER,
    KINDS,
    REPOSITORY,
    TOKEN,
    blob_urls,
    dragonfly2_task_id,
    preheat,
    sha256_of,
)
from tests.support.registry import OciImage, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDragonfly2Manager]:
    # The manager's default job rate limit (10 creates a second per named cluster) is on. Job states
    # are shown as they are (answer_at_once): what is checked here is where the blobs land, not
    # when the manager's poller would tell (test_dragonfly2_refresh_schedule.py is about that).
    with FakeDragonfly2Manager(
        tmp_path_factory.mktemp("manager"),
        TOKEN,
        clusters={CLUSTER: "cluster-1"},
        max_concurrent_downloads=8,
        answer_at_once=True,
    ) as running:
        assert running.job_rate_limit == 10
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
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1"},
    ) as running:
        yield running


@pytest.mark.parametrize("kind", KINDS)
def test_a_node_pull_hits_every_blob(
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
        task = tasks.get(dragonfly2_task_id(url))
        assert task is not None, f"no task a node would compute for {url}"
        assert task.status == "SUCCESS"
        assert task.cache_path is not None
        assert sha256_of(task.cache_path) == digest
    shown = {blob["digest"]: blob["nodeTaskId"] for blob in data["blobs"]}
    assert shown == {d: dragonfly2_task_id(u) for d, u in blob_urls(registry, node_view_image).items()}


def test_a_redirecting_file_is_warmed_under_the_url_nodes_were_given(
    dragonfly2: LocalStack, manager: FakeDragonfly2Manager, redirecting_files: tuple[str, bytes]
) -> None:
    url, payload = redirecting_files
    data = preheat(dragonfly2, {"type": "file", "url": url})

    assert data["status"] == "SUCCESS", data
    assert data["blobs"][0]["preheatedUrl"] == url
    task = manager.tasks()[dragonfly2_task_id(url)]
    assert task.status == "SUCCESS"
    assert task.cache_path is not None
    assert task.cache_path.read_bytes() == payload


def test_120_layers_through_the_rate_limited_manager(
    dragonfly2: LocalStack,
    manager: FakeDragonfly2Manager,
    node_view_registries: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    registry, _ = node_view_registries["filesystem"]
    big = make_oci_layout(
        tmp_path_factory.mktemp("big"), [f"layer {n}\n".encode() * 50 for n in range(120)], config={}
    )
    registry.push(big, "team/big:v1")
    admitted, limited = manager.admitted, manager.rate_limited

    data = preheat(dragonfly2, {"type": "image", "url": registry.image("team/big:v1")}, timeout=300)

    assert data["status"] == "SUCCESS", data.get("msg")
    assert data["layers"] == {"total": 121, "succeeded": 121, "failed": 0, "pending": 0}
    tasks = manager.tasks()
    for url in blob_urls(registry, big, "team/big").values():
        assert tasks[dragonfly2_task_id(url)].status == "SUCCESS"
    # One job for the whole image: within the limit, so no create was refused.
    assert manager.admitted - admitted == 1
    assert manager.rate_limited - limited == 0
