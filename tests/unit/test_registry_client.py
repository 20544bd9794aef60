"""HttpRegistryClient against stub registries: auth, manifests, limits, retries and redirects."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from preheat.adapters import fail_fast, registry_manifests
from preheat.adapters import registry as registry_module
from preheat.adapters.registry import PROBE_RANGE, HttpRegistryClient
from preheat.adapters.registry_manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
)
from preheat.adapters.storage_signatures import signature_params
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Blob, Credentials, ImageReference, Platform
from preheat.ports import ResolveOptions
from tests.support.registry import StubRequest, StubResponse, StubServer, digest_of, loopback_settings

# The stubs listen on loopback, which the outbound policy refuses unless allowed.
# These tests pin the spec's literal mode (storage URLs, redirects followed); registry blob URLs,
# the default, are tested in test_registry_urls.py.
STORAGE = "storage"
SETTINGS = loopback_settings(registry_timeout_seconds=1.0, layer_urls=STORAGE)
CANARY = "canary-Zq8wX3secret"
AMZ_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=1200&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123"
)

Auth = Callable[[StubRequest], StubResponse | None]


class StubRegistry:
    """A Distribution registry in a few lines: manifests by reference, blobs by digest, pluggable
    auth, a token endpoint at ``/token``, scripted answers that come before everything else, and
    scripted answers for the first requests to a path (``on_path``)."""

    def __init__(self, server: StubServer, repository: str = "app") -> None:
        self.server = server
        self.repository = repository
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: set[str] = set()
        self.auth: Auth | None = None
        self.token_answer: Callable[[StubRequest], StubResponse] = lambda request: StubResponse(404)
        self.script: list[StubResponse] = []
        self.blob_answer: Callable[[StubRequest, str], StubResponse] | None = None
        self.on_path: dict[str, list[StubResponse]] = {}
        self.manifest_delay = 0.0
        # Called with a manifest's reference before it is answered (in the server's thread).
        self.manifest_gate: Callable[[str], None] = lambda reference: None
        self._lock = threading.Lock()
        server.handler = self.handle

    @property
    def host(self) -> str:
        return self.server.host

    def image(self, reference: str = "v1") -> ImageReference:
        separator = "@" if reference.startswith("sha256:") else ":"
        return ImageReference.parse(f"{self.host}/{self.repository}{separator}{reference}")

    def handle(self, request: StubRequest) -> StubResponse:
        if request.path == "/token":
            return self.token_answer(request)
        with self._lock:
            if self.script:
                return self.script.pop(0)
            scripted = self.on_path.get(request.path)
            if scripted:
                return scripted.pop(0)
        denied = self.auth(request) if self.auth is not None else None
        return denied or self.serve(request)

    def serve(self, request: StubRequest) -> StubResponse:
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", request.path)
        if not match or match.group(1) != self.repository:
            return StubResponse.error(404, "NAME_UNKNOWN", "repository name not known to registry")
        kind, reference = match.group(2), match.group(3)
        if kind == "manifests":
            if reference not in self.manifests:
                return StubResponse.error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            media_type, body = self.manifests[reference]
            self.manifest_gate(reference)
            return StubResponse(
                200,
                body,
                {"Content-Type": media_type, "Docker-Content-Digest": digest_of(body)},
                delay=self.manifest_delay,
            )
        if reference not in self.blobs:
            return StubResponse.error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.blob_answer is not None:
            return self.blob_answer(request, reference)
        return StubResponse(200, b"blob-bytes " * 100, {"Content-Type": "application/octet-stream"})

    def add_manifest(self, document: dict[str, Any], media_type: str, tag: str | None = None) -> str:
        body = json.dumps(document, indent=3).encode()
        digest = digest_of(body)
        self.manifests[digest] = (media_type, body)
        if tag:
            self.manifests[tag] = (media_type, body)
        return digest

    def add_image(
        self, tag: str | None, layers: list[bytes], media_type: str = OCI_MANIFEST
    ) -> tuple[str, list[str]]:
        """An image manifest and its blobs; returns its digest and its blobs' (config first)."""
        docker = media_type == DOCKER_MANIFEST
        config = json.dumps({"architecture": "amd64", "os": "linux", "layers": len(layers)}).encode()
        config_type = (
            "application/vnd.docker.container.image.v1+json"
            if docker
            else "application/vnd.oci.image.config.v1+json"
        )
        layer_type = (
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            if docker
            else "application/vnd.oci.image.layer.v1.tar+gzip"
        )
        document = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": layer_type, "digest": digest_of(layer), "size": len(layer)} for layer in layers
            ],
        }
        blobs = [digest_of(config), *(digest_of(layer) for layer in layers)]
        self.blobs.update(blobs)
        return self.add_manifest(document, media_type, tag), blobs

    def add_index(
        self,
        tag: str | None,
        entries: list[tuple[str, dict[str, str] | None]],
        media_type: str = OCI_INDEX,
        attestations: int = 0,
    ) -> str:
        """An index of (manifest digest, platform) entries, plus BuildKit attestation entries."""
        child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
        manifests: list[dict[str, Any]] = []
        for digest, platform in entries:
            entry: dict[str, Any] = {
                "mediaType": self.manifests[digest][0] if digest in self.manifests else child_type,
                "digest": digest,
                "size": len(self.manifests[digest][1]) if digest in self.manifests else 1,
            }
            if platform is not None:
                entry["platform"] = platform
            manifests.append(entry)
        for number in range(attestations):
            statement, _ = self.add_image(None, [f"in-toto statement {number}".encode()])
            manifests.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": statement,
                    "size": 1,
                    "annotations": {
                        "vnd.docker.reference.digest": entries[number % len(entries)][0],
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                    "platform": {"architecture": "unknown", "os": "unknown"},
                }
            )
        return self.add_manifest(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}, media_type, tag
        )

    def requests_to(self, kind: str) -> list[StubRequest]:
        return [r for r in self.server.requests if f"/{kind}/" in r.path]

    def fetched_manifests(self) -> list[str]:
        return [r.path.rsplit("/", 1)[-1] for r in self.requests_to("manifests")]


def bearer_auth(registry: StubRegistry, token: str, scope: str | None = None) -> Auth:
    scope = scope or f"repository:{registry.repository}:pull"

    def check(request: StubRequest) -> StubResponse | None:
        if request.header("Authorization") == f"Bearer {token}":
            return None
        challenge = f'Bearer realm="http://{registry.host}/token",service="stub-registry",scope="{scope}"'
        return StubResponse.error(
            401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": challenge}
        )

    return check


def basic_auth(expected: str) -> Auth:
    def check(request: StubRequest) -> StubResponse | None:
        if request.header("Authorization") == expected:
            return None
        return StubResponse.error(
            401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": 'Basic realm="stub"'}
        )

    return check


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def server() -> Iterator[StubServer]:
    with StubServer() as stub:
        yield stub
        assert not stub.errors


@pytest.fixture
def storage() -> Iterator[StubServer]:
    """Another origin, standing for S3 or a CDN."""
    with StubServer(lambda request: StubResponse(200, b"blob-bytes")) as stub:
        yield stub
        assert not stub.errors


@pytest.fixture
def fake(server: StubServer) -> StubRegistry:
    return StubRegistry(server)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> HttpRegistryClient:
    # Sleeps are recorded, not slept: the tests assert on the backoff without waiting for it.
    return HttpRegistryClient(SETTINGS, backoff_seconds=0.05, sleep=sleeps.append)


def digests(blobs: list[Any]) -> list[str]:
    return [blob.digest for blob in blobs]


# -- manifests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_image_manifest_resolves_config_and_layers(
    fake: StubRegistry, client: HttpRegistryClient, media_type: str
):
    _, blobs = fake.add_image("v1", [b"layer-one", b"layer-two"], media_type)

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs
    layer = resolved[1]
    assert layer.url == f"http://{fake.host}/v2/app/blobs/{blobs[1]}"
    assert layer.size == len(b"layer-one")
    assert layer.media_type is not None
    assert layer.media_type.endswith("gzip")
    assert layer.filter == ()
    assert not layer.headers
    manifest_request = fake.requests_to("manifests")[0]
    assert manifest_request.header("Accept") == MANIFEST_ACCEPT
    assert len(MANIFEST_ACCEPT.split(",")) == 5
    assert {r.method for r in fake.requests_to("blobs")} == {"GET"}


def test_repeated_layers_resolve_once(fake: StubRegistry, client: HttpRegistryClient):
    _, blobs = fake.add_image("v1", [b"same", b"other", b"same"])

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs[:3]
    assert len(fake.requests_to("blobs")) == 3


def test_schema1_repeated_blob_sums_resolve_once(fake: StubRegistry, client: HttpRegistryClient):
    empty, layer = digest_of(b"empty"), digest_of(b"layer")
    fake.blobs.update({empty, layer})
    document = {
        "schemaVersion": 1,
        "name": "app",
        "tag": "old",
        "fsLayers": [{"blobSum": empty}, {"blobSum": layer}, {"blobSum": empty}, {"blobSum": empty}],
        "history": [{"v1Compatibility": "{}"}] * 4,
    }
    fake.add_manifest(document, DOCKER_SCHEMA1_SIGNED, "old")

    resolved = client.resolve_image(fake.image("old"), Credentials()).blobs

    assert digests(resolved) == [empty, layer]
    assert all(blob.size is None for blob in resolved)


def test_signed_schema1_by_digest_is_verified_against_its_payload(
    fake: StubRegistry, client: HttpRegistryClient
):
    layer = digest_of(b"layer")
    fake.blobs.add(layer)
    payload = json.dumps(
        {"schemaVersion": 1, "name": "app", "tag": "old", "fsLayers": [{"blobSum": layer}], "history": []},
        indent=3,
    ).encode()
    tail = b"\n}"
    assert payload.endswith(tail)
    protected = {
        "formatLength": len(payload) - len(tail),
        "formatTail": base64.urlsafe_b64encode(tail).decode(),
    }
    signature = {
        "header": {"alg": "ES256"},
        "signature": "c2ln",
        "protected": base64.urlsafe_b64encode(json.dumps(protected).encode()).decode().rstrip("="),
    }
    signed = payload[: -len(tail)] + b',\n   "signatures": ' + json.dumps([signature]).encode() + tail
    # The registry addresses a signed schema1 manifest by its payload's digest, not the body's.
    digest = digest_of(payload)
    fake.manifests[digest] = (DOCKER_SCHEMA1_SIGNED, signed)

    resolved = client.resolve_image(fake.image(digest), Credentials()).blobs

    assert digests(resolved) == [layer]


def test_index_resolves_every_platform_and_skips_attestations(fake: StubRegistry, client: HttpRegistryClient):
    amd64, amd64_blobs = fake.add_image(None, [b"shared", b"amd64"])
    arm64, arm64_blobs = fake.add_image(None, [b"shared", b"arm64"])
    attestation, attestation_blobs = fake.add_image(None, [b"in-toto statement"])
    buildkit_attestation, _ = fake.add_image(None, [b"another statement"])
    entry = {"mediaType": OCI_MANIFEST, "size": 1}
    fake.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**entry, "digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
                {**entry, "digest": arm64, "platform": {"architecture": "arm64", "os": "linux"}},
                {**entry, "digest": attestation, "platform": {"architecture": "unknown", "os": "unknown"}},
                {
                    **entry,
                    "digest": buildkit_attestation,
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                },
            ],
        },
        OCI_INDEX,
        "multi",
    )

    resolution = client.resolve_image(fake.image("multi"), Credentials())

    resolved = resolution.blobs
    expected = list(dict.fromkeys(amd64_blobs + arm64_blobs))
    assert sorted(digests(resolved)) == sorted(expected)
    fetched = set(fake.fetched_manifests())
    assert attestation not in fetched
    assert buildkit_attestation not in fetched
    assert not set(attestation_blobs[1:]) & set(digests(resolved))
    assert resolution.platforms == ("linux/amd64", "linux/arm64")
    assert resolution.skipped_attestations == 2


def test_each_blob_names_the_platform_manifest_that_lists_it_by_digest(fake: StubRegistry):
    """A scheduler creates blob-digest task ids only through a preheat of the manifest: each blob
    says which one (the first platform's for a blob two share; the image's own for a single one)."""
    amd64, amd64_blobs = fake.add_image(None, [b"shared", b"amd64"])
    arm64, arm64_blobs = fake.add_image(None, [b"shared", b"arm64"])
    entry = {"mediaType": OCI_MANIFEST, "size": 1}
    fake.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**entry, "digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
                {**entry, "digest": arm64, "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        },
        OCI_INDEX,
        "multi",
    )
    single, single_blobs = fake.add_image("v1", [b"layer"])
    client = HttpRegistryClient(replace(SETTINGS, layer_urls="registry"))

    multi = {
        blob.digest: blob.manifest_url
        for blob in client.resolve_image(fake.image("multi"), Credentials()).blobs
    }
    [only] = client.resolve_image(fake.image("v1"), Credentials()).blobs[-1:]

    base = fake.image("multi").base_url(True)
    for digest in amd64_blobs:
        assert multi[digest] == f"{base}/manifests/{amd64}"
    for digest in set(arm64_blobs) - set(amd64_blobs):
        assert multi[digest] == f"{base}/manifests/{arm64}"
    assert only.digest == single_blobs[-1]
    assert only.manifest_url == f"{fake.image('v1').base_url(True)}/manifests/{single}"


def test_docker_manifest_list_children_are_verified(fake: StubRegistry, client: HttpRegistryClient):
    child, _ = fake.add_image(None, [b"layer"], DOCKER_MANIFEST)
    fake.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": child, "size": 1, "platform": {"os": "linux"}}
            ],
        },
        DOCKER_MANIFEST_LIST,
        "list",
    )
    # The registry answers the child's digest with other bytes.
    media_type, body = fake.manifests[child]
    fake.manifests[child] = (media_type, body + b" ")

    with pytest.raises(PermanentFailure, match=rf"manifest {child} .*digest is sha256:[0-9a-f]{{64}}, not"):
        client.resolve_image(fake.image("list"), Credentials())


# -- platforms -----------------------------------------------------------------------------------

AMD64 = {"architecture": "amd64", "os": "linux"}
ARM64_V8 = {"architecture": "arm64", "os": "linux", "variant": "v8"}
S390X = {"architecture": "s390x", "os": "linux"}


@pytest.fixture
def multi(fake: StubRegistry) -> dict[str, tuple[str, list[str]]]:
    """``multi:v1``: linux/amd64, linux/arm64/v8 and linux/s390x images, and one attestation."""
    images = {
        "linux/amd64": fake.add_image(None, [b"shared", b"amd64"]),
        "linux/arm64/v8": fake.add_image(None, [b"shared", b"arm64"]),
        "linux/s390x": fake.add_image(None, [b"shared", b"s390x"]),
    }
    fake.add_index(
        "multi",
        [
            (images["linux/amd64"][0], AMD64),
            (images["linux/arm64/v8"][0], ARM64_V8),
            (images["linux/s390x"][0], S390X),
        ],
        attestations=1,
    )
    return images


@pytest.mark.parametrize("requested", ["linux/arm64", "linux/arm64/v8", "LINUX/ARM64/V8"])
def test_requested_platform_narrows_the_index(
    fake: StubRegistry, client: HttpRegistryClient, multi: dict[str, tuple[str, list[str]]], requested: str
):
    arm64, arm64_blobs = multi["linux/arm64/v8"]

    resolution = client.resolve_image(fake.image("multi"), Credentials(), [Platform.parse(requested)])

    assert digests(resolution.blobs) == arm64_blobs
    assert resolution.platforms == ("linux/arm64/v8",)
    assert resolution.skipped_attestations == 1
    # Only the platform image asked for is fetched.
    assert fake.fetched_manifests() == ["multi", arm64]


def test_several_requested_platforms_take_each(
    fake: StubRegistry, client: HttpRegistryClient, multi: dict[str, tuple[str, list[str]]]
):
    requested = [Platform.parse("linux/s390x"), Platform.parse("linux/amd64")]

    resolution = client.resolve_image(fake.image("multi"), Credentials(), requested)

    expected = dict.fromkeys(multi["linux/amd64"][1] + multi["linux/s390x"][1])
    assert sorted(digests(resolution.blobs)) == sorted(expected)
    assert resolution.platforms == ("linux/amd64", "linux/s390x")


@pytest.mark.parametrize(
    ("offered", "requested", "matches"),
    [
        ({"architecture": "arm64", "os": "linux"}, "linux/arm64/v8", True),  # v8 is arm64's default
        ({"architecture": "arm64", "os": "linux", "variant": "v8"}, "linux/arm64", True),
        ({"architecture": "arm", "os": "linux", "variant": "v7"}, "linux/arm", True),
        ({"architecture": "arm", "os": "linux"}, "linux/arm/v7", True),  # v7 is arm's default
        ({"architecture": "arm", "os": "linux", "variant": "v6"}, "linux/arm/v7", False),
        ({"architecture": "amd64", "os": "windows"}, "linux/amd64", False),
    ],
)
def test_variant_matching(
    fake: StubRegistry,
    client: HttpRegistryClient,
    offered: dict[str, str],
    requested: str,
    matches: bool,
):
    image, blobs = fake.add_image(None, [b"layer"])
    fake.add_index("v1", [(image, offered)])

    if matches:
        resolution = client.resolve_image(fake.image("v1"), Credentials(), [Platform.parse(requested)])
        assert digests(resolution.blobs) == blobs
        assert resolution.platforms == (str(Platform.of_index_entry(offered)),)
    else:
        with pytest.raises(PermanentFailure, match=f"platform {requested} is not in the index"):
            client.resolve_image(fake.image("v1"), Credentials(), [Platform.parse(requested)])


def test_missing_platform_fails_naming_the_platforms_the_index_has(
    fake: StubRegistry, client: HttpRegistryClient, multi: dict[str, tuple[str, list[str]]]
):
    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("multi"), Credentials(), [Platform.parse("windows/amd64")])

    assert str(caught.value) == (
        f"platform windows/amd64 is not in the index of {fake.host}/app:multi; "
        "it has linux/amd64, linux/arm64/v8, linux/s390x"
    )
    assert fake.fetched_manifests() == ["multi"]  # failed before fetching any platform image
    assert not fake.requests_to("blobs")


def test_every_missing_platform_is_named(
    fake: StubRegistry, client: HttpRegistryClient, multi: dict[str, tuple[str, list[str]]]
):
    requested = [Platform.parse(p) for p in ("linux/amd64", "linux/ppc64le", "linux/riscv64")]

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("multi"), Credentials(), requested)

    assert str(caught.value).startswith(
        f"platforms linux/ppc64le, linux/riscv64 are not in the index of {fake.host}/app:multi; it has "
    )
    assert not fake.requests_to("blobs")


def test_platform_names_the_registry_wrote_are_cut_short(fake: StubRegistry, client: HttpRegistryClient):
    image, _ = fake.add_image(None, [b"layer"])
    fake.add_index("odd", [(image, {"architecture": "amd64", "os": "x" * 500})])

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("odd"), Credentials(), [Platform.parse("linux/amd64")])

    assert str(caught.value).endswith(f"; it has {'x' * 64}...")


def test_a_single_image_ignores_requested_platforms(fake: StubRegistry, client: HttpRegistryClient):
    _, blobs = fake.add_image("v1", [b"layer"])

    resolution = client.resolve_image(fake.image("v1"), Credentials(), [Platform.parse("linux/s390x")])

    assert digests(resolution.blobs) == blobs
    assert resolution.platforms == ()
    assert resolution.skipped_attestations == 0


def test_docker_manifest_list_is_narrowed_like_an_index(fake: StubRegistry, client: HttpRegistryClient):
    amd64, _ = fake.add_image(None, [b"amd64"], DOCKER_MANIFEST)
    arm64, arm64_blobs = fake.add_image(None, [b"arm64"], DOCKER_MANIFEST)
    fake.add_index(
        "list", [(amd64, AMD64), (arm64, {"architecture": "arm64", "os": "linux"})], DOCKER_MANIFEST_LIST
    )

    resolution = client.resolve_image(fake.image("list"), Credentials(), [Platform.parse("linux/arm64/v8")])

    assert digests(resolution.blobs) == arm64_blobs
    assert resolution.platforms == ("linux/arm64",)


def test_nested_index_is_narrowed_at_the_level_of_its_images(fake: StubRegistry, client: HttpRegistryClient):
    amd64, _ = fake.add_image(None, [b"amd64"])
    arm64, arm64_blobs = fake.add_image(None, [b"arm64"])
    inner = fake.add_index(None, [(amd64, AMD64), (arm64, ARM64_V8)], attestations=2)
    fake.add_index("nested", [(inner, None)])

    resolution = client.resolve_image(fake.image("nested"), Credentials(), [Platform.parse("linux/arm64")])

    assert digests(resolution.blobs) == arm64_blobs
    assert resolution.platforms == ("linux/arm64/v8",)
    assert resolution.skipped_attestations == 2
    assert fake.fetched_manifests() == ["nested", inner, arm64]

    with pytest.raises(
        PermanentFailure,
        match=r"platform linux/s390x is not in the index .* it has linux/amd64, linux/arm64/v8",
    ):
        client.resolve_image(fake.image("nested"), Credentials(), [Platform.parse("linux/s390x")])


def test_one_manifest_listed_under_two_platforms_is_fetched_once(
    fake: StubRegistry, client: HttpRegistryClient
):
    image, blobs = fake.add_image(None, [b"portable"])
    fake.add_index("v1", [(image, AMD64), (image, {"architecture": "amd64", "os": "linux", "variant": "v2"})])

    resolution = client.resolve_image(fake.image("v1"), Credentials())

    assert digests(resolution.blobs) == blobs
    assert resolution.platforms == ("linux/amd64", "linux/amd64/v2")
    assert fake.fetched_manifests() == ["v1", image]


def test_an_index_of_attestations_only_fails(fake: StubRegistry, client: HttpRegistryClient):
    statement, _ = fake.add_image(None, [b"in-toto"])
    fake.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": statement,
                    "size": 1,
                    "platform": {"architecture": "unknown", "os": "unknown"},
                }
            ],
        },
        OCI_INDEX,
        "attestations",
    )

    with pytest.raises(PermanentFailure, match="is an index that lists no platform image"):
        client.resolve_image(fake.image("attestations"), Credentials())


def test_platform_manifests_are_fetched_concurrently(fake: StubRegistry, client: HttpRegistryClient):
    entries = []
    for number in range(8):
        image, _ = fake.add_image(None, [f"layer {number}".encode()])
        entries.append((image, {"architecture": f"arch{number}", "os": "linux"}))
    fake.add_index("wide", entries)
    children = {image for image, _ in entries}
    lock = threading.Lock()
    in_flight: dict[str, int] = {}  # platform image -> its requests being answered
    peak = [0]
    together = threading.Event()

    def gate(reference: str) -> None:
        # Each platform image's answer waits until another platform image is being fetched at the
        # same time. One after another, none would meet another (a retry of the same image after a
        # timeout does not count): the peak would stay 1 and the resolution fail.
        if reference not in children:
            return
        with lock:
            in_flight[reference] = in_flight.get(reference, 0) + 1
            peak[0] = max(peak[0], len(in_flight))
            if len(in_flight) >= 2:
                together.set()
        together.wait(10)
        with lock:
            in_flight[reference] -= 1
            if not in_flight[reference]:
                del in_flight[reference]

    fake.manifest_gate = gate

    resolution = client.resolve_image(fake.image("wide"), Credentials())

    assert peak[0] >= 2, "the platform images were fetched one after another"
    assert len(resolution.platforms) == 8


def test_index_with_more_than_64_platforms_fails(fake: StubRegistry, client: HttpRegistryClient):
    entries = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(str(n).encode()),
            "size": 1,
            "platform": {"os": "linux"},
        }
        for n in range(65)
    ]
    fake.add_manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX, "huge")

    with pytest.raises(PermanentFailure, match="more than 64 platform images"):
        client.resolve_image(fake.image("huge"), Credentials())
    assert len(fake.requests_to("manifests")) == 1


def test_an_index_with_more_blobs_than_a_task_holds_fails_before_any_blob_is_probed(
    fake: StubRegistry, client: HttpRegistryClient
):
    amd64, _ = fake.add_image(None, [f"amd64 {n}".encode() for n in range(600)])
    arm64, _ = fake.add_image(None, [f"arm64 {n}".encode() for n in range(600)])
    fake.add_index(
        "wide",
        [
            (amd64, {"os": "linux", "architecture": "amd64"}),
            (arm64, {"os": "linux", "architecture": "arm64"}),
        ],
    )

    with pytest.raises(
        PermanentFailure, match="has 1201 distinct blobs over its platform images; at most 1024"
    ):
        client.resolve_image(fake.image("wide"), Credentials())
    assert fake.requests_to("blobs") == []
    # One platform of it fits.
    arm = client.resolve_image(fake.image("wide"), Credentials(), [Platform.parse("linux/arm64")])
    assert len(arm.blobs) == 601


def test_manifest_with_more_than_1000_layers_fails(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("deep", [str(n).encode() for n in range(1001)])

    with pytest.raises(PermanentFailure, match="1001 layers; at most 1000"):
        client.resolve_image(fake.image("deep"), Credentials())
    assert not fake.requests_to("blobs")


def test_unknown_media_type_is_named(fake: StubRegistry, client: HttpRegistryClient):
    fake.manifests["odd"] = (
        "application/vnd.example.thing+json",
        b'{"mediaType": "application/vnd.example.thing+json"}',
    )

    with pytest.raises(
        PermanentFailure, match=r"unsupported media type 'application/vnd\.example\.thing\+json'"
    ):
        client.resolve_image(fake.image("odd"), Credentials())


def test_manifest_by_digest_is_verified(fake: StubRegistry, client: HttpRegistryClient):
    digest, blobs = fake.add_image(None, [b"layer"])
    assert digests(client.resolve_image(fake.image(digest), Credentials()).blobs) == blobs

    media_type, body = fake.manifests[digest]
    fake.manifests[digest] = (media_type, body.replace(b'"schemaVersion"', b'"schemaVersion" '))
    with pytest.raises(
        PermanentFailure, match=f"digest is sha256:[0-9a-f]{{64}}, not the requested {digest}"
    ):
        client.resolve_image(fake.image(digest), Credentials())


def test_manifest_over_the_limit_is_cut_off_while_streaming(fake: StubRegistry, client: HttpRegistryClient):
    sent = []

    def endless() -> Iterator[bytes]:
        chunk = b" " * 65536
        for _ in range(1024):  # 64 MiB if nobody stops reading
            sent.append(len(chunk))
            yield chunk

    fake.script.append(StubResponse(200, endless(), {"Content-Type": OCI_MANIFEST}))

    with pytest.raises(PermanentFailure, match="larger than 1048576 bytes"):
        client.resolve_image(fake.image("v1"), Credentials())
    # Cut off while streaming: far less than the 64 MiB on offer was produced.
    assert sum(sent) < 32 * 1024 * 1024


def test_manifest_declared_over_the_limit_is_not_read(fake: StubRegistry, client: HttpRegistryClient):
    fake.script.append(
        StubResponse(200, b"{" + b" " * (4 * 1024 * 1024) + b"}", {"Content-Type": OCI_MANIFEST})
    )

    with pytest.raises(PermanentFailure, match="4194306 bytes long; at most 1048576"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_the_manifest_limit_is_a_setting_of_1_mib_by_default(fake: StubRegistry):
    # Given a 1.5 MiB manifest (real ones weigh 1-300 KB), declared by its Content-Length
    body = b"{" + b" " * (3 * 512 * 1024) + b"}"
    fake.script.append(StubResponse(200, body, {"Content-Type": OCI_MANIFEST}))

    # When the default limit reads it, it is refused unread; a deployment that raised it reads it
    with pytest.raises(PermanentFailure, match=f"{len(body)} bytes long; at most 1048576"):
        HttpRegistryClient(SETTINGS).resolve_image(fake.image("v1"), Credentials())
    fake.script.append(StubResponse(200, body, {"Content-Type": OCI_MANIFEST}))
    roomy = replace(SETTINGS, max_manifest_bytes=2 * 1024 * 1024)
    with pytest.raises(PermanentFailure, match="an image manifest without 'config'"):
        HttpRegistryClient(roomy).resolve_image(fake.image("v1"), Credentials())


EMPTY_LAYER = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


def hostile_index(fake: StubRegistry, children: int, layers: int) -> None:
    """An index of ``children`` images, each listing the empty layer ``layers`` times (issue 22)."""
    entries = []
    for number in range(children):
        config = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(b"%d" % number),
        }
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {**config, "size": 1},
            "layers": [{"digest": EMPTY_LAYER, "size": 32}] * layers,
        }
        entries.append(
            (fake.add_manifest(document, OCI_MANIFEST), {"os": "linux", "architecture": f"a{number}"})
        )
    fake.add_index("hostile", entries)


def test_a_manifest_naming_thousands_of_layers_is_refused_before_it_is_parsed(
    fake: StubRegistry, client: HttpRegistryClient, monkeypatch: pytest.MonkeyPatch
):
    # Given an index whose 8 children each list the empty layer 3000 times (within the size limit)
    hostile_index(fake, children=8, layers=3000)
    parsed: list[int] = []
    real_loads = registry_manifests._loads
    monkeypatch.setattr(
        registry_manifests, "_loads", lambda body: parsed.append(len(body)) or real_loads(body)
    )

    # When it is resolved
    with pytest.raises(PermanentFailure, match="names 3001 descriptors; at most 1000 layers"):
        client.resolve_image(fake.image("hostile"), Credentials())

    # Then only the index was parsed: each child was refused by its count, not after its parse
    assert len(parsed) == 1


def test_an_index_fetches_its_manifests_4_at_a_time(
    fake: StubRegistry, client: HttpRegistryClient, monkeypatch: pytest.MonkeyPatch
):
    # Given an index of 8 platform images, and pools recorded as the client makes them
    entries = []
    for number in range(8):
        image, _ = fake.add_image(None, [f"layer {number}".encode()])
        entries.append((image, {"architecture": f"arch{number}", "os": "linux"}))
    fake.add_index("wide", entries)
    pools: list[int] = []
    real_pool = fail_fast.ThreadPoolExecutor

    def pool(max_workers: int, **kwargs: Any) -> Any:
        pools.append(max_workers)
        return real_pool(max_workers, **kwargs)

    monkeypatch.setattr(fail_fast, "ThreadPoolExecutor", pool)

    # When it is resolved (blob URLs probed on the client's 64 threads)
    resolution = client.resolve_image(fake.image("wide"), Credentials())

    # Then its manifests were fetched on 4 threads, each manifest costing at most its size limit
    assert len(resolution.platforms) == 8
    assert pools[0] == registry_module.MAX_MANIFESTS_IN_FLIGHT == 4


def test_missing_manifest_quotes_the_registry_error(fake: StubRegistry, client: HttpRegistryClient):
    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("nope"), Credentials())

    assert str(caught.value) == (
        f"manifest for {fake.host}/app:nope not found on registry {fake.host} "
        "(MANIFEST_UNKNOWN: manifest unknown)"
    )
    assert len(fake.requests_to("manifests")) == 1  # a 404 is not retried


def test_missing_blob_fails_permanently(fake: StubRegistry, client: HttpRegistryClient):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.blobs.discard(blobs[1])

    with pytest.raises(PermanentFailure, match=f"blob {blobs[1]} of .* not found on registry .*BLOB_UNKNOWN"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_blobs_are_resolved_concurrently(fake: StubRegistry, client: HttpRegistryClient):
    """Each blob's answer waits until 8 blob requests are in flight at once: a client resolving
    fewer at a time never gets its answers (no timing involved)."""
    _, blobs = fake.add_image("v1", [f"layer {n}".encode() for n in range(31)])  # 32 blobs
    together = threading.Barrier(8)

    def answer(request: StubRequest, digest: str) -> StubResponse:
        together.wait(timeout=10)
        return StubResponse(200, b"x")

    fake.blob_answer = answer
    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs  # in manifest order, whatever order they finished in


def test_blobs_are_probed_for_one_byte_and_connections_reused(fake: StubRegistry):
    """A ranged GET lets the registry answer one byte: the connection goes back to the pool instead
    of being dropped with a whole blob unread."""
    _, blobs = fake.add_image("v1", [f"layer {n}".encode() for n in range(79)])
    big = b"x" * (1024 * 1024)
    fake.blob_answer = lambda request, digest: (
        StubResponse(206, big[:1], {"Content-Range": f"bytes 0-0/{len(big)}"})
        if request.header("Range") == PROBE_RANGE
        else StubResponse(200, big)
    )
    client = HttpRegistryClient(SETTINGS, max_workers=8)

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs
    assert {r.header("Range") for r in fake.requests_to("blobs")} == {PROBE_RANGE}
    assert fake.requests_to("manifests")[0].header("Range") is None
    assert fake.server.connections <= 8  # 81 requests over at most one connection per worker


def test_empty_blob_answering_416_is_resolved(fake: StubRegistry, client: HttpRegistryClient):
    _, blobs = fake.add_image("v1", [b""])
    fake.blob_answer = lambda request, digest: StubResponse(416, b"", {"Content-Range": "bytes */0"})

    assert digests(client.resolve_image(fake.image("v1"), Credentials()).blobs) == blobs


# -- auth ----------------------------------------------------------------------------------------


def test_anonymous_bearer_token(fake: StubRegistry, client: HttpRegistryClient):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "anon-token")
    fake.token_answer = lambda request: StubResponse.json({"token": "anon-token", "expires_in": 300})

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs
    token_request = fake.server.requests_to("/token")[0]
    assert token_request.header("Authorization") is None
    assert token_request.query == {"service": ["stub-registry"], "scope": ["repository:app:pull"]}
    # The supernode downloads from the registry itself, so it needs the token too.
    assert resolved[0].headers.reveal() == {"Authorization": "Bearer anon-token"}


def test_basic_credentials_are_exchanged_for_an_access_token(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    caller = basic("alice", "pw")
    fake.auth = bearer_auth(fake, "alice-token", scope="repository:app:pull,push")

    def token(request: StubRequest) -> StubResponse:
        if request.header("Authorization") != caller:
            return StubResponse(401)
        return StubResponse.json({"access_token": "alice-token"})

    fake.token_answer = token

    resolved = client.resolve_image(
        fake.image("v1"), Credentials({"Authorization": caller, "X-Tenant": "t1"})
    ).blobs

    assert resolved[0].headers.reveal() == {"Authorization": "Bearer alice-token", "X-Tenant": "t1"}
    assert fake.server.requests_to("/token")[0].query["scope"] == ["repository:app:pull,push"]
    registry_requests = [r for r in fake.server.requests if r.path.startswith("/v2/")]
    assert all(r.header("X-Tenant") == "t1" for r in registry_requests)
    assert [r.header("Authorization") for r in registry_requests][:2] == [caller, "Bearer alice-token"]


def test_token_is_reused_until_it_expires(
    fake: StubRegistry, client: HttpRegistryClient, monkeypatch: pytest.MonkeyPatch
):
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "t")
    fake.token_answer = lambda request: StubResponse.json({"token": "t", "expires_in": 60})
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])

    client.resolve_image(fake.image("v1"), Credentials())
    client.resolve_image(fake.image("v1"), Credentials())

    assert len(fake.server.requests_to("/token")) == 1
    unauthorized = [
        r for r in fake.server.requests if r.path.startswith("/v2/") and not r.header("Authorization")
    ]
    assert len(unauthorized) == 1  # the second resolution started with the cached token

    now[0] += 61
    client.resolve_image(fake.image("v1"), Credentials())
    assert len(fake.server.requests_to("/token")) == 2


def test_token_is_not_shared_between_callers(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "alice-token")
    caller = basic("alice", "pw")
    fake.token_answer = lambda request: (
        StubResponse.json({"token": "alice-token"})
        if request.header("Authorization") == caller
        else StubResponse.json({"token": "anonymous-token"})
    )
    client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller}))

    with pytest.raises(PermanentFailure, match="requires credentials for repository app"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_basic_challenge_uses_the_callers_header(fake: StubRegistry, client: HttpRegistryClient):
    caller = basic("bob", "pw")
    fake.add_image("v1", [b"layer"])
    fake.auth = basic_auth(caller)

    resolved = client.resolve_image(fake.image("v1"), Credentials({"authorization": caller})).blobs

    assert resolved[0].headers.reveal() == {"Authorization": caller}
    assert not fake.server.requests_to("/token")


def test_basic_challenge_without_credentials_fails(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    fake.auth = basic_auth(basic("bob", "pw"))

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("v1"), Credentials())

    assert f"registry {fake.host} requires credentials for repository app" in str(caught.value)


def test_callers_bearer_token_is_used_as_given(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "harbor-minted")

    resolved = client.resolve_image(
        fake.image("v1"), Credentials({"Authorization": "Bearer harbor-minted"})
    ).blobs

    assert resolved[0].headers.reveal() == {"Authorization": "Bearer harbor-minted"}
    assert not fake.server.requests_to("/token")
    assert all(r.header("Authorization") == "Bearer harbor-minted" for r in fake.server.requests)


def test_a_refused_fresh_token_is_not_asked_for_again(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "the-only-good-token")
    fake.token_answer = lambda request: StubResponse.json({"token": f"useless-{len(fake.server.requests)}"})

    with pytest.raises(PermanentFailure, match="requires credentials for repository app"):
        client.resolve_image(fake.image("v1"), Credentials())

    assert len(fake.server.requests_to("/token")) == 1
    assert len(fake.requests_to("manifests")) == 2


def test_blobs_meeting_the_challenge_together_fetch_one_token(fake: StubRegistry, client: HttpRegistryClient):
    """Manifests are public here, blobs are not: 20 blob requests answered 401 at once share a token."""
    _, blobs = fake.add_image("v1", [f"layer {n}".encode() for n in range(19)])
    blob_auth = bearer_auth(fake, "blob-token")
    fake.auth = lambda request: blob_auth(request) if "/blobs/" in request.path else None

    def token(request: StubRequest) -> StubResponse:
        time.sleep(0.05)  # long enough for every blob request to meet the challenge meanwhile
        return StubResponse.json({"token": "blob-token"})

    fake.token_answer = token

    resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert digests(resolved) == blobs
    assert len(fake.server.requests_to("/token")) == 1
    assert all(blob.headers.reveal() == {"Authorization": "Bearer blob-token"} for blob in resolved)


def test_our_accept_and_range_replace_the_callers(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    headers = Credentials(
        {"accept": "text/html", "RANGE": "bytes=5-", "If-None-Match": '"x"', "X-Tenant": "t"}
    )

    resolved = client.resolve_image(fake.image("v1"), headers).blobs

    # A range or a condition would cut the answer short, here and at the supernode.
    assert {name.lower() for name in resolved[0].headers.reveal()} == {"accept", "x-tenant"}

    manifest = fake.requests_to("manifests")[0]
    assert manifest.headers.get_all("Accept") == [MANIFEST_ACCEPT]
    assert manifest.headers.get_all("Range") is None
    assert manifest.headers.get_all("If-None-Match") is None
    for blob in fake.requests_to("blobs"):
        assert blob.headers.get_all("Range") == [PROBE_RANGE]
        assert blob.header("X-Tenant") == "t"


def test_header_values_http_cannot_carry_fail_without_echoing_them(
    fake: StubRegistry, client: HttpRegistryClient
):
    fake.add_image("v1", [b"layer"])

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("v1"), Credentials({"Authorization": f"Bearer {CANARY}\u20ac"}))

    assert "must be printable Latin-1" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert CANARY not in repr(caught.value)


def test_foreign_layer_is_fetched_from_its_url_without_credentials(
    fake: StubRegistry, storage: StubServer, client: HttpRegistryClient
):
    digest, _ = fake.add_image("v1", [b"layer"])
    media_type, body = fake.manifests[digest]
    document = json.loads(body)
    foreign = digest_of(b"windows base layer")
    document["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": foreign,
            "size": 18,
            "urls": [f"http://{storage.host}/windows/base.tar.gz"],
        }
    )
    fake.add_manifest(document, media_type, "v1")
    caller = basic("alice", "pw")

    resolved = client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller})).blobs

    assert resolved[-1].digest == foreign
    assert resolved[-1].url == f"http://{storage.host}/windows/base.tar.gz"
    assert not resolved[-1].headers
    assert storage.requests[0].header("Authorization") is None
    assert resolved[0].headers.reveal() == {"Authorization": caller}


@pytest.mark.parametrize("challenge", ["basic", "bearer-given", "bearer-exchanged"])
def test_refused_credentials_never_show_the_secret(
    fake: StubRegistry, client: HttpRegistryClient, caplog: pytest.LogCaptureFixture, challenge: str
):
    caplog.set_level(logging.DEBUG)
    fake.add_image("v1", [b"layer"])
    caller = basic("alice", CANARY) if challenge != "bearer-given" else f"Bearer {CANARY}"
    if challenge == "basic":
        fake.auth = basic_auth(basic("alice", "right"))
    else:
        fake.auth = bearer_auth(fake, "right-token")
    # A registry that echoes what it was sent must not leak it through our message either.
    fake.token_answer = lambda request: StubResponse.error(
        401, "DENIED", f"bad credentials {request.header('Authorization')} for alice:{CANARY}"
    )
    original = fake.auth

    def echoing(request: StubRequest) -> StubResponse | None:
        denied = original(request)
        if denied is None:
            return None
        echoed = StubResponse.error(401, "UNAUTHORIZED", f"you sent {request.header('Authorization')}")
        echoed.headers.update({k: v for k, v in denied.headers.items() if k == "WWW-Authenticate"})
        return echoed

    fake.auth = echoing

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller, "X-Key": CANARY}))

    text = f"{caught.value} {caught.value!r} {caught.value.args}"
    assert f"registry {fake.host} refused the credentials for repository app" in str(caught.value)
    assert CANARY not in text
    assert base64.b64encode(f"alice:{CANARY}".encode()).decode() not in text
    assert CANARY not in caplog.text


# -- retries -------------------------------------------------------------------------------------


def test_throttling_honours_retry_after(fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.script.append(StubResponse.error(429, "TOOMANYREQUESTS", "slow down", **{"Retry-After": "3"}))

    assert digests(client.resolve_image(fake.image("v1"), Credentials()).blobs) == blobs
    assert sleeps == [3.0]


def test_retry_after_is_capped(fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]):
    fake.add_image("v1", [b"layer"])
    fake.script.append(StubResponse(503, b"", {"Retry-After": "3600"}))

    client.resolve_image(fake.image("v1"), Credentials())

    assert sleeps == [10.0]


def test_retry_after_as_an_http_date(fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]):
    fake.add_image("v1", [b"layer"])
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    fake.script.append(StubResponse.error(429, "TOOMANYREQUESTS", "slow down", **{"Retry-After": later}))

    client.resolve_image(fake.image("v1"), Credentials())

    assert len(sleeps) == 1
    assert 3 <= sleeps[0] <= 5


def test_throttled_blob_is_retried_alone(fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]):
    _, blobs = fake.add_image("v1", [b"one", b"two"])
    path = f"/v2/app/blobs/{blobs[2]}"
    fake.on_path[path] = [StubResponse.error(429, "TOOMANYREQUESTS", "slow down", **{"Retry-After": "2"})]

    assert digests(client.resolve_image(fake.image("v1"), Credentials()).blobs) == blobs
    assert sleeps == [2.0]
    assert len(fake.server.requests_to(path)) == 2
    assert len(fake.requests_to("manifests")) == 1  # the rest is not resolved again


def test_server_error_on_a_platform_manifest_then_success(
    fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]
):
    amd64, amd64_blobs = fake.add_image(None, [b"amd64"])
    arm64, arm64_blobs = fake.add_image(None, [b"arm64"])
    fake.add_index("multi", [(amd64, AMD64), (arm64, ARM64_V8)])
    fake.on_path[f"/v2/app/manifests/{arm64}"] = [StubResponse.error(503, "UNAVAILABLE", "try again")]

    resolution = client.resolve_image(fake.image("multi"), Credentials())

    assert sorted(digests(resolution.blobs)) == sorted(set(amd64_blobs + arm64_blobs))
    assert len(sleeps) == 1
    assert fake.fetched_manifests().count(arm64) == 2


def test_server_errors_on_one_blob_fail_the_image_as_transient(
    fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]
):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.on_path[f"/v2/app/blobs/{blobs[1]}"] = [StubResponse(500) for _ in range(4)]

    with pytest.raises(TransientFailure, match=rf"could not resolve the blob {blobs[1]} .*HTTP 500"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_server_error_then_success(fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.script.append(StubResponse(500))

    assert digests(client.resolve_image(fake.image("v1"), Credentials()).blobs) == blobs
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 0.05


def test_server_error_forever_is_transient(
    fake: StubRegistry, client: HttpRegistryClient, sleeps: list[float]
):
    fake.script.extend(StubResponse.error(502, "UNAVAILABLE", "upstream down") for _ in range(10))

    with pytest.raises(TransientFailure) as caught:
        client.resolve_image(fake.image("v1"), Credentials())

    assert "HTTP 502: UNAVAILABLE: upstream down" in str(caught.value)
    assert "gave up after 4 attempts" in str(caught.value)
    assert len(fake.server.requests) == 4
    # Exponential backoff with full jitter: each wait is at most twice the one before's bound.
    assert len(sleeps) == 3
    assert all(0 <= delay <= 0.05 * 2**n for n, delay in enumerate(sleeps))


def test_slow_registry_times_out(fake: StubRegistry):
    fake.add_image("v1", [b"layer"])
    # An answer that arrives at all would end the resolution otherwise ("{}" is no manifest): the
    # message proves each of the 4 attempts gave up at its 0.1 s timeout instead.
    fake.script.extend(StubResponse(200, b"{}", delay=1.0) for _ in range(4))
    settings = replace(SETTINGS, registry_timeout_seconds=0.1)
    client = HttpRegistryClient(settings, sleep=lambda seconds: None)

    with pytest.raises(TransientFailure, match=r"timed out after 0\.1s .*gave up after 4 attempts"):
        client.resolve_image(fake.image("v1"), Credentials())
    assert len(fake.requests_to("manifests")) == 4


def test_slow_storage_times_out(fake: StubRegistry, storage: StubServer):
    fake.add_image("v1", [b"layer"])
    fake.blob_answer = lambda request, digest: StubResponse.redirect(f"http://{storage.host}/{digest}")
    storage.handler = lambda request: StubResponse(200, b"late", delay=1.0)
    settings = replace(SETTINGS, registry_timeout_seconds=0.1)
    client = HttpRegistryClient(settings, attempts=2, sleep=lambda seconds: None)

    # "late" would be a good answer: the message proves the client stopped waiting at 0.1 s.
    with pytest.raises(TransientFailure, match=r"could not resolve the blob .*timed out after 0\.1s"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_unreachable_registry_is_transient(client: HttpRegistryClient):
    with StubServer() as gone:
        host = gone.host
    with pytest.raises(TransientFailure, match="connection failed"):
        client.resolve_image(ImageReference.parse(f"{host}/app:v1"), Credentials())


# -- redirects -----------------------------------------------------------------------------------


def test_redirect_to_storage_drops_credentials_and_lists_signature_params(
    fake: StubRegistry, storage: StubServer, client: HttpRegistryClient
):
    _, blobs = fake.add_image("v1", [b"layer"])
    caller = basic("alice", "pw")
    fake.auth = basic_auth(caller)
    fake.blob_answer = lambda request, digest: StubResponse.redirect(
        f"http://{storage.host}/bucket/{digest}?{AMZ_QUERY}&response-content-type=x"
    )

    resolved = client.resolve_image(
        fake.image("v1"), Credentials({"Authorization": caller, "X-Tenant": "t1"})
    ).blobs

    for blob in resolved:
        assert blob.url.startswith(f"http://{storage.host}/bucket/{blob.digest}?X-Amz-Algorithm=")
        assert not blob.headers
        assert blob.filter == (
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        )
    assert len(storage.requests) == len(blobs)
    for request in storage.requests:
        assert request.method == "GET"  # presigned for GET: the registry was asked with GET
        assert request.header("Authorization") is None
        assert request.header("X-Tenant") is None


def test_redirect_on_the_registry_keeps_credentials(fake: StubRegistry, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    caller = basic("alice", "pw")
    fake.auth = basic_auth(caller)
    fake.blob_answer = lambda request, digest: (
        StubResponse.redirect(f"/v2/app/blobs/{digest}?moved=1")
        if "moved" not in request.query
        else StubResponse(200, b"x")
    )

    resolved = client.resolve_image(fake.image("v1"), Credentials({"Authorization": caller})).blobs

    assert resolved[0].url.endswith("?moved=1")
    assert resolved[0].headers.reveal() == {"Authorization": caller}


def test_ten_redirects_are_followed_and_eleven_are_a_loop(storage: StubServer, client: HttpRegistryClient):
    def hops(limit: int) -> Callable[[StubRequest], StubResponse]:
        def answer(request: StubRequest) -> StubResponse:
            hop = int(request.path.rsplit("/", 1)[-1])
            return StubResponse.redirect(f"/hop/{hop + 1}") if hop < limit else StubResponse(200, b"file")

        return answer

    storage.handler = hops(10)
    blob = client.resolve_file(f"http://{storage.host}/hop/0", Credentials())
    assert blob.url == f"http://{storage.host}/hop/10"

    storage.handler = hops(11)
    with pytest.raises(PermanentFailure, match="redirects more than 10 times"):
        client.resolve_file(f"http://{storage.host}/hop/0", Credentials())


def test_blob_redirect_loop_between_registry_and_storage(
    fake: StubRegistry, storage: StubServer, client: HttpRegistryClient
):
    _, blobs = fake.add_image("v1", [b"layer"])
    fake.blob_answer = lambda request, digest: StubResponse.redirect(f"http://{storage.host}/{digest}")
    storage.handler = lambda request: StubResponse.redirect(f"http://{fake.host}/v2/app/blobs{request.path}")

    with pytest.raises(PermanentFailure, match=r"the blob sha256:\w+ of .* redirects more than 10 times"):
        client.resolve_image(fake.image("v1"), Credentials())
    # 11 hops per blob at most, each blob given up on at once (a loop is not worth a retry).
    assert len(storage.requests) <= len(blobs) * 6


def test_storage_refusal_is_permanent(fake: StubRegistry, storage: StubServer, client: HttpRegistryClient):
    fake.add_image("v1", [b"layer"])
    fake.blob_answer = lambda request, digest: StubResponse.redirect(f"http://{storage.host}/{digest}")
    storage.handler = lambda request: StubResponse(
        403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    )

    with pytest.raises(PermanentFailure, match=rf"storage {storage.host} answered HTTP 403 .*AccessDenied"):
        client.resolve_image(fake.image("v1"), Credentials())


def test_file_redirect_to_another_host_drops_headers(
    server: StubServer, storage: StubServer, client: HttpRegistryClient
):
    server.handler = lambda request: StubResponse.redirect(
        f"http://{storage.host}/file.bin?Expires=1700000000&Signature=abc&Key-Pair-Id=K&v=2"
    )
    headers = Credentials({"Authorization": f"Bearer {CANARY}", "X-Custom": "1"})

    blob = client.resolve_file(f"http://{server.host}/download/file.bin", headers)

    assert blob.url.startswith(f"http://{storage.host}/file.bin?")
    assert blob.digest is None
    assert not blob.headers
    assert blob.filter == ("Expires", "Signature", "Key-Pair-Id")
    assert server.requests[0].header("Authorization") == f"Bearer {CANARY}"
    assert server.requests[0].header("X-Custom") == "1"
    assert storage.requests[0].header("Authorization") is None
    assert storage.requests[0].header("X-Custom") is None


def test_file_on_its_own_host_keeps_headers(server: StubServer, client: HttpRegistryClient):
    server.handler = lambda request: StubResponse(200, b"content")

    blob = client.resolve_file(f"http://{server.host}/file.bin", Credentials({"X-Custom": "1"}))

    assert blob.url == f"http://{server.host}/file.bin"
    assert blob.headers.reveal() == {"X-Custom": "1"}


def test_missing_file_is_permanent(server: StubServer, client: HttpRegistryClient):
    server.handler = lambda request: StubResponse(404)

    with pytest.raises(PermanentFailure, match=rf"file http://{server.host}/file.bin not found on server"):
        client.resolve_file(f"http://{server.host}/file.bin?token={CANARY}", Credentials())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://s3.amazonaws.com/b/k?" + AMZ_QUERY + "&x-amz-security-token=t", 7),
        ("https://d111.cloudfront.net/k?Expires=1&Signature=s&Key-Pair-Id=k&Policy=p&v=1", 4),
        ("https://storage.googleapis.com/b/k?X-Goog-Algorithm=a&X-Goog-Signature=s&alt=media", 2),
        ("https://storage.googleapis.com/b/k?GoogleAccessId=a&Expires=1&Signature=s", 3),
        ("https://b.oss-cn-hangzhou.aliyuncs.com/k?OSSAccessKeyId=a&Expires=1&Signature=s", 3),
        (
            "https://pkg-containers.githubusercontent.com/ghcr1/blobs/sha256:1?se=1&sig=s&sp=r&spr=https&sr=b&sv=2",
            6,
        ),
        ("https://production.cloudflare.docker.com/registry-v2/blobs/data?verify=1700000000-abc", 1),
        ("https://example.com/file?sp=1&se=2&version=3", 0),
    ],
)
def test_signature_params(url: str, expected: int):
    found = signature_params(url)
    assert len(found) == expected
    assert all(name in url for name in found)


def test_threads_share_one_session_pool(fake: StubRegistry):
    """The default pool of workers over the default adapter must not warn about a full connection pool,
    and really runs that many requests at once: the first DEFAULT_MAX_WORKERS blob requests wait at a
    barrier that only opens once all of them are in flight (no timing involved)."""
    workers = registry_module.DEFAULT_MAX_WORKERS
    assert workers >= 16
    fake.add_image("v1", [f"layer {n}".encode() for n in range(2 * workers)])
    # Generous: it only bounds a broken run, the barrier opens as soon as the last request arrives.
    barrier = threading.Barrier(workers, timeout=60)
    arrivals = [0]
    lock = threading.Lock()

    def gathered(request: StubRequest, digest: str) -> StubResponse:
        with lock:
            arrivals[0] += 1
            first_wave = arrivals[0] <= workers
        if first_wave:
            barrier.wait()  # BrokenBarrierError (an HTTP 500 here) if fewer were ever in flight
        return StubResponse(200, b"x")

    fake.blob_answer = gathered
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("urllib3.connectionpool").addHandler(handler)
    try:
        client = HttpRegistryClient(SETTINGS)
        resolved = client.resolve_image(fake.image("v1"), Credentials()).blobs
    finally:
        logging.getLogger("urllib3.connectionpool").removeHandler(handler)
    assert len(resolved) == 2 * workers + 1
    assert not barrier.broken
    assert arrivals[0] == 2 * workers + 1
    assert fake.server.connections <= workers + 1
    assert not [w for w in warnings if "pool is full" in w]
    # The pool's threads are gone once the call returns.
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("registry")]


def test_each_blob_is_handed_over_as_soon_as_it_resolves(fake: StubRegistry):
    """``on_blob`` gets each blob (once, duplicates in the manifest included) while the slower ones
    are still resolving, and the result lists the same blobs in manifest order."""
    _, (_, _, slow_digest, _) = fake.add_image("v1", [b"fast", b"slow", b"fast"])
    release = threading.Event()
    handed: list[Blob] = []

    def answer(request: StubRequest, digest: str) -> StubResponse:
        if digest == slow_digest:
            assert release.wait(5), "the slow blob was never released"
        return StubResponse(200, b"x")

    def on_blob(blob: Blob) -> None:
        handed.append(blob)
        if len(handed) == 2:  # the config and the fast layer: the slow one may answer now
            release.set()

    fake.blob_answer = answer
    resolution = HttpRegistryClient(SETTINGS).resolve_image(
        fake.image("v1"), Credentials(), options=ResolveOptions(on_blob=on_blob)
    )

    assert slow_digest not in {blob.digest for blob in handed[:2]}
    assert sorted(blob.digest for blob in handed) == sorted(blob.digest for blob in resolution.blobs)
    assert len(resolution.blobs) == 3  # config, fast, slow: the repeated layer once
    assert handed[-1].digest == slow_digest


def test_a_resolution_stops_when_its_time_budget_runs_out(fake: StubRegistry):
    """A registry that stops answering cannot keep a step past what its invocation has left: no
    request outlasts the budget, none starts after it, and the failure is worth a retry."""
    fake.add_image("v1", [b"layer"])
    fake.blob_answer = lambda request, digest: StubResponse(200, b"x", delay=30)
    client = HttpRegistryClient(SETTINGS, attempts=4, backoff_seconds=0.01)

    with pytest.raises(TransientFailure, match="the step's time ran out before it was done") as caught:
        client.resolve_image(fake.image("v1"), Credentials(), options=ResolveOptions(time_budget_seconds=0.5))

    # One request per blob (config and layer), cut off by the budget: no retry started after it
    # (not 4 attempts of the 10 s registry timeout).
    paths = [request.path for request in fake.requests_to("blobs")]
    assert len(paths) == len(set(paths)) == 2
    assert "gave up after 4 attempts" not in str(caught.value)


def test_a_file_resolution_keeps_to_its_time_budget_too(fake: StubRegistry):
    fake.add_image("v1", [b"layer"])
    _, (_, layer) = fake.add_image("v2", [b"other"])
    fake.blob_answer = lambda request, digest: StubResponse(200, b"x", delay=30)
    client = HttpRegistryClient(SETTINGS, attempts=4, backoff_seconds=0.01)
    url = fake.image("v2").blob_url(layer, insecure=True)

    with pytest.raises(TransientFailure, match="time ran out"):
        client.resolve_file(url, Credentials(), ResolveOptions(time_budget_seconds=0.3))


# -- hostile answers: each is a failure with a message, transient or permanent as it deserves ------

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_manifest_nested_too_deep_is_a_permanent_failure(fake: StubRegistry, client: HttpRegistryClient):
    fake.manifests["deep"] = (OCI_MANIFEST, DEEP)
    with pytest.raises(PermanentFailure, match="is not valid JSON"):
        client.resolve_image(fake.image("deep"), Credentials())


def test_a_503_whose_body_nests_too_deep_is_still_a_transient_failure(
    fake: StubRegistry, client: HttpRegistryClient
):
    fake.script = [StubResponse(503, DEEP, {"Content-Type": "application/json", "Retry-After": "7"})] * 4
    with pytest.raises(TransientFailure, match="answered HTTP 503") as caught:
        client.resolve_image(fake.image("v1"), Credentials())
    assert caught.value.retry_after == 7  # the step's retry keeps to it too


def test_a_token_answer_nested_too_deep_or_not_utf8_is_a_permanent_failure(
    fake: StubRegistry, client: HttpRegistryClient
):
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "good-token")
    for body in (DEEP, b'{"token": "\xff\xfe"}', b'{"token": {"nested": ["object"]}}'):
        fake.token_answer = lambda request, body=body: StubResponse(
            200, body, {"Content-Type": "application/json"}
        )
        with pytest.raises(PermanentFailure, match="answered without a usable token"):
            client.resolve_image(fake.image("v1"), Credentials())


def test_a_manifest_of_invalid_utf8_or_wrong_types_is_a_permanent_failure(
    fake: StubRegistry, client: HttpRegistryClient
):
    fake.manifests["bytes"] = (OCI_MANIFEST, b'{"schemaVersion": 2, "layers": ["\xff\xfe"]}')
    fake.manifests["dict"] = (OCI_MANIFEST, json.dumps({"config": {}, "layers": {"a": 1}}).encode())
    fake.manifests["ints"] = (OCI_MANIFEST, json.dumps({"config": {"digest": 5}, "layers": [1, 2]}).encode())
    fake.manifests["index"] = (OCI_INDEX, json.dumps({"manifests": [[], "x"]}).encode())
    for reference, reason in (
        ("bytes", "is not valid JSON"),
        ("dict", "without 'config' and 'layers'"),
        ("ints", "without a valid 'digest'"),
        ("index", "has an index entry that is not an object"),
    ):
        with pytest.raises(PermanentFailure, match=reason):
            client.resolve_image(fake.image(reference), Credentials())
