"""What the node's-eye tests share (``tests/integration/test_node_view*.py``).

The node's-eye view: after a preheat reaches SUCCESS, would a node's pull land on what it warmed?

A node pulls through dfdaemon, which hands Dragonfly the registry blob URL the container runtime
asked for (``http://<registry>/v2/<name>/blobs/<digest>``) and computes the task id from it. So for
every blob of the image these tests compute, here, from the algorithms in the project's reference
notes (not with the product's code), the Dragonfly 1 and Dragonfly 2 task ids of that URL, and
check that the reference supernode, or the fake Dragonfly 2 manager's seed peer, holds each as
SUCCESS with the blob's content. Against real Distribution registries: on the filesystem, behind
htpasswd, behind token auth, and on S3 (moto) answering blob GETs with 307 to presigned URLs; plus a
file URL that redirects, and a 120-layer image through the manager with its job rate limit on. The
``token-s3`` kind is Docker Hub's real set-up: token auth in front, blobs answered 307 to storage.

The root conftest loads these fixtures (``pytest_plugins``) for every module; each module that asks
for them gets its own (module scope), with an image and an S3 bucket no other module shares: moto's
state is one per process, so a module must not find what another left there.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import LocalStack
from tests.support.fixtures import require_tools
from tests.support.http_server import QuietHandler, serve
from tests.support.local_stack import preheated
from tests.support.registry import (
    HTPASSWD_BINARY,
    REGISTRY_BINARY,
    SKOPEO_BINARY,
    MotoS3Server,
    OciImage,
    RegistryServer,
    TokenServer,
    make_oci_layout,
)

TOKEN = "pat-node-view-0123456789abcdef"
CLUSTER = 1
REPOSITORY = "team/app"
# Dragonfly 1 (supernode/daemon/mgr/task/manager.go): the key around a task id's material.
DF1_KEY = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"


def dragonfly1_task_id(url: str, filter_params: tuple[str, ...] = (), identifier: str = "") -> str:
    """generateTaskID for a node's dfget: out of the box no filter and no identifier; with
    ``--filter`` the named query parameters are dropped (the others kept in order) first."""
    if filter_params and "?" in url:
        base, query = url.split("?", 1)
        kept = [part for part in query.split("&") if part.split("=", 1)[0] not in filter_params]
        url = f"{base}?{'&'.join(kept)}" if kept else base
    return hashlib.sha256(f"{DF1_KEY}{url}{identifier}{DF1_KEY}".encode()).hexdigest()


def dragonfly2_task_id(
    url: str, tag: str = "", application: str = "", piece_length: int | None = None
) -> str:
    """The client's URL-based id: a URL without a query is left as it is by the filtered-parameter
    step; then the tag, the application and the piece length when set (none out of the box); then
    the task type."""
    assert "?" not in url
    material = f"{url}{tag}{application}{'' if piece_length is None else piece_length}STANDARD"
    return hashlib.sha256(material.encode()).hexdigest()


def sha256_of(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


# -- registries of every kind, each holding one image --------------------------------------------


def unique_image(path: Path, name: str) -> OciImage:
    """Three layers and a config no other module or test pushes (a random salt in each)."""
    salt = secrets.token_hex(16)
    layers = [f"{name} {salt} layer {n}\n".encode() * (2000 * (n + 1)) for n in range(3)]
    return make_oci_layout(path, layers, config={"config": {"Cmd": ["sh"], "Labels": {"salt": salt}}})


@pytest.fixture(scope="module")
def node_view_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    return unique_image(tmp_path_factory.mktemp("node-view"), "node view")


@pytest.fixture(scope="module")
def node_view_registries(
    tmp_path_factory: pytest.TempPathFactory, node_view_image: OciImage
) -> Iterator[dict[str, Any]]:
    """``kind -> (registry, header)``: the image pushed to each kind of registry, and the
    ``header`` a caller sends to preheat it."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY, HTPASSWD_BINARY)
    user = "preheat"
    with (
        RegistryServer(tmp_path_factory.mktemp("fs")) as plain,
        RegistryServer(tmp_path_factory.mktemp("htpasswd"), users={user: secrets.token_urlsafe(12)}) as basic,
        TokenServer({user: secrets.token_urlsafe(12)}, lifetime=300) as tokens,
        RegistryServer(tmp_path_factory.mktemp("token"), token_auth=tokens) as token,
        MotoS3Server() as s3,
        RegistryServer(
            tmp_path_factory.mktemp("s3"),
            users={user: secrets.token_urlsafe(12)},
            s3=s3.bucket(f"node-view-{secrets.token_hex(6)}"),
        ) as on_s3,
        TokenServer({user: secrets.token_urlsafe(12)}, lifetime=300) as hub_tokens,
        RegistryServer(
            tmp_path_factory.mktemp("token-s3"),
            token_auth=hub_tokens,
            s3=s3.bucket(f"node-view-hub-{secrets.token_hex(6)}"),
        ) as hub,
    ):
        found: dict[str, Any] = {}
        kinds = (
            ("filesystem", plain),
            ("htpasswd", basic),
            ("token", token),
            ("s3", on_s3),
            ("token-s3", hub),
        )
        image = node_view_image
        for kind, registry in kinds:
            registry.push(image, f"{REPOSITORY}:v1")
            header = {"Authorization": registry.basic_auth()} if registry.credentials else {}
            found[kind] = (registry, header)
        yield found


@pytest.fixture(scope="module")
def redirecting_files() -> Iterator[tuple[str, bytes]]:
    """A file server whose ``/latest.bin`` redirects (302) to ``/model-v2.bin``."""
    payload = b"model weights v2 " * 20_000

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path == "/latest.bin":
                self.answer(b"", 302, {"Location": "/model-v2.bin"})
                return
            self.answer(payload)

    with serve(Handler) as server:
        yield f"{server.url}/latest.bin", payload


def preheat(stack: LocalStack, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """The task's status, with its blobs' detail (the URLs handed over and the ids nodes compute),
    once it is no longer RUNNING."""
    return preheated(stack, body, timeout=timeout, detail=True)


def blob_urls(registry: RegistryServer, image: OciImage, repository: str = REPOSITORY) -> dict[str, str]:
    """digest -> the URL a node's runtime asks dfdaemon for."""
    return {digest: f"http://{registry.host}/v2/{repository}/blobs/{digest}" for digest in image.blob_digests}


KINDS = ("filesystem", "htpasswd", "token", "s3", "token-s3")
# The kinds whose blob GETs answer 307 to presigned storage URLs.
REDIRECTING_KINDS = ("s3", "token-s3")
