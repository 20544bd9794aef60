"""The whole slice through the local stack's HTTP API: a real Distribution registry holding images
pushed with skopeo, the real handlers, moto in server mode, the SQS poller and the reference
supernode, which really downloads every blob and checks its digest."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from tests.support.http_server import serve_directory
from tests.support.local_stack import ended, submit
from tests.support.registry import OciImage, RegistryServer, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("supernode-cache"),
        visibility_timeout=5,
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1"},
    ) as running:
        yield running


@pytest.fixture
def three_layers(tmp_path: Path, request: pytest.FixtureRequest) -> OciImage:
    return fresh_image(tmp_path, request.node.name)


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    root = tmp_path_factory.mktemp("files")
    payload = f"model weights {secrets.token_hex(16)} ".encode() * 50_000
    (root / "model.bin").write_bytes(payload)
    with serve_directory(root) as server:
        yield server.url, payload


def api(stack: LocalStack, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = requests.request(method, f"{stack.api_url}{path}", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def manifest_blobs(registry: RegistryServer, name: str, tag: str) -> set[str]:
    """What the registry itself says the image is made of: config and layers."""
    response = requests.get(
        f"{registry.url}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=5
    )
    response.raise_for_status()
    manifest = response.json()
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def supernode_of(stack: LocalStack) -> ReferenceSupernode:
    assert stack.supernode is not None
    return stack.supernode


def cached_digests(stack: LocalStack) -> set[str]:
    return supernode_of(stack).cached_digests()


def fresh_image(path: Path, name: str) -> OciImage:
    """An image of three layers and a config no other case pushes (random bytes in each), so what a
    case finds in the supernode's cache can only be there because that case preheated it."""
    salt = secrets.token_hex(16)
    layers = [f"{name} {salt} layer {n}\n".encode() * (1000 * (n + 1)) for n in range(3)]
    return make_oci_layout(path, layers, config={"config": {"Cmd": ["sh"], "Labels": {"salt": salt}}})


def test_check_answers_200_while_the_supernode_answers(stack: LocalStack):
    assert api(stack, "GET", "/api/check") == {"code": 200}


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_an_image_is_preheated_to_success_and_every_blob_lands_in_the_cache(
    stack: LocalStack, registry: RegistryServer, three_layers: OciImage, fmt: str
):
    registry.push(three_layers, f"e2e/{fmt}:v1", fmt=fmt)
    expected = manifest_blobs(registry, f"e2e/{fmt}", "v1")
    assert len(expected) == 4
    assert not expected & cached_digests(stack), "this case's blobs were cached before it ran"

    started = time.monotonic()
    task_id = submit(stack, {"type": "image", "url": f"{registry.host}/e2e/{fmt}:v1"})
    data = ended(stack, task_id)
    elapsed = time.monotonic() - started

    assert data["status"] == "SUCCESS", data
    assert data["layers"] == {"total": 4, "succeeded": 4, "failed": 0, "pending": 0}
    assert data["startTime"] <= data["finishTime"]
    assert expected <= cached_digests(stack)
    print(f"\n{fmt} 3-layer image: POST to SUCCESS in {elapsed:.2f}s")


def test_the_harbor_manifest_url_and_digest_forms_preheat_the_same_image(
    stack: LocalStack, registry: RegistryServer, three_layers: OciImage
):
    digest = registry.push(three_layers, "e2e/harbor:v1", fmt="oci")
    for url in (
        f"http://{registry.host}/v2/e2e/harbor/manifests/v1",
        f"{registry.host}/e2e/harbor@{digest}",
    ):
        data = ended(stack, submit(stack, {"type": "image", "url": url, "header": {}}))
        assert data["status"] == "SUCCESS", data
        assert data["url"] == url
        assert data["layers"]["total"] == 4


def test_a_file_is_preheated_into_the_cache(stack: LocalStack, file_server: tuple[str, bytes]):
    base, payload = file_server
    digest = f"sha256:{hashlib.sha256(payload).hexdigest()}"
    assert digest not in cached_digests(stack), "the file was cached before this case ran"
    data = ended(stack, submit(stack, {"type": "file", "url": f"{base}/model.bin"}))
    assert data["status"] == "SUCCESS", data
    assert data["layers"] == {"total": 1, "succeeded": 1, "failed": 0, "pending": 0}
    assert digest in cached_digests(stack)


def test_a_missing_tag_ends_fail_with_a_clear_message(stack: LocalStack, registry: RegistryServer):
    data = ended(stack, submit(stack, {"type": "image", "url": f"{registry.host}/e2e/nothing:here"}))
    assert data["status"] == "FAIL"
    assert "not found" in data["msg"]
    assert "e2e/nothing" in data["msg"]
    assert data["finishTime"]


def test_a_missing_file_ends_fail_naming_it(stack: LocalStack, file_server: tuple[str, bytes]):
    base, _ = file_server
    data = ended(stack, submit(stack, {"type": "file", "url": f"{base}/absent.bin"}))
    assert data["status"] == "FAIL"
    assert "absent.bin" in data["msg"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "image"}', "'url' must be a non-empty string"),
        (b'{"type": "image", "url": ""}', "'url' must be a non-empty string"),
        (b'{"type": "tarball", "url": "x.io/a:b"}', "'type' must be"),
        (b'{"type": "image", "url": "x.io/a:b", "header": ["x"]}', "'header' must be a JSON object"),
        (b'{"type": "image", "url": "x.io/a:b", "header": {"A": 1}}', "must be a string"),
        (b'{"type": "image", "url": "x.io/NOPE:b"}', "invalid repository name"),
        (b'{"type": "file", "url": "ftp://x.io/f"}', "http:// or https://"),
        (b"", "request body is empty"),
    ],
)
def test_bad_input_answers_code_400_and_writes_nothing(stack: LocalStack, body: bytes, fragment: str):
    import boto3

    dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    table = stack.table_name("TasksTable")
    before = dynamodb.scan(TableName=table, Select="COUNT")["Count"]
    answer = api(stack, "POST", "/api/preheat", data=body, headers={"Content-Type": "application/json"})
    assert answer["code"] == 400
    assert fragment in answer["msg"]
    assert "data" not in answer
    assert dynamodb.scan(TableName=table, Select="COUNT")["Count"] == before


def test_status_of_an_unknown_or_malformed_task_id(stack: LocalStack):
    unknown = api(stack, "GET", "/api/preheat/0f8fad5b-d9cb-469f-a165-70867728950e")
    assert unknown["code"] == 404
    assert "no preheat task" in unknown["msg"]
    malformed = api(stack, "GET", "/api/preheat/not-a-task")
    assert malformed["code"] == 400
    assert "not a task id" in malformed["msg"]


def test_credentials_sent_in_header_reach_the_registry_and_its_supernode_but_no_answer(
    stack: LocalStack, auth_registry: RegistryServer, tmp_path: Path
):
    # The registry refuses anonymous pulls: the task can only succeed if the header reached it.
    assert auth_registry.credentials is not None
    _, password = auth_registry.credentials
    auth_registry.push(fresh_image(tmp_path, "secret"), "e2e/secret:v1", fmt="oci")
    url = f"{auth_registry.host}/e2e/secret:v1"
    anonymous = ended(stack, submit(stack, {"type": "image", "url": url}))
    assert anonymous["status"] == "FAIL", anonymous
    assert "401" in anonymous["msg"] or "credentials" in anonymous["msg"], anonymous

    canary = "Bearer canary-e2e-0123456789"
    authorization = auth_registry.basic_auth()
    before = len(supernode_of(stack).requests_seen)
    task_id = submit(
        stack,
        {"type": "image", "url": url, "header": {"Authorization": authorization, "X-Trace": canary}},
    )
    data = ended(stack, task_id)
    assert data["status"] == "SUCCESS", data
    import boto3

    dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    item = dynamodb.get_item(TableName=stack.table_name("TasksTable"), Key={"pk": {"S": task_id}})["Item"]
    for secret in ("canary-e2e", password, authorization):
        assert secret not in repr(item)
        assert secret not in repr(data)
    # The supernode downloads the blobs from the registry itself, so each create carries the caller's
    # headers (the README: "to the supernode only where the download URL is the registry itself"),
    # exactly as they were sent: the supernode records what arrived.
    sent = supernode_of(stack).requests_seen[before:]
    assert len(sent) == data["layers"]["total"] == 4
    assert all(create["url"].startswith(f"{auth_registry.url}/v2/e2e/secret/blobs/") for create in sent)
    assert all(create["headers"] == {"Authorization": authorization, "X-Trace": canary} for create in sent), (
        sent
    )
