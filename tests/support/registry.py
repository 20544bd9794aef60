"""Registries for tests: the real Distribution registry, its token server, OCI layouts and the
scripted stub server (from :mod:`local.registry`, :mod:`local.oci_layout` and :mod:`testing`,
re-exported here for the tests that import them from this module), and moto's S3 for the registry's blobs.

- :class:`MotoS3Server` is moto's S3 in a thread, for a :class:`RegistryServer` keeping its blobs
  in S3 (blob GETs then redirect to presigned URLs on another origin).
- :class:`StubServer` is a threaded stdlib HTTP server whose answers a test scripts, for the
  behaviours a real registry will not show on demand (throttling, 5xx, redirects, slowness).
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, Self

from local.oci_layout import (
    IN_TOTO,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    LayerSpec,
    OciImage,
    OciIndex,
    digest_of,
    make_layer_tar,
    make_oci_index_layout,
    make_oci_layout,
)
from local.registry import (
    HTPASSWD_BINARY,
    REGISTRY_BINARY,
    SKOPEO_BINARY,
    RegistryServer,
    S3Storage,
    free_port,
    missing_tools,
)
from preheat.settings import Settings
from testing.stub_server import Handler, StubRequest, StubResponse, StubServer
from testing.token_server import TokenRequest, TokenServer

__all__ = [
    "HTPASSWD_BINARY",
    "IN_TOTO",
    "LOOPBACK",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "REGISTRY_BINARY",
    "SKOPEO_BINARY",
    "Handler",
    "LayerSpec",
    "MotoS3Server",
    "OciImage",
    "OciIndex",
    "RegistryServer",
    "S3Storage",
    "StubRequest",
    "StubResponse",
    "StubServer",
    "TokenRequest",
    "TokenServer",
    "digest_of",
    "free_port",
    "loopback_settings",
    "make_layer_tar",
    "make_oci_index_layout",
    "make_oci_layout",
    "missing_tools",
]


# The addresses the tests' registries and stub servers listen on.
LOOPBACK = ("127.0.0.0/8", "::1/128")


def loopback_settings(**overrides: Any) -> Settings:
    """Settings for a client of the tests' registries: they listen on loopback and speak plain HTTP,
    which the outbound policy refuses unless allowed."""
    return Settings(insecure_registries=frozenset({"127.0.0.1"}), allowed_networks=LOOPBACK, **overrides)


# -- moto's S3, for a registry that keeps its blobs there ----------------------------------------


class MotoS3Server:
    """moto's S3 in a thread on 127.0.0.1 (moto does not check signatures: it shows where a URL
    points, not whether the signature would hold)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self, name: str | None = None) -> S3Storage:
        """Create a new bucket (moto accepts an unsigned PUT), by default of a unique name, and
        describe it for a registry. moto's state is one per process, shared by every server and test
        module: a bucket that already exists (another test's) is refused, never reused."""
        name = name or f"registry-{secrets.token_hex(6)}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"{self.endpoint}/{name}", method="HEAD"), timeout=10
            ):
                raise RuntimeError(f"the S3 bucket {name!r} already exists in this process's moto")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return S3Storage(self.endpoint, name)

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.stop()
