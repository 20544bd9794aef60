"""The node's-eye view, Dragonfly 1, for a cluster whose dfget runs with ``--filter sig`` and
``--identifier``, and a service told so (``PREHEAT_DRAGONFLY1_FILTER``, ``PREHEAT_DRAGONFLY1_IDENTIFIER``):
after a preheat reaches SUCCESS, does the reference supernode hold the task such a node computes?
A module of its own: one LocalStack runs at a time in a process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from local.stack import LocalStack
from tests.support.node_view import REPOSITORY, blob_urls, dragonfly1_task_id, preheat, sha256_of
from tests.support.registry import OciImage

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

# What the cluster's dfget is run with (--filter sig --identifier ...), and the service told so.
FILTER = ("sig",)
IDENTIFIER = "node-view-cluster"


@pytest.fixture(scope="module")
def dragonfly1_configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("configured-cache"),
        extra_env={
            "PREHEAT_POLL_MAX_DELAY": "1",
            "PREHEAT_DRAGONFLY1_FILTER": "&".join(FILTER),
            "PREHEAT_DRAGONFLY1_IDENTIFIER": IDENTIFIER,
        },
    ) as running:
        yield running


@pytest.mark.parametrize("kind", ["htpasswd", "token-s3"])
def test_with_a_filter_and_an_identifier_a_node_pull_hits_every_blob(
    dragonfly1_configured: LocalStack,
    node_view_registries: dict[str, Any],
    node_view_image: OciImage,
    kind: str,
) -> None:
    registry, header = node_view_registries[kind]
    data = preheat(
        dragonfly1_configured, {"type": "image", "url": registry.image(f"{REPOSITORY}:v1"), "header": header}
    )

    assert data["status"] == "SUCCESS", data
    assert dragonfly1_configured.supernode is not None
    tasks = dragonfly1_configured.supernode.tasks()
    for digest, url in blob_urls(registry, node_view_image).items():
        task = tasks.get(dragonfly1_task_id(url, FILTER, IDENTIFIER))
        assert task is not None, f"no task a node run with --identifier {IDENTIFIER} would compute for {url}"
        assert task.status == "SUCCESS"
        assert task.cache_path is not None
        assert sha256_of(task.cache_path) == digest
        # Not the out-of-the-box id: a node without the identifier would miss this cache.
        assert dragonfly1_task_id(url) not in tasks
    shown = {blob["digest"]: blob["nodeTaskId"] for blob in data["blobs"]}
    assert shown == {
        d: dragonfly1_task_id(u, FILTER, IDENTIFIER) for d, u in blob_urls(registry, node_view_image).items()
    }


def test_with_a_filter_a_signed_file_url_lands_on_the_task_of_the_url_without_it(
    dragonfly1_configured: LocalStack, redirecting_files: tuple[str, bytes]
) -> None:
    latest, payload = redirecting_files
    base = latest.rsplit("/", 1)[0]
    url = f"{base}/model-v2.bin?v=2&sig={secrets.token_hex(8)}"
    data = preheat(dragonfly1_configured, {"type": "file", "url": url})

    assert data["status"] == "SUCCESS", data
    assert dragonfly1_configured.supernode is not None
    tasks = dragonfly1_configured.supernode.tasks()
    # A node given another signature of the same file computes the same id: sig is filtered out.
    other_signature = f"{base}/model-v2.bin?v=2&sig={secrets.token_hex(8)}"
    expected = dragonfly1_task_id(other_signature, FILTER, IDENTIFIER)
    assert expected == dragonfly1_task_id(f"{base}/model-v2.bin?v=2", (), IDENTIFIER)
    task = tasks.get(expected)
    assert task is not None, f"no task a node run with --filter sig would compute for {url}"
    assert task.status == "SUCCESS"
    assert task.cache_path is not None
    assert task.cache_path.read_bytes() == payload
    assert data["blobs"][0]["nodeTaskId"] == expected
