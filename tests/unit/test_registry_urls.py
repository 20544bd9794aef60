"""Registry blob URLs (``PREHEAT_LAYER_URLS=registry``, the default): the supernode is handed the URL
nodes ask for, ``<scheme>://<host nodes name>/v2/<name>/blobs/<digest>``, with what it needs to
download it, and the worker sends no request per blob. A file is handed over exactly as given. Every
URL handed over is checked against the outbound policy first, its host resolved."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from preheat.adapters.registry import HttpRegistryClient
from preheat.errors import PermanentFailure
from preheat.models import Credentials
from preheat.network import AddressRefused
from preheat.ports import ResolveOptions
from preheat.settings import Settings
from tests.support.registry import StubResponse, StubServer, digest_of
from tests.unit.test_registry_client import (
    SETTINGS,
    StubRegistry,
    basic,
    basic_auth,
    bearer_auth,
    digests,
    fake,
    server,
    storage,
)

__all__ = ["fake", "server", "storage"]  # fixtures, used by name

REGISTRY_MODE = replace(SETTINGS, layer_urls="registry")


@pytest.fixture
def client() -> HttpRegistryClient:
    return HttpRegistryClient(REGISTRY_MODE, sleep=lambda seconds: None)


def test_blobs_are_the_registry_urls_with_the_token_and_no_request_per_blob(
    fake: StubRegistry, storage: StubServer, client: HttpRegistryClient
) -> None:
    _, blobs = fake.add_image("v1", [b"one", b"two"])
    fake.auth = bearer_auth(fake, "anon-token")
    fake.token_answer = lambda request: StubResponse.json({"token": "anon-token", "expires_in": 300})
    fake.blob_answer = lambda request, digest: StubResponse.redirect(
        f"http://{storage.host}/{digest}?X-Amz-Signature=s"
    )
    seen: list[str] = []

    resolved = client.resolve_image(
        fake.image("v1"), Credentials(), options=ResolveOptions(on_blob=lambda blob: seen.append(blob.url))
    ).blobs

    assert digests(resolved) == blobs
    assert [blob.url for blob in resolved] == [f"http://{fake.host}/v2/app/blobs/{d}" for d in blobs]
    assert seen == [blob.url for blob in resolved]
    # The token exchanged for the manifest is what the supernode downloads with; no signature filter.
    assert all(blob.headers.reveal() == {"Authorization": "Bearer anon-token"} for blob in resolved)
    assert all(blob.filter == () for blob in resolved)
    # 401, token, manifest: nothing per blob, and the storage never asked.
    assert [r.path.rsplit("/", 1)[0] for r in fake.server.requests] == [
        "/v2/app/manifests",
        "",
        "/v2/app/manifests",
    ]
    assert not storage.requests


def test_the_callers_basic_credentials_are_handed_over_as_given(
    fake: StubRegistry, client: HttpRegistryClient
) -> None:
    fake.add_image("v1", [b"layer"])
    caller = basic("alice", "pw")
    fake.auth = basic_auth(caller)

    resolved = client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller, "X-Team": "a"}))

    assert all(blob.headers.reveal() == {"X-Team": "a", "Authorization": caller} for blob in resolved.blobs)


def test_the_host_nodes_name_replaces_the_one_the_worker_talks_to(fake: StubRegistry) -> None:
    fake.add_image("v1", [b"layer"])
    port = fake.host.rsplit(":", 1)[1]
    settings = replace(REGISTRY_MODE, node_registry_hosts=((fake.host, f"localhost:{port}"),))
    client = HttpRegistryClient(settings)

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert all(blob.url.startswith(f"http://localhost:{port}/v2/app/blobs/") for blob in resolved)


def test_docker_hub_is_named_as_nodes_name_it_by_default() -> None:
    assert Settings().node_host("registry-1.docker.io") == "index.docker.io"
    assert Settings().node_host("ghcr.io") == "ghcr.io"
    env = {"PREHEAT_NODE_REGISTRY_HOSTS": "registry-1.docker.io=docker.io, reg.internal:5000=reg.example.com"}
    configured = Settings.from_env(env)
    assert configured.node_host("registry-1.docker.io") == "docker.io"
    assert configured.node_host("REG.internal:5000") == "reg.example.com"
    with pytest.raises(ValueError, match="PREHEAT_NODE_REGISTRY_HOSTS"):
        Settings.from_env({"PREHEAT_NODE_REGISTRY_HOSTS": "no-equals-sign"})


def test_a_handed_over_host_the_policy_refuses_fails_the_task(fake: StubRegistry) -> None:
    fake.add_image("v1", [b"layer"])
    # Nodes' name for the registry resolves to the metadata service: never hand that over.
    settings = replace(REGISTRY_MODE, node_registry_hosts=((fake.host, "169.254.169.254"),))

    with pytest.raises(AddressRefused, match=r"refused to hand the blob .* 169\.254\.169\.254"):
        HttpRegistryClient(settings).resolve_image(fake.image("v1"), Credentials())


def test_a_host_that_cannot_be_resolved_is_not_handed_over(fake: StubRegistry) -> None:
    fake.add_image("v1", [b"layer"])
    # The worker resolves the host before handing it over; a name that resolves to nothing is refused.
    settings = replace(
        REGISTRY_MODE,
        allowed_networks=("127.0.0.0/8",),
        node_registry_hosts=((fake.host, "localhost6.example.invalid"),),
    )

    with pytest.raises(PermanentFailure, match="cannot be resolved"):
        HttpRegistryClient(settings).resolve_image(fake.image("v1"), Credentials())


def test_a_foreign_layer_is_handed_over_at_its_own_url_without_credentials(
    fake: StubRegistry, storage: StubServer, client: HttpRegistryClient
) -> None:
    digest, _ = fake.add_image("v1", [b"layer"])
    media_type, body = fake.manifests[digest]
    document = json.loads(body)
    document["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": digest_of(b"windows base layer"),
            "size": 18,
            "urls": [f"http://{storage.host}/windows/base.tar.gz"],
        }
    )
    fake.add_manifest(document, media_type, "v1")
    caller = basic("alice", "pw")

    resolved = client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller})).blobs

    assert resolved[-1].url == f"http://{storage.host}/windows/base.tar.gz"
    assert not resolved[-1].headers
    assert resolved[0].headers.reveal() == {"Authorization": caller}
    assert not storage.requests


def test_a_file_is_handed_over_exactly_as_given_without_a_request(
    storage: StubServer, client: HttpRegistryClient
) -> None:
    url = f"http://{storage.host}/models/latest.bin?v=2"

    blob = client.resolve_file(url, Credentials({"Authorization": "Bearer t", "Range": "bytes=0-1"}))

    assert blob.url == url
    # Framing headers never travel: a supernode sent a Range would cache part of the file.
    assert blob.headers.reveal() == {"Authorization": "Bearer t"}
    assert not storage.requests


def test_a_file_on_a_refused_address_is_not_handed_over() -> None:
    client = HttpRegistryClient(replace(REGISTRY_MODE, allowed_networks=()))
    with pytest.raises(AddressRefused, match="loopback"):
        client.resolve_file("http://127.0.0.1:9/f.bin", Credentials())
