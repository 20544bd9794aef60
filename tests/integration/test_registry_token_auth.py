"""HttpRegistryClient against the real Distribution registry behind token auth.

The registry is configured with ``auth: token: {realm, service, issuer, rootcertbundle}`` and trusts
a :class:`TokenServer` of the tests, which mints ES256 JWTs (certificate in ``x5c``) as Docker Hub
does: anonymous pulls of ``public/...``, a user's Basic credentials exchanged for a token anywhere.
The registry itself checks every token, so a test passes only if the client really presented one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator

import pytest
import requests

from preheat.adapters import registry as registry_module
from preheat.adapters.registry import HttpRegistryClient
from preheat.errors import PermanentFailure
from preheat.models import Blob, Credentials, ImageReference
from tests.support.fixtures import require_tools
from tests.support.registry import (
    REGISTRY_BINARY,
    SKOPEO_BINARY,
    MotoS3Server,
    OciImage,
    RegistryServer,
    TokenRequest,
    TokenServer,
    loopback_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("registry")]

SETTINGS = loopback_settings(registry_timeout_seconds=5.0)
USER = "preheat"
LIFETIME = 300


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with TokenServer({USER: secrets.token_urlsafe(12)}, public=["public/"], lifetime=LIFETIME) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(
    token_server: TokenServer, oci_image: OciImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    """The registry behind ``token_server``, holding ``public/app:1.0`` and ``private/app:1.0``."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    with RegistryServer(tmp_path_factory.mktemp("token-registry"), token_auth=token_server) as server:
        # skopeo pushes through the token server too, with the user's credentials.
        server.push(oci_image, "public/app:1.0")
        server.push(oci_image, "private/app:1.0")
        yield server


@pytest.fixture
def client() -> HttpRegistryClient:
    return HttpRegistryClient(SETTINGS)


def requests_since(token_server: TokenServer, before: int) -> list[TokenRequest]:
    return token_server.requests[before:]


def assert_downloadable(blob: Blob) -> None:
    """The registry serves the blob to the headers the supernode would send (its token included)."""
    response = requests.get(blob.url, headers=blob.headers.reveal(), timeout=5)
    assert response.status_code == 200
    assert blob.digest == f"sha256:{hashlib.sha256(response.content).hexdigest()}"


def test_registry_refuses_requests_without_a_token(token_registry: RegistryServer, token_server: TokenServer):
    response = requests.get(f"{token_registry.url}/v2/public/app/manifests/1.0", timeout=5)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{token_server.realm}",service="{token_server.service}",'
        'scope="repository:public/app:pull"'
    )


def test_anonymous_pull_of_a_public_repository(
    token_registry: RegistryServer, token_server: TokenServer, oci_image: OciImage, client: HttpRegistryClient
):
    before = len(token_server.requests)

    blobs = client.resolve_image(
        ImageReference.parse(token_registry.image("public/app:1.0")), Credentials()
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    assert requests_since(token_server, before) == [
        TokenRequest(
            None,
            token_server.service,
            ("repository:public/app:pull",),
            200,
            (("public/app", ("pull",)),),
        )
    ]
    assert all(blob.headers.reveal()["Authorization"].startswith("Bearer ey") for blob in blobs)
    assert_downloadable(blobs[-1])


def test_basic_credentials_are_exchanged_for_a_token_on_a_private_repository(
    token_registry: RegistryServer, token_server: TokenServer, oci_image: OciImage, client: HttpRegistryClient
):
    before = len(token_server.requests)
    basic = token_registry.basic_auth()

    blobs = client.resolve_image(
        ImageReference.parse(token_registry.image("private/app:1.0")), Credentials({"Authorization": basic})
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    (token_request,) = requests_since(token_server, before)
    assert token_request.user == USER
    assert token_request.granted == (("private/app", ("pull",)),)
    # The supernode gets the token, not the caller's password.
    assert all(blob.headers.reveal()["Authorization"].startswith("Bearer ") for blob in blobs)
    assert_downloadable(blobs[0])


def test_anonymous_pull_of_a_private_repository_is_refused(
    token_registry: RegistryServer, token_server: TokenServer, client: HttpRegistryClient
):
    before = len(token_server.requests)

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(ImageReference.parse(token_registry.image("private/app:1.0")), Credentials())

    assert str(caught.value).startswith(
        f"registry {token_registry.host} requires credentials for repository private/app and the "
        "request's 'header' has no Authorization (HTTP 401"
    )
    # The token server granted nothing; the client did not ask again for the same refusal.
    assert [request.granted for request in requests_since(token_server, before)] == [()]


def test_wrong_password_is_refused_without_quoting_it(
    token_registry: RegistryServer, token_server: TokenServer, client: HttpRegistryClient
):
    wrong = "wrong-Pa55word-canary"

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(
            ImageReference.parse(token_registry.image("private/app:1.0")),
            Credentials({"Authorization": token_registry.basic_auth(USER, wrong)}),
        )

    assert str(caught.value) == (
        f"registry {token_registry.host} refused the credentials for repository private/app "
        "(HTTP 401: UNAUTHORIZED: invalid username or password)"
    )
    assert wrong not in repr(caught.value)
    assert token_server.requests[-1].status == 401


@pytest.mark.parametrize("answer", ["token", "access_token", "both"])
def test_token_or_access_token_answers(
    token_registry: RegistryServer,
    token_server: TokenServer,
    oci_image: OciImage,
    client: HttpRegistryClient,
    answer: str,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(token_server, "answer", answer)
    before = len(token_server.requests)

    blobs = client.resolve_image(
        ImageReference.parse(token_registry.image("private/app:1.0")),
        Credentials({"Authorization": token_registry.basic_auth()}),
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    assert len(requests_since(token_server, before)) == 1
    assert_downloadable(blobs[1])


def test_token_is_reused_until_it_expires(
    token_registry: RegistryServer,
    token_server: TokenServer,
    client: HttpRegistryClient,
    monkeypatch: pytest.MonkeyPatch,
):
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])
    image = ImageReference.parse(token_registry.image("private/app:1.0"))
    headers = Credentials({"Authorization": token_registry.basic_auth()})
    before = len(token_server.requests)

    first = client.resolve_image(image, headers).blobs
    second = client.resolve_image(image, headers).blobs

    assert len(requests_since(token_server, before)) == 1
    assert first[0].headers.reveal() == second[0].headers.reveal()

    now[0] += LIFETIME + 1  # the registry would still take it (its clock did not move); ours expired
    third = client.resolve_image(image, headers).blobs

    assert len(requests_since(token_server, before)) == 2
    assert_downloadable(third[-1])


def test_a_ready_bearer_token_is_used_as_given(
    token_registry: RegistryServer, token_server: TokenServer, oci_image: OciImage, client: HttpRegistryClient
):
    """Harbor hands the preheat a token it minted itself: no exchange, the registry takes it."""
    ready = f"Bearer {token_server.mint(USER, [('private/app', ['pull'])])}"
    before = len(token_server.requests)

    blobs = client.resolve_image(
        ImageReference.parse(f"http://{token_registry.host}/v2/private/app/manifests/1.0"),
        Credentials({"Authorization": ready}),
    ).blobs

    assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
    assert requests_since(token_server, before) == []
    assert all(blob.headers.reveal() == {"Authorization": ready} for blob in blobs)


def test_the_registry_checks_the_tokens_signature(
    token_registry: RegistryServer, token_server: TokenServer, client: HttpRegistryClient
):
    """What makes the tests above mean something: a token signed by a key the registry does not
    trust grants nothing, whatever it claims."""
    impostor = TokenServer(issuer=token_server.issuer, service=token_server.service)  # another key
    forged = f"Bearer {impostor.mint(USER, [('private/app', ['pull'])])}"

    with pytest.raises(PermanentFailure, match="refused the credentials for repository private/app"):
        client.resolve_image(
            ImageReference.parse(token_registry.image("private/app:1.0")),
            Credentials({"Authorization": forged}),
        )


def test_token_auth_with_blobs_redirected_to_storage_as_on_docker_hub(
    token_server: TokenServer, oci_image: OciImage, tmp_path_factory: pytest.TempPathFactory
):
    """Docker Hub's real set-up: a token server in front, and blob GETs answered 307 to presigned
    storage URLs on another origin (S3, on moto here). The client resolves with a token, the blobs it
    hands over carry the token for the registry, and the registry's redirect is followed to storage
    without it: the blob's bytes arrive, checked against its digest."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    with (
        MotoS3Server() as s3,
        RegistryServer(
            tmp_path_factory.mktemp("token-s3-registry"), token_auth=token_server, s3=s3.bucket()
        ) as registry,
    ):
        registry.push(oci_image, "private/hub:1.0")
        before = len(token_server.requests)
        basic = registry.basic_auth()

        blobs = (
            HttpRegistryClient(SETTINGS)
            .resolve_image(
                ImageReference.parse(registry.image("private/hub:1.0")), Credentials({"Authorization": basic})
            )
            .blobs
        )

        assert [blob.digest for blob in blobs] == list(oci_image.blob_digests)
        assert [request.granted for request in requests_since(token_server, before)] == [
            (("private/hub", ("pull",)),)
        ]
        for blob in blobs:
            assert blob.url.startswith(f"{registry.url}/v2/private/hub/blobs/")
            authorization = blob.headers.reveal()["Authorization"]
            assert authorization.startswith("Bearer ")
            # The registry redirects the token's holder to storage on another origin...
            hop = requests.get(blob.url, headers=blob.headers.reveal(), allow_redirects=False, timeout=5)
            assert hop.status_code == 307, hop.text
            location = hop.headers["Location"]
            assert location.startswith(s3.endpoint)
            assert "X-Amz-Signature=" in location
            # ...which serves the blob to a request without the registry's token, as peers send it.
            stored = requests.get(location, timeout=5)
            assert stored.status_code == 200
            assert "Authorization" not in stored.request.headers
            assert blob.digest == f"sha256:{hashlib.sha256(stored.content).hexdigest()}"
            # And without the token the registry redirects no one.
            assert requests.get(blob.url, allow_redirects=False, timeout=5).status_code == 401
