"""pytest fixtures for tests that need a real registry.

The root conftest loads them (``pytest_plugins``), never a test module. ``make test`` installs
docker-registry, skopeo and apache2-utils first (.ci/debian-packages), so a missing tool fails the
test that needs it; it skips only under the explicit opt-out ``PREHEAT_SKIP_REAL_REGISTRY=1``, and
the skip reason names it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import (
    HTPASSWD_BINARY,
    REGISTRY_BINARY,
    SKOPEO_BINARY,
    MotoS3Server,
    OciImage,
    RegistryServer,
    make_oci_layout,
    missing_tools,
)

SKIP_REAL_REGISTRY = "PREHEAT_SKIP_REAL_REGISTRY"
INSTALL = "sudo apt-get install -y docker-registry skopeo apache2-utils"


def require_tools(*names: str) -> None:
    """Fail the calling test when one of the executables is not installed, saying how to install
    it; skip it instead under the explicit opt-out PREHEAT_SKIP_REAL_REGISTRY=1."""
    if os.environ.get(SKIP_REAL_REGISTRY) == "1":
        pytest.skip(f"{SKIP_REAL_REGISTRY}=1: the tests that need a real registry are skipped")
    missing = missing_tools(*names)
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run `{INSTALL}` (or `make test`, which does), "
            f"or set {SKIP_REAL_REGISTRY}=1 to skip the tests that need them",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A running anonymous registry, shared by the session: push under names of your own. It accepts
    Docker schema1 pushes too (``push(..., fmt="v2s1")``)."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    with RegistryServer(tmp_path_factory.mktemp("registry"), schema1=True) as server:
        yield server


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A running registry behind htpasswd Basic auth; ``.credentials`` is its one (user, password)."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY, HTPASSWD_BINARY)
    users = {"preheat": secrets.token_urlsafe(12)}
    with RegistryServer(tmp_path_factory.mktemp("auth-registry"), users=users) as server:
        yield server


@pytest.fixture(scope="session")
def s3_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry keeping blobs in S3 (moto) behind htpasswd auth: blob GETs answer 307 to
    presigned URLs on another origin, as on registries backed by S3 or a CDN."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY, HTPASSWD_BINARY)
    users = {"preheat": secrets.token_urlsafe(12)}
    with MotoS3Server() as s3:
        # moto's state is one per process: a bucket of its own, never one another module filled.
        storage = s3.bucket()
        with RegistryServer(tmp_path_factory.mktemp("s3-registry"), users=users, s3=storage) as server:
            yield server


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A small two-layer OCI layout on disk (not pushed anywhere)."""
    path: Path = tmp_path_factory.mktemp("oci-image")
    return make_oci_layout(path, [b"first layer\n", b"second layer\n"], config={"config": {"Cmd": ["true"]}})
