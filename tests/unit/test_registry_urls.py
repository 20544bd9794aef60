"""Registry blob URLs (``PREHEAT_LAYER_URLS=registry``, the default): the supernode is handed the URL
nodes ask for, ``<scheme>://<host nodes name>/v2/<name>/blobs/<digest>``, with what it needs to
download it, and the worker sends no request per blob. A file is handed over exactly as given. Every
URL handed over is checked against the outbound policy first, its host resolved."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from typing import Any

import pytest

from preheat.adapters import registry as registry_module
from preheat.adapters.registry import HttpRegistryClient
from preheat.errors import PermanentFailure, TransientFailure
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


class CountingResolver:
    """``socket.getaddrinfo`` for the handover checks: the stub registry is on loopback, every other
    host a public address; each lookup moves the client's clock by ``seconds`` (a slow DNS server)."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.hosts: list[str] = []

    def __call__(self, host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]]:
        self.hosts.append(host)
        self.clock[0] += self.seconds
        address = "127.0.0.1" if host == "127.0.0.1" else "93.184.216.34"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


def with_foreign_layers(fake: StubRegistry, hosts: int) -> None:
    """Image ``v1`` with one foreign layer on each of ``hosts`` hosts."""
    digest, _ = fake.add_image("v1", [b"layer"])
    media_type, body = fake.manifests[digest]
    document = json.loads(body)
    for number in range(hosts):
        document["layers"].append(
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": digest_of(b"foreign %d" % number),
                "size": 9,
                "urls": [f"https://h{number}.foreign.example/base.tar.gz"],
            }
        )
    fake.add_manifest(document, media_type, "v1")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])
    return now


def test_foreign_layers_on_more_hosts_than_the_cap_are_refused_before_any_lookup(
    fake: StubRegistry, clock: list[float]
) -> None:
    # Given an image whose 40 foreign layers name 40 hosts, and a resolver taking 0.2 s a lookup
    with_foreign_layers(fake, 40)
    resolver = CountingResolver(clock, 0.2)
    client = HttpRegistryClient(REGISTRY_MODE, sleep=lambda seconds: None, resolver=resolver)

    # When it is resolved within a 1 s budget
    with pytest.raises(PermanentFailure, match="has layers on 41 hosts; at most 8"):
        client.resolve_image(fake.image("v1"), Credentials(), options=ResolveOptions(time_budget_seconds=1.0))

    # Then not one lookup was spent on it (there were 41, one after another: 8 s against 1 s)
    assert resolver.hosts == []


def test_handover_lookups_stop_when_the_steps_time_runs_out(fake: StubRegistry, clock: list[float]) -> None:
    # Given 6 foreign hosts (under the cap) and a DNS server answering each lookup in 0.3 s
    with_foreign_layers(fake, 6)
    resolver = CountingResolver(clock, 0.3)
    client = HttpRegistryClient(REGISTRY_MODE, sleep=lambda seconds: None, resolver=resolver)

    # When the step has 1 s left
    with pytest.raises(TransientFailure, match="time ran out"):
        client.resolve_image(fake.image("v1"), Credentials(), options=ResolveOptions(time_budget_seconds=1.0))

    # Then the lookups stopped at the budget: the registry's and 3 foreign hosts', not all 7
    assert len(resolver.hosts) == 4
    assert resolver.hosts[0] == "127.0.0.1"


def test_handover_lookups_within_the_budget_check_each_host_once(
    fake: StubRegistry, clock: list[float]
) -> None:
    with_foreign_layers(fake, 3)
    resolver = CountingResolver(clock, 0.1)
    client = HttpRegistryClient(REGISTRY_MODE, sleep=lambda seconds: None, resolver=resolver)

    blobs = client.resolve_image(
        fake.image("v1"), Credentials(), options=ResolveOptions(time_budget_seconds=1.0)
    ).blobs

    assert len(blobs) == 2 + 3
    assert sorted(resolver.hosts) == ["127.0.0.1", *(f"h{n}.foreign.example" for n in range(3))]
