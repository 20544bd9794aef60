"""HttpRegistryClient against the real Distribution registry, with images pushed by skopeo."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from preheat.adapters.registry import HttpRegistryClient
from preheat.adapters.registry_manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
)
from preheat.errors import PermanentFailure
from preheat.models import Blob, Credentials, ImageReference, Platform
from tests.support.registry import (
    OciImage,
    OciIndex,
    RegistryServer,
    loopback_settings,
    make_oci_index_layout,
    make_oci_layout,
)

# One worker owns the session's registries instead of every xdist worker starting its own.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("registry")]

SETTINGS = loopback_settings(registry_timeout_seconds=5.0)

# How a caller may name the same image: by tag, by digest, and as a manifest URL of either.
URL_FORMS: dict[str, Callable[[str, str, str, str], str]] = {
    "tag": lambda host, name, tag, digest: f"{host}/{name}:{tag}",
    "digest": lambda host, name, tag, digest: f"{host}/{name}@{digest}",
    "tag-and-digest": lambda host, name, tag, digest: f"{host}/{name}:{tag}@{digest}",
    "manifest-url-tag": lambda host, name, tag, digest: f"http://{host}/v2/{name}/manifests/{tag}",
    "manifest-url-digest": lambda host, name, tag, digest: f"http://{host}/v2/{name}/manifests/{digest}",
}


@pytest.fixture
def client() -> HttpRegistryClient:
    return HttpRegistryClient(SETTINGS)


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, oci_image: OciImage) -> dict[str, str]:
    """The test image pushed once as OCI and once as Docker schema2: format -> manifest digest."""
    return {
        "oci": registry.push(oci_image, "formats/oci:1.0", fmt="oci"),
        "v2s2": registry.push(oci_image, "formats/v2s2:1.0", fmt="v2s2"),
    }


def assert_downloadable(blob: Blob) -> None:
    """The resolved URL serves the blob itself, with the headers the supernode would send."""
    response = requests.get(blob.url, headers=blob.headers.reveal(), timeout=5)
    assert response.status_code == 200
    assert blob.digest == f"sha256:{hashlib.sha256(response.content).hexdigest()}"
    assert blob.size == len(response.content)


@pytest.mark.parametrize("form", URL_FORMS)
@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_pushed_image_resolves_to_its_config_and_layers(
    registry: RegistryServer,
    oci_image: OciImage,
    pushed: dict[str, str],
    client: HttpRegistryClient,
    fmt: str,
    form: str,
):
    url = URL_FORMS[form](registry.host, f"formats/{fmt}", "1.0", pushed[fmt])

    blobs = client.resolve_image(ImageReference.parse(url), Credentials()).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    for blob in blobs:
        assert blob.url == f"{registry.url}/v2/formats/{fmt}/blobs/{blob.digest}"
        assert blob.filter == ()
        assert not blob.headers
    docker = fmt == "v2s2"
    assert blobs[0].media_type == (
        "application/vnd.docker.container.image.v1+json"
        if docker
        else "application/vnd.oci.image.config.v1+json"
    )
    assert {blob.media_type for blob in blobs[1:]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if docker
        else "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    assert_downloadable(blobs[1])


def test_oci_push_keeps_the_layout_digest(pushed: dict[str, str], oci_image: OciImage):
    assert pushed["oci"] == oci_image.manifest_digest
    assert pushed["v2s2"] != oci_image.manifest_digest


@pytest.fixture(scope="module")
def multi(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> OciIndex:
    """``multi/app:1.0``: an OCI index of linux/amd64 and linux/arm64/v8 images (sharing a layer) and
    a BuildKit attestation manifest, pushed with every image it lists."""
    index = make_oci_index_layout(
        tmp_path_factory.mktemp("multi") / "index",
        {"linux/amd64": [b"shared\n", b"amd64\n"], "linux/arm64/v8": [b"shared\n", b"arm64\n"]},
        attestation=True,
    )
    assert registry.push(index, "multi/app:1.0") == index.index_digest
    return index


def image_of(index: OciIndex, platform: str) -> OciImage:
    return next(image for image in index.images if image.platform == platform)


def test_multi_platform_index_resolves_every_platform_but_not_attestations(
    registry: RegistryServer, multi: OciIndex, client: HttpRegistryClient
):
    resolution = client.resolve_image(ImageReference.parse(registry.image("multi/app:1.0")), Credentials())

    blobs = resolution.blobs
    assert sorted(blob.digest or "" for blob in blobs) == sorted(multi.blob_digests)
    assert len(blobs) == 5  # two configs, the shared layer once, one layer per platform
    assert not set(multi.attestation_blob_digests) & {blob.digest for blob in blobs}
    assert resolution.platforms == ("linux/amd64", "linux/arm64/v8")
    assert resolution.skipped_attestations == 1
    assert_downloadable(blobs[-1])


@pytest.mark.parametrize("requested", ["linux/arm64", "linux/arm64/v8"])
def test_requested_platform_narrows_the_index(
    registry: RegistryServer, multi: OciIndex, client: HttpRegistryClient, requested: str
):
    url = f"{registry.host}/multi/app@{multi.index_digest}"

    resolution = client.resolve_image(ImageReference.parse(url), Credentials(), [Platform.parse(requested)])

    assert [blob.digest for blob in resolution.blobs] == list(image_of(multi, "linux/arm64/v8").blob_digests)
    assert resolution.platforms == ("linux/arm64/v8",)
    assert resolution.skipped_attestations == 1


def test_platform_missing_from_the_index_fails_naming_those_it_has(
    registry: RegistryServer, multi: OciIndex, client: HttpRegistryClient
):
    image = ImageReference.parse(registry.image("multi/app:1.0"))

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(image, Credentials(), [Platform.parse("linux/s390x")])

    assert str(caught.value) == (
        f"platform linux/s390x is not in the index of {registry.host}/multi/app:1.0; "
        "it has linux/amd64, linux/arm64/v8"
    )


def test_docker_manifest_list_pushed_by_skopeo(
    registry: RegistryServer, tmp_path: Path, client: HttpRegistryClient
):
    # skopeo converts an OCI index to a Docker manifest list with --format v2s2 --all; it cannot
    # convert an attestation (an in-toto layer has no Docker type), and BuildKit never puts one in a
    # Docker list anyway.
    index = make_oci_index_layout(
        tmp_path / "index", {"linux/amd64": [b"amd64 list\n"], "linux/arm64": [b"arm64 list\n"]}
    )
    digest = registry.push(index, "list/app:1.0", fmt="v2s2")
    served = requests.get(
        f"{registry.url}/v2/list/app/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}, timeout=5
    )
    assert served.headers["Content-Type"] == DOCKER_MANIFEST_LIST
    assert {entry["mediaType"] for entry in served.json()["manifests"]} == {DOCKER_MANIFEST}
    image = ImageReference.parse(registry.image("list/app:1.0"))

    every = client.resolve_image(image, Credentials())
    # An arm64 entry without a variant is what linux/arm64/v8 asks for (v8 is arm64's default).
    arm64 = client.resolve_image(image, Credentials(), [Platform.parse("linux/arm64/v8")])

    # Converted manifests get new digests; the config and the gzip layers keep theirs.
    assert sorted(blob.digest or "" for blob in every.blobs) == sorted(index.blob_digests)
    assert every.platforms == ("linux/amd64", "linux/arm64")
    assert every.skipped_attestations == 0
    assert [blob.digest for blob in arm64.blobs] == list(image_of(index, "linux/arm64").blob_digests)
    assert arm64.platforms == ("linux/arm64",)
    assert {blob.media_type for blob in arm64.blobs} == {
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }


def test_hundred_layer_image(registry: RegistryServer, tmp_path: Path, client: HttpRegistryClient):
    layers = [f"layer {number}\n".encode() for number in range(100)]
    image = make_oci_layout(tmp_path / "deep", layers)
    digest = registry.push(image, "deep/app:1.0")

    for reference in ("deep/app:1.0", f"deep/app@{digest}"):
        blobs = client.resolve_image(ImageReference.parse(registry.image(reference)), Credentials()).blobs
        assert [blob.digest for blob in blobs] == list(image.blob_digests)
        assert len(blobs) == 101
    assert_downloadable(blobs[100])


def test_schema1_image_pushed_as_such(
    registry: RegistryServer, oci_image: OciImage, client: HttpRegistryClient
):
    digest = registry.push(oci_image, "formats/v2s1:1.0", fmt="v2s1")
    served = requests.get(
        f"{registry.url}/v2/formats/v2s1/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}, timeout=5
    )
    assert served.headers["Content-Type"] == DOCKER_SCHEMA1_SIGNED
    assert "signatures" in served.json()

    for reference in ("formats/v2s1:1.0", f"formats/v2s1@{digest}"):
        resolution = client.resolve_image(ImageReference.parse(registry.image(reference)), Credentials())
        # Schema1 has no config blob; its fsLayers list the layers top first.
        assert sorted(blob.digest or "" for blob in resolution.blobs) == sorted(oci_image.layer_digests)
        assert all(blob.size is None and blob.media_type is None for blob in resolution.blobs)
        assert resolution.platforms == ()
    for blob in resolution.blobs:
        response = requests.get(blob.url, timeout=5)
        assert blob.digest == f"sha256:{hashlib.sha256(response.content).hexdigest()}"


def test_missing_tag_is_a_clear_permanent_failure(
    registry: RegistryServer, pushed: dict[str, str], client: HttpRegistryClient
):
    image = ImageReference.parse(registry.image("formats/oci:no-such-tag"))

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(image, Credentials())

    assert str(caught.value) == (
        f"manifest for {registry.host}/formats/oci:no-such-tag not found on registry {registry.host} "
        "(MANIFEST_UNKNOWN: manifest unknown)"
    )


def test_missing_repository_is_a_clear_permanent_failure(
    registry: RegistryServer, client: HttpRegistryClient
):
    # Distribution 2.8 answers an unknown repository like an unknown tag.
    with pytest.raises(
        PermanentFailure, match=r"no/such-repo:1 not found on registry .* \(MANIFEST_UNKNOWN: "
    ):
        client.resolve_image(ImageReference.parse(registry.image("no/such-repo:1")), Credentials())


def test_basic_auth_registry_accepts_the_callers_credentials(
    auth_registry: RegistryServer, oci_image: OciImage, client: HttpRegistryClient
):
    auth_registry.push(oci_image, "private/app:1.0")
    authorization = auth_registry.basic_auth()

    blobs = client.resolve_image(
        ImageReference.parse(auth_registry.image("private/app:1.0")),
        Credentials({"Authorization": authorization}),
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    assert all(blob.headers.reveal() == {"Authorization": authorization} for blob in blobs)
    assert_downloadable(blobs[-1])


def test_basic_auth_registry_refuses_wrong_or_missing_credentials(
    auth_registry: RegistryServer, oci_image: OciImage, client: HttpRegistryClient
):
    auth_registry.push(oci_image, "private/app:1.0")
    image = ImageReference.parse(auth_registry.image("private/app:1.0"))
    wrong_password = "wrong-Pa55word-canary"
    user, _ = auth_registry.credentials or ("", "")

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(
            image, Credentials({"Authorization": auth_registry.basic_auth(user, wrong_password)})
        )
    assert str(caught.value).startswith(
        f"registry {auth_registry.host} refused the credentials for repository private/app (HTTP 401"
    )
    assert wrong_password not in str(caught.value)

    with pytest.raises(PermanentFailure, match="requires credentials for repository private/app"):
        client.resolve_image(image, Credentials())


def test_registry_on_s3_redirects_blobs_to_presigned_urls_without_credentials(
    s3_registry: RegistryServer, oci_image: OciImage, client: HttpRegistryClient
):
    s3_registry.push(oci_image, "s3/app:1.0")
    assert s3_registry.s3 is not None
    # The spec's literal mode: the storage URL the registry redirects to (see test_node_view*.py
    # for the default, the registry blob URL).
    client = HttpRegistryClient(replace(SETTINGS, layer_urls="storage"))

    blobs = client.resolve_image(
        ImageReference.parse(s3_registry.image("s3/app:1.0")),
        Credentials({"Authorization": s3_registry.basic_auth()}),
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    for blob in blobs:
        storage = s3_registry.s3
        assert blob.url.startswith(f"{storage.endpoint}/{storage.bucket}/docker/registry/v2/blobs/sha256/")
        # S3 refuses a request carrying the registry's Authorization as well as a signature.
        assert not blob.headers
        assert blob.filter == (
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        )
        assert_downloadable(blob)
