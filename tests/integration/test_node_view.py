"""The node's-eye view, Dragonfly 1: after a preheat reaches SUCCESS, does the reference supernode
hold, as SUCCESS and with the blob's content, the very task a node's dfget computes for each blob's
registry URL? Against every kind of registry (see ``tests/support/node_view.py``), and for a file
URL that redirects (test_node_view_configured.py: a cluster whose dfget runs with ``--filter`` and
``--identifier``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from tests.support.node_view import (
    KINDS,
    REDIRECTING_KINDS,
    REPOSITORY,
    blob_urls,
    dragonfly1_task_id,
    preheat,
    sha256_of,
)
from tests.support.registry import OciImage

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


@pytest.fixture(scope="module")
def dragonfly1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("supernode-cache"), extra_env={"PREHEAT_POLL_MAX_DELAY": "1"}
    ) as running:
        yield running


@pytest.mark.parametrize("kind", KINDS)
def test_a_node_pull_hits_every_blob(
    dragonfly1: LocalStack, node_view_registries: dict[str, Any], node_view_image: OciImage, kind: str
) -> None:
    registry, header = node_view_registries[kind]
    data = preheat(dragonfly1, {"type": "image", "url": registry.image(f"{REPOSITORY}:v1"), "header": header})

    assert data["status"] == "SUCCESS", data
    assert dragonfly1.supernode is not None
    tasks = dragonfly1.supernode.tasks()
    hits = 0
    for digest, url in blob_urls(registry, node_view_image).items():
        task = tasks.get(dragonfly1_task_id(url))
        assert task is not None, f"no task a node would compute for {url}"
        assert task.status == "SUCCESS"
        assert task.cache_path is not None
        assert sha256_of(task.cache_path) == digest
        hits += 1
    assert hits == len(node_view_image.blob_digests)
    # The proof an operator reads: each blob's URL and the id its nodes compute.
    shown = {blob["digest"]: (blob["preheatedUrl"], blob["nodeTaskId"]) for blob in data["blobs"]}
    assert shown == {d: (u, dragonfly1_task_id(u)) for d, u in blob_urls(registry, node_view_image).items()}
    # Credentials travel to the supernode in the create body only, never into the answer.
    assert all(value not in str(data) for value in header.values())


@pytest.mark.parametrize("kind", REDIRECTING_KINDS)
def test_the_s3_registries_really_redirect_blobs(
    node_view_registries: dict[str, Any], node_view_image: OciImage, kind: str
) -> None:
    # What makes these kinds worth testing: their blob GETs answer 307 to presigned URLs, which the
    # supernode follows itself (without the registry's Authorization). Behind token auth
    # (Docker Hub's set-up) the blob GET needs the token first.
    registry, header = node_view_registries[kind]
    digest = node_view_image.blob_digests[0]
    blob_url = f"{registry.url}/v2/{REPOSITORY}/blobs/{digest}"
    if kind == "token-s3":
        challenged = requests.get(blob_url, allow_redirects=False, timeout=10)
        assert challenged.status_code == 401
        realm, service = registry.token_auth.realm, registry.token_auth.service
        token_answer = requests.get(
            realm,
            params={"service": service, "scope": f"repository:{REPOSITORY}:pull"},
            headers=header,
            timeout=10,
        )
        token_answer.raise_for_status()
        body = token_answer.json()
        header = {"Authorization": f"Bearer {body.get('token') or body['access_token']}"}
    answer = requests.get(blob_url, headers=header, allow_redirects=False, timeout=10)
    assert answer.status_code == 307
    assert "X-Amz-Signature=" in answer.headers["Location"]


def test_a_redirecting_file_is_warmed_under_the_url_nodes_were_given(
    dragonfly1: LocalStack, redirecting_files: tuple[str, bytes]
) -> None:
    url, payload = redirecting_files
    data = preheat(dragonfly1, {"type": "file", "url": url})

    assert data["status"] == "SUCCESS", data
    assert data["blobs"][0]["preheatedUrl"] == url
    assert dragonfly1.supernode is not None
    task = dragonfly1.supernode.tasks()[dragonfly1_task_id(url)]
    assert task.status == "SUCCESS"
    assert task.cache_path is not None
    assert task.cache_path.read_bytes() == payload
