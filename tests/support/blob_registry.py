"""A small registry for the reference Dragonfly 2 scheduler's tests: one image (an OCI index of a
linux/amd64 and a linux/arm64 manifest, each with a config and two layers) whose blob GETs redirect,
as registries on object storage do, to a storage server named by another host name (``localhost``
instead of ``127.0.0.1``), so a client following Go's rule drops Authorization on that hop.

``auth`` is ``none``, ``basic`` (the ``users``' Basic credentials) or ``token`` (Bearer tokens from a
:class:`testing.token_server.TokenServer` granting ``repository:<name>:pull``, Basic credentials
exchanged at its realm). Every request to either server is kept (``registry.requests``,
``storage.requests``). Use it as a context manager.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from testing.stub_server import StubRequest, StubResponse, StubServer
from testing.token_server import TokenServer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
Auth = Literal["none", "basic", "token"]


@dataclass
class Platform:
    arch: str
    config: bytes
    layers: list[bytes]
    manifest: bytes = b""

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class BlobRegistry:
    repository: str = "demo/app"
    tag: str = "v1"
    auth: Auth = "none"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret"})
    # Blobs (by digest) the storage answers with other bytes than the digest names.
    corrupt: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.platforms = [self._platform("amd64"), self._platform("arm64")]
        self.index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": digest(p.manifest),
                        "size": len(p.manifest),
                        "platform": {"os": "linux", "architecture": p.arch},
                    }
                    for p in self.platforms
                ],
            }
        ).encode()
        self.blobs = {digest(blob): blob for p in self.platforms for blob in p.blobs}
        self.tokens = TokenServer(self.users)
        self.storage = StubServer(self._storage)
        self.registry = StubServer(self._registry)

    def _platform(self, arch: str) -> Platform:
        platform = Platform(
            arch, json.dumps({"architecture": arch}).encode(), [os.urandom(2048), os.urandom(512)]
        )
        platform.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(platform.config),
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(b)}
                    for b in platform.layers
                ],
            }
        ).encode()
        return platform

    # -- what the tests read ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.registry.host

    def manifest_url(self, reference: str | None = None) -> str:
        return f"{self.registry.url}/v2/{self.repository}/manifests/{reference or self.tag}"

    def blob_url(self, blob: bytes) -> str:
        return f"{self.registry.url}/v2/{self.repository}/blobs/{digest(blob)}"

    def blob_urls(self, arch: str = "amd64") -> list[str]:
        platform = next(p for p in self.platforms if p.arch == arch)
        return [self.blob_url(blob) for blob in platform.blobs]

    def basic(self, user: str = "alice") -> str:
        return "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()

    # -- the servers -----------------------------------------------------------------------------

    def _authorized(self, request: StubRequest) -> bool:
        value = request.header("Authorization") or ""
        if self.auth == "none":
            return True
        if self.auth == "basic":
            return any(value == self.basic(user) for user in self.users)
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return False
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return any(
            grant.get("name") == self.repository and "pull" in grant.get("actions", [])
            for grant in claims.get("access", [])
        )

    def _challenge(self) -> StubResponse:
        if self.auth == "basic":
            header = 'Basic realm="blob-registry"'
        else:
            header = f'Bearer realm="{self.tokens.realm}",service="{self.tokens.service}"'
        return StubResponse.error(
            401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": header}
        )

    def _registry(self, request: StubRequest) -> StubResponse:
        if not self._authorized(request):
            return self._challenge()
        prefix = f"/v2/{self.repository}/"
        if request.path == "/v2/":
            return StubResponse.json({})
        if request.path.startswith(f"{prefix}manifests/"):
            return self._manifest(request.path.rsplit("/", 1)[1])
        if request.path.startswith(f"{prefix}blobs/"):
            blob_digest = request.path.rsplit("/", 1)[1]
            if blob_digest not in self.blobs:
                return StubResponse.error(404, "BLOB_UNKNOWN", "blob unknown")
            # Another host name for the same server: the hop a Go client drops Authorization on.
            storage = self.storage.url.replace("127.0.0.1", "localhost")
            return StubResponse.redirect(f"{storage}/storage/{blob_digest}?X-Amz-Signature=abc")
        return StubResponse.error(404, "NAME_UNKNOWN", "no such path")

    def _manifest(self, reference: str) -> StubResponse:
        if reference in (self.tag, digest(self.index)):
            return StubResponse(200, self.index, {"Content-Type": OCI_INDEX})
        for platform in self.platforms:
            if reference == digest(platform.manifest):
                return StubResponse(200, platform.manifest, {"Content-Type": OCI_MANIFEST})
        return StubResponse.error(404, "MANIFEST_UNKNOWN", "manifest unknown")

    def _storage(self, request: StubRequest) -> StubResponse:
        blob_digest = request.path.rsplit("/", 1)[1]
        blob = self.blobs.get(blob_digest)
        if blob is None:
            return StubResponse(404)
        return StubResponse(200, b"corrupted" if blob_digest in self.corrupt else blob)

    def close(self) -> None:
        self.registry.close()
        self.storage.close()
        self.tokens.stop()

    def __enter__(self) -> Self:
        self.tokens.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
